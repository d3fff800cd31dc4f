"""The page: a header with the model pack's status, then the Compare, Rate-distortion, Blind test and Codecs tabs,
and the `/compare` API endpoint. Every handler comes from a `Studio` (app.handlers: one handler per concern, over
one workspace); nothing here loads a model."""

from __future__ import annotations

import gradio as gr

from app.blind_tab import build_blind_tab
from app.compare_tab import HEAVY, PackPicker, build_compare_tab
from app.handlers import CompareRequest, SessionState, Studio
from app.rd_tab import build_rd_tab

CSS = """
#compare-status, #blind-status, #rd-status {min-height: 1.5em}
.gradio-container {max-width: 1600px !important}
"""


def build_app(studio: Studio, max_jobs: int = 1) -> gr.Blocks:
    """The whole page over `studio`'s handlers; `max_jobs`: heavy jobs (comparisons, sweeps) running at once."""
    with gr.Blocks(title="DiffVC Studio") as demo:
        gr.Markdown(
            "# DiffVC Studio\nWhat a diffusion-based perceptual video codec does to your clip, next to "
            "x265 at the same bits: side by side, wiped, zoomed, per frame, timed, and judged blind."
        )
        notice = gr.Markdown(elem_id="pack-status")
        state = gr.State(SessionState())
        with gr.Tab("Compare", id="compare"):
            packs = PackPicker(*studio.codecs.pack_choices(), studio.codecs.pack_summary)
            clip = build_compare_tab(studio.compare, packs, state, studio.config.example_clip, max_jobs)
        with gr.Tab("Rate-distortion", id="rd"):
            build_rd_tab(studio.sweep, clip, state, max_jobs)
        with gr.Tab("Blind test", id="blind"):
            build_blind_tab(studio.blind, state)
        with gr.Tab("Codecs", id="codecs"):
            gr.Markdown("The codecs registered in this installation and whether each can run here.")
            table = gr.Dataframe(
                headers=["codec", "status", "description"], interactive=False, label="Registered codecs"
            )
            refresh = gr.Button("Refresh", size="sm")
            refresh.click(studio.codecs.rows, outputs=table, api_name="codec_rows")
        demo.load(lambda: studio.codecs.pack_status()[1], outputs=notice, api_visibility="private")
        demo.load(studio.codecs.rows, outputs=table, api_visibility="private")
        _compare_api(studio, max_jobs)
    return demo


def _compare_api(studio: Studio, max_jobs: int) -> None:
    """`/compare` for gradio_client: (video file, qp, tdir, frames) -> the results rows as JSON."""
    with gr.Group(visible=False):
        video = gr.File(label="video", file_types=["video"], type="filepath")
        qp = gr.Number(32, label="qp", precision=0)
        tdir = gr.Checkbox(True, label="tdir")
        frames = gr.Number(8, label="frames", precision=0)
        rows = gr.JSON(label="rows")
        trigger = gr.Button()

    def compare(video_path: str, qp_value: float, tdir_value: bool, frame_count: float) -> list[dict]:
        """DiffVC at `qp` (TDIR on or off) against x265 at matched bitrate on the first `frames` frames of the
        video (longer side capped at 256 pixels); one row per codec: bytes, bpp, metrics, timings, per-frame data."""
        if not video_path:
            raise gr.Error("give a video file")
        try:
            return studio.compare.api(CompareRequest.api(video_path, int(qp_value), bool(tdir_value), int(frame_count)))
        except Exception as e:
            from app.feedback import error_message

            raise gr.Error(error_message(e).replace("**", "")) from None

    trigger.click(
        compare,
        inputs=[video, qp, tdir, frames],
        outputs=rows,
        api_name="compare",
        concurrency_limit=max_jobs,
        concurrency_id=HEAVY,
    )
