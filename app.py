"""Entry point: wire the codec library into the Gradio app and serve it.

    python app.py                    # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app import build_app  # noqa: E402
from codec.registry import list_codecs  # noqa: E402


def codec_rows() -> list[list[str]]:
    rows = []
    for entry in list_codecs():
        reason = entry.unavailable_reason()
        rows.append([entry.name, "usable" if reason is None else f"unusable: {reason}", entry.description])
    return rows


def main() -> None:
    demo = build_app(codec_rows)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        show_error=False,
    )


if __name__ == "__main__":
    main()
