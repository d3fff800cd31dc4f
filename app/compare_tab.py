"""The Compare tab: choose a clip and DiffVC's settings, run against the anchors, inspect the result.

Built from callables (the handlers of `app.handlers.Studio`); this module only lays out components and turns
their values into request dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.feedback import error_message
from app.handlers import (
    DEFAULT_ANCHORS,
    DEFAULT_FRAMES,
    DEFAULT_MAX_SIDE,
    ZOOM,
    ClipRequest,
    CompareRequest,
    FrameRequest,
    SessionState,
    anchor_choices,
)
from app.views import LABEL_BAR
from codec.metrics import METRIC_TABLE, get_metric, metric_names, perceptual_metrics

HEAVY = "heavy"  # the concurrency group of the jobs that load the CPU (comparison, sweep, API)


def _joined(words) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = list(words)
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def metric_choices(names=None) -> list[tuple[str, str]]:
    """(label, name) pairs of the metric table, or of `names`, for checkbox groups and menus."""
    return [(get_metric(m).label, m) for m in (metric_names() if names is None else names)]


@dataclass
class ClipInputs:
    """The clip components, shared with the other tabs."""

    video: gr.Video
    start: gr.Number
    frames: gr.Slider
    max_side: gr.Slider

    def request(self, values: dict) -> ClipRequest:
        return ClipRequest(
            values[self.video], int(values[self.start] or 0), int(values[self.frames]), int(values[self.max_side])
        )

    @property
    def components(self) -> set:
        return {self.video, self.start, self.frames, self.max_side}


@dataclass(frozen=True)
class PackPicker:
    """The model pack dropdown: (label, name) choices, the name chosen first, and summary(name) -> markdown."""

    choices: list[tuple[str, str]]
    first: str
    summary: Callable[[str], str]


def build_compare_tab(
    compare: Callable,
    clip_preview: Callable,
    stop: Callable,
    frame_view: Callable,
    per_frame_figure: Callable,
    state: gr.State,
    example_clip: Path,
    max_jobs: int,
    packs: PackPicker,
) -> ClipInputs:
    """compare(CompareRequest, SessionState, session, progress) -> CompareView; clip_preview(path) -> (first
    frame or None, note) for uploads a browser cannot play; stop(session) -> str;
    frame_view(FrameRequest, SessionState) -> FrameView; per_frame_figure(key, metric, SessionState) -> figure."""
    key = gr.State("")  # the comparison on show
    count = gr.State(DEFAULT_FRAMES)  # its number of frames
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            video = gr.Video(
                label="Clip (upload any video file)",
                sources=["upload"],
                format=None,
                value=str(example_clip) if example_clip.is_file() else None,
                height=220,
                elem_id="clip",
            )
            preview = gr.Image(label="first frame", visible=False, interactive=False, height=220, elem_id="preview")
            preview_note = gr.Markdown(elem_id="preview-note")
            if example_clip.is_file():
                gr.Examples([[str(example_clip)]], inputs=[video], label="Example clip (Big Buck Bunny, CC-BY 3.0)")
            with gr.Row():
                start = gr.Number(0, label="start frame", precision=0, minimum=0, elem_id="start")
                frames = gr.Slider(1, 96, value=DEFAULT_FRAMES, step=1, label="frames", elem_id="frames")
            max_side = gr.Slider(
                64, 1280, value=DEFAULT_MAX_SIDE, step=16, label="size cap (longer side, pixels)", elem_id="max-side"
            )
            pack = gr.Dropdown(packs.choices, value=packs.first, label="DiffVC model pack", elem_id="pack")
            pack_note = gr.Markdown(packs.summary(packs.first), elem_id="pack-note")
            qp = gr.Slider(0, 63, value=32, step=1, label="DiffVC QP (larger = fewer bits)", elem_id="qp")
            tdir = gr.Checkbox(
                True, label="TDIR (reuse the previous frame's diffusion result for the first steps)", elem_id="tdir"
            )
            with gr.Accordion("Advanced", open=False):
                steps = gr.Slider(0, 50, value=0, step=1, label="DDIM steps (0 = the pack's default)")
                strength = gr.Slider(-1, 1, value=-1, step=0.05, label="start strength (-1 = the pack's default)")
                tdir_ratio = gr.Slider(-1, 1, value=-1, step=0.05, label="TDIR ratio K / T_s (-1 = the pack's default)")
                metrics = gr.CheckboxGroup(
                    metric_choices(),
                    value=list(metric_names()),
                    label=f"metrics ({_joined(m.label for m in METRIC_TABLE.values() if m.cost == 'deep')} cost the "
                    "most time on a CPU)",
                )
            anchors = gr.CheckboxGroup(
                list(anchor_choices()), value=list(DEFAULT_ANCHORS), label="anchors", elem_id="anchors"
            )
            match = gr.Checkbox(
                True, label="match bitrate (search each anchor's QP for DiffVC's rate)", elem_id="match"
            )
            contrast = gr.Checkbox(
                True, label="also run DiffVC with TDIR flipped (time and quality, on vs off)", elem_id="contrast"
            )
            with gr.Row():
                run = gr.Button("Run comparison", variant="primary", elem_id="run")
                halt = gr.Button("Stop", variant="stop", elem_id="stop")
            gr.Markdown(
                f"At most {max_jobs} heavy job{'s' if max_jobs > 1 else ''} run at once; others wait in the queue."
            )
        with gr.Column(scale=2):
            status = gr.Markdown("Choose a clip and press **Run comparison**.", elem_id="compare-status")
            table = gr.Dataframe(
                label="metrics per codec (rates from the bitstreams' bytes)",
                interactive=False,
                elem_id="metrics-table",
                wrap=True,
            )
            with gr.Tab("Frames"):
                with gr.Row():
                    prev_btn = gr.Button("◀ previous", size="sm", elem_id="prev")
                    frame = gr.Slider(0, DEFAULT_FRAMES - 1, value=0, step=1, label="frame", elem_id="frame")
                    next_btn = gr.Button("next ▶", size="sm", elem_id="next")
                caption = gr.Markdown()
                side = gr.Image(
                    label="original and every codec, side by side",
                    format="png",
                    interactive=False,
                    show_label=False,
                    elem_id="side-by-side",
                )
                with gr.Row():
                    left = gr.Dropdown([("original", "original")], value="original", label="wipe: left")
                    right = gr.Dropdown([("original", "original")], value="original", label="wipe: right")
                wipe = gr.ImageSlider(label="wipe (drag the handle)", format="png", interactive=False, elem_id="wipe")
                with gr.Row():
                    zoom = gr.Slider(1, 16, value=ZOOM, step=0.5, label="zoom")
                    cx = gr.Slider(0, 1, value=0.5, step=0.01, label="centre x")
                    cy = gr.Slider(0, 1, value=0.5, step=0.01, label="centre y")
                gr.Markdown("Click the heatmap to move the zoom window there.")
                zoomed = gr.Image(
                    label="zoomed crop", format="png", interactive=False, show_label=False, elem_id="zoom"
                )
                heat_codec = gr.Dropdown([("original", "original")], value="original", label="error heatmap of")
                heat = gr.Image(
                    label="error heatmap", format="png", interactive=False, show_label=False, elem_id="heatmap"
                )
            with gr.Tab("Per-frame charts"):
                metric = gr.Dropdown(metric_choices(), value=perceptual_metrics()[0], label="metric")
                chart = gr.Plot(label="per frame", elem_id="per-frame")
            with gr.Tab("Timing"):
                tdir_text = gr.Markdown()
                timing = gr.Dataframe(label="seconds for the whole clip", interactive=False)
                with gr.Row():
                    timing_plot = gr.Plot()
                    stage_plot = gr.Plot()
            with gr.Tab("Downloads"):
                files = gr.File(
                    label="bitstreams, decoded clips (mp4), results (CSV, JSON)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )

    clip = ClipInputs(video, start, frames, max_side)
    settings = {*clip.components, pack, qp, tdir, steps, strength, tdir_ratio, metrics, anchors, match, contrast, state}
    viewer = {key, frame, left, right, heat_codec, zoom, cx, cy, state}
    viewer_outputs = [side, wipe, zoomed, heat, caption, status]

    def on_run(values: dict, request: gr.Request, progress=gr.Progress()):
        session_state: SessionState = values[state]
        try:
            req = CompareRequest(
                clip.request(values),
                qp=int(values[qp]),
                tdir=bool(values[tdir]),
                steps=int(values[steps]),
                strength=float(values[strength]),
                tdir_ratio=float(values[tdir_ratio]),
                anchors=tuple(values[anchors]),
                match_bitrate=bool(values[match]),
                tdir_contrast=bool(values[contrast]),
                metrics=tuple(values[metrics]),
                pack=str(values[pack] or ""),
            )
            view = compare(req, session_state, request.session_hash, progress)
        except Exception as e:  # every failure becomes one line in the page
            return {status: error_message(e)}
        choices = view.codecs
        first_codec = choices[1][1] if len(choices) > 1 else "original"
        return {
            state: session_state,
            key: view.key,
            count: view.frames,
            status: view.status,
            table: view.table,
            timing: view.timing,
            timing_plot: view.timing_figure,
            stage_plot: view.stage_figure,
            tdir_text: view.tdir,
            files: view.files,
            chart: view.per_frame_figure,
            frame: gr.Slider(maximum=max(view.frames - 1, 1), value=0, interactive=view.frames > 1),
            left: gr.Dropdown(choices=choices, value=view.wipe[0]),
            right: gr.Dropdown(choices=choices, value=view.wipe[1]),
            cx: view.zoom_centre[0],
            cy: view.zoom_centre[1],
            heat_codec: gr.Dropdown(choices=choices[1:] or choices, value=first_codec),
        }

    def on_view(values: dict):
        if not values[key]:
            return {caption: ""}
        try:
            view = frame_view(
                FrameRequest(
                    values[key],
                    int(values[frame]),
                    values[left],
                    values[right],
                    values[heat_codec],
                    float(values[zoom]),
                    float(values[cx]),
                    float(values[cy]),
                ),
                values[state],
            )
        except Exception as e:
            return {status: error_message(e)}
        return {side: view.side_by_side, wipe: view.wipe, zoomed: view.zoom, heat: view.heatmap, caption: view.caption}

    def on_chart(values: dict):
        if not values[key]:
            return {chart: None}
        try:
            return {chart: per_frame_figure(values[key], values[metric], values[state])}
        except Exception as e:
            return {status: error_message(e)}

    def on_pick(evt: gr.SelectData, cx_value: float, cy_value: float, shown):
        """A click on the heatmap (one frame under a caption bar): centre the zoom window there."""
        if shown is None or not evt.index:
            return cx_value, cy_value
        height, width = shown.shape[0] - LABEL_BAR, shown.shape[1]
        x, y = evt.index[0], evt.index[1] - LABEL_BAR
        if not (0 <= x < width and 0 <= y < height):
            return cx_value, cy_value
        return round(x / width, 3), round(y / height, 3)

    run_outputs = [
        state,
        key,
        count,
        status,
        table,
        timing,
        timing_plot,
        stage_plot,
        tdir_text,
        files,
        chart,
        frame,
        left,
        right,
        heat_codec,
        cx,
        cy,
    ]

    def on_upload(path):
        frame, note = clip_preview(path)
        return gr.Image(value=frame, visible=frame is not None), note

    video.change(on_upload, inputs=[video], outputs=[preview, preview_note], api_visibility="private")
    pack.change(_pack_note(packs.summary), inputs=[pack], outputs=[pack_note], api_visibility="private")
    run_event = run.click(
        on_run,
        inputs=settings,
        outputs=run_outputs,
        concurrency_limit=max_jobs,
        concurrency_id=HEAVY,
        api_visibility="private",
    )
    run_event.then(on_view, inputs=viewer, outputs=viewer_outputs, api_visibility="private")
    halt.click(_stopper(stop), inputs=None, outputs=[status], cancels=[run_event], api_visibility="private")
    gr.on(
        [
            frame.release,
            frame.input,
            left.change,
            right.change,
            heat_codec.change,
            zoom.release,
            cx.release,
            cy.release,
        ],
        on_view,
        inputs=viewer,
        outputs=viewer_outputs,
        api_visibility="private",
        trigger_mode="always_last",
    )
    prev_btn.click(lambda t: max(0, int(t) - 1), inputs=frame, outputs=frame, api_visibility="private").then(
        on_view, inputs=viewer, outputs=viewer_outputs, api_visibility="private"
    )
    next_btn.click(
        lambda t, n: min(int(n) - 1, int(t) + 1), inputs=[frame, count], outputs=frame, api_visibility="private"
    ).then(on_view, inputs=viewer, outputs=viewer_outputs, api_visibility="private")
    heat.select(on_pick, inputs=[cx, cy, heat], outputs=[cx, cy], api_visibility="private").then(
        on_view, inputs=viewer, outputs=viewer_outputs, api_visibility="private"
    )
    metric.change(on_chart, inputs={key, metric, state}, outputs=[chart, status], api_visibility="private")
    return clip


def _pack_note(summary: Callable[[str], str]) -> Callable[[str], str]:
    def note(name: str) -> str:
        try:
            return summary(name)
        except Exception as e:  # an unknown name: one line, never a traceback
            return error_message(e)

    return note


def _stopper(stop: Callable):
    def on_stop(request: gr.Request) -> str:
        return stop(request.session_hash)

    return on_stop
