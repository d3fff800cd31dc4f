"""The app's page. For now: the registered codecs and whether each can run here (the comparison UI is issue [4/5])."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

CodecRow = list[str]  # [name, status, description]


def build_app(list_codec_rows: Callable[[], list[CodecRow]]) -> gr.Blocks:
    """Build the page; `list_codec_rows()` gives [name, status, description] for each registered codec."""
    with gr.Blocks(title="DiffVC Studio") as demo:
        gr.Markdown(
            "# DiffVC Studio\n"
            "Diffusion-based perceptual video compression, side by side with the codecs people trust. "
            "The comparison workspace is on its way; below are the codecs this installation can run."
        )
        table = gr.Dataframe(headers=["codec", "status", "description"], interactive=False, label="Registered codecs")
        refresh = gr.Button("Refresh")
        demo.load(list_codec_rows, outputs=table)
        refresh.click(list_codec_rows, outputs=table)
    return demo
