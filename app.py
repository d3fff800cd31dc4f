"""Entry point: wire the codec library into the Gradio app and serve it.

python app.py        # http://127.0.0.1:7860; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change host and port
DIFFVC_STUDIO_PACK=random-tiny python app.py     # a model pack by name or folder ("" = the embedded default)
DIFFVC_STUDIO_DATA=<folder>, DIFFVC_STUDIO_JOBS=<heavy jobs at once, default 1>,
DIFFVC_STUDIO_THREADS=<torch threads per heavy job, default: the cores idle when the job starts (codec.threads)>,
DIFFVC_STUDIO_LANES=<1: a job's steps in turn, 2: its metrics beside its codings; default: 2 where the second core
is only partly busy (codec.threads)>,
DIFFVC_STUDIO_MAX_UPLOAD=<largest upload, default 500mb>, DIFFVC_STUDIO_TIME_LIMIT=<seconds per heavy job,
default 900>, DIFFVC_STUDIO_MAX_PIXELS=<frames x width x height per job, default 4e7>; the reader's own limits:
DIFFVC_MAX_WIDTH / _HEIGHT (4096), DIFFVC_MAX_SOURCE_SIDE (8192), DIFFVC_MAX_FRAMES (10000),
DIFFVC_MAX_PIXELS (3e8), DIFFVC_MAX_DECODE_S (300); DIFFVC_STUDIO_PRELOAD=0 to load the model and the metrics
on first use
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app import build_app  # noqa: E402
from app.handlers import Studio, StudioConfig  # noqa: E402
from app.ui import CSS  # noqa: E402


def create(environ=os.environ):
    """(the Blocks, the launch options) for an environment."""
    config = StudioConfig.from_env(environ, Path(__file__).resolve().parent)
    import torch

    # between heavy jobs (model loading, previews, blind pairs) one core stays with the server; each heavy job
    # takes the cores idle when it starts (codec.threads: two threads stall beside another busy process)
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 2) - 1))
    studio = Studio.open(config)
    if environ.get("DIFFVC_STUDIO_PRELOAD", "1") != "0":
        studio.preload()  # the model pack and the metrics' networks, once, before requests can race to build them
    demo = build_app(studio, max_jobs=config.heavy_jobs).queue(max_size=16, default_concurrency_limit=4)
    return demo, {
        "allowed_paths": [str(config.results_dir), str(config.sessions_dir)],
        "show_error": False,
        "max_file_size": environ.get("DIFFVC_STUDIO_MAX_UPLOAD") or "500mb",
        "css": CSS,
    }


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("codec.threads").setLevel(logging.INFO)  # each heavy job's threads and lanes, in the log
    demo, options = create()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **options,
    )
