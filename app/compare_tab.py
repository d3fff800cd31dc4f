"""The Compare tab: choose a clip and DiffVC's settings, run against the anchors, inspect the result.

Built over a `CompareHandler` (app.handlers.compare); this module only lays out components and turns their values
into request dataclasses. The layout is built part by part (the clip, the settings, the results, the frame
viewer), each part a dataclass of its components, then the events are wired.
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
    ChartRequest,
    ClipRequest,
    CompareHandler,
    CompareRequest,
    CompareView,
    FrameRequest,
    FrameView,
    SessionState,
    anchor_choices,
)
from app.views import LABEL_BAR
from codec.metrics import METRIC_TABLE, get_metric, metric_names, perceptual_metrics

HEAVY = "heavy"  # the concurrency group of the jobs that load the CPU (comparison, sweep, API)
FILTER_CHOICES = [  # DiffVCOptions.filter: (label, value)
    ("as trained", "0"),
    ("auto: the encoder tries 4 strengths and keeps the best by LPIPS + DISTS (about 4x the encode time)", "auto"),
    ("off: show the latent codec's frames", "-1"),
    ("half", "-0.5"),
    ("stronger (x1.5)", "0.5"),
]


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


@dataclass
class SettingsInputs:
    """DiffVC's settings and the anchors: the rest of a `CompareRequest`, and the buttons that run and stop it."""

    pack: gr.Dropdown
    pack_note: gr.Markdown
    qp: gr.Slider
    tdir: gr.Checkbox
    steps: gr.Slider
    strength: gr.Slider
    tdir_ratio: gr.Slider
    filter: gr.Dropdown
    metrics: gr.CheckboxGroup
    anchors: gr.CheckboxGroup
    match: gr.Checkbox
    contrast: gr.Checkbox
    run: gr.Button
    halt: gr.Button

    def request(self, clip: ClipRequest, values: dict) -> CompareRequest:
        return CompareRequest(
            clip,
            qp=int(values[self.qp]),
            tdir=bool(values[self.tdir]),
            steps=int(values[self.steps]),
            strength=float(values[self.strength]),
            tdir_ratio=float(values[self.tdir_ratio]),
            anchors=tuple(values[self.anchors]),
            match_bitrate=bool(values[self.match]),
            tdir_contrast=bool(values[self.contrast]),
            metrics=tuple(values[self.metrics]),
            pack=str(values[self.pack] or ""),
            filter=str(values[self.filter]),
        )

    @property
    def components(self) -> set:
        return {
            self.pack,
            self.qp,
            self.tdir,
            self.steps,
            self.strength,
            self.tdir_ratio,
            self.filter,
            self.metrics,
            self.anchors,
            self.match,
            self.contrast,
        }


@dataclass
class ResultPanel:
    """What a comparison shows beside the viewer: status, metrics table, per-frame chart, timing, downloads."""

    status: gr.Markdown
    table: gr.Dataframe
    metric: gr.Dropdown
    chart: gr.Plot
    tdir_text: gr.Markdown
    timing: gr.Dataframe
    timing_plot: gr.Plot
    stage_plot: gr.Plot
    files: gr.File

    @property
    def outputs(self) -> list:
        return [
            self.status,
            self.table,
            self.timing,
            self.timing_plot,
            self.stage_plot,
            self.tdir_text,
            self.files,
            self.chart,
        ]

    def show(self, view: CompareView) -> dict:
        return {
            self.status: view.status,
            self.table: view.table,
            self.timing: view.timing,
            self.timing_plot: view.timing_figure,
            self.stage_plot: view.stage_figure,
            self.tdir_text: view.tdir,
            self.files: view.files,
            self.chart: view.per_frame_figure,
        }


@dataclass
class FrameViewer:
    """The Frames tab: one frame of every codec side by side, a wipe between two, a zoomed crop, an error heatmap.
    key: the comparison on show; count: its number of frames."""

    key: gr.State
    count: gr.State
    previous: gr.Button
    frame: gr.Slider
    next: gr.Button
    caption: gr.Markdown
    side: gr.Image
    left: gr.Dropdown
    right: gr.Dropdown
    wipe: gr.ImageSlider
    zoom: gr.Slider
    cx: gr.Slider
    cy: gr.Slider
    zoomed: gr.Image
    heat_codec: gr.Dropdown
    heat: gr.Image

    @property
    def components(self) -> set:
        return {self.key, self.frame, self.left, self.right, self.heat_codec, self.zoom, self.cx, self.cy}

    def request(self, values: dict) -> FrameRequest:
        return FrameRequest(
            values[self.key],
            int(values[self.frame]),
            values[self.left],
            values[self.right],
            values[self.heat_codec],
            float(values[self.zoom]),
            float(values[self.cx]),
            float(values[self.cy]),
        )

    @property
    def outputs(self) -> list:
        return [self.side, self.wipe, self.zoomed, self.heat, self.caption]

    def show(self, view: FrameView) -> dict:
        return {
            self.side: view.side_by_side,
            self.wipe: view.wipe,
            self.zoomed: view.zoom,
            self.heat: view.heatmap,
            self.caption: view.caption,
        }

    @property
    def first_look_outputs(self) -> list:
        return [self.key, self.count, self.frame, self.left, self.right, self.heat_codec, self.cx, self.cy]

    def first_look(self, view: CompareView) -> dict:
        """A new comparison on show: its frames, codecs, first wipe and zoom centre."""
        choices = view.codecs
        first_codec = choices[1][1] if len(choices) > 1 else "original"
        return {
            self.key: view.key,
            self.count: view.frames,
            self.frame: gr.Slider(maximum=max(view.frames - 1, 1), value=0, interactive=view.frames > 1),
            self.left: gr.Dropdown(choices=choices, value=view.wipe[0]),
            self.right: gr.Dropdown(choices=choices, value=view.wipe[1]),
            self.cx: view.zoom_centre[0],
            self.cy: view.zoom_centre[1],
            self.heat_codec: gr.Dropdown(choices=choices[1:] or choices, value=first_codec),
        }


@dataclass
class CompareTab:
    """The tab's parts, and the session's state."""

    clip: ClipInputs
    preview: gr.Image  # the first frame of an upload the browser cannot play
    preview_note: gr.Markdown
    settings: SettingsInputs
    results: ResultPanel
    viewer: FrameViewer
    state: gr.State


def build_compare_tab(
    handler: CompareHandler, packs: PackPicker, state: gr.State, example_clip: Path, max_jobs: int
) -> ClipInputs:
    """The tab over `handler` (`run`, `stop`, `frame_view`, `per_frame_figure`, `clip_preview`); `packs`: the model
    pack picker; `max_jobs`: heavy jobs at once. Returns the clip inputs, which the other tabs share."""
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            clip, preview, preview_note = _clip_column(example_clip)
            settings = _settings_column(packs, max_jobs)
        with gr.Column(scale=2):
            results, viewer = _results_column()
    tab = CompareTab(clip, preview, preview_note, settings, results, viewer, state)
    _wire_inputs(tab, handler, packs)
    _wire_run(tab, handler, max_jobs)
    _wire_viewer(tab, handler)
    _wire_chart(tab, handler)
    return clip


# --- layout -------------------------------------------------------------------------------------------------------


def _clip_column(example_clip: Path) -> tuple[ClipInputs, gr.Image, gr.Markdown]:
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
    return ClipInputs(video, start, frames, max_side), preview, preview_note


def _settings_column(packs: PackPicker, max_jobs: int) -> SettingsInputs:
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
        stage_filter = gr.Dropdown(
            FILTER_CHOICES, value="0", label="diffusion stage's sharpening, per stream", elem_id="stage-filter"
        )
        costly = _joined(m.label for m in METRIC_TABLE.values() if m.cost == "deep")
        metrics = gr.CheckboxGroup(
            metric_choices(), value=list(metric_names()), label=f"metrics ({costly} cost the most time on a CPU)"
        )
    anchors = gr.CheckboxGroup(list(anchor_choices()), value=list(DEFAULT_ANCHORS), label="anchors", elem_id="anchors")
    match = gr.Checkbox(True, label="match bitrate (search each anchor's QP for DiffVC's rate)", elem_id="match")
    contrast = gr.Checkbox(
        True, label="also run DiffVC with TDIR flipped (time and quality, on vs off)", elem_id="contrast"
    )
    with gr.Row():
        run = gr.Button("Run comparison", variant="primary", elem_id="run")
        halt = gr.Button("Stop", variant="stop", elem_id="stop")
    gr.Markdown(f"At most {max_jobs} heavy job{'s' if max_jobs > 1 else ''} run at once; others wait in the queue.")
    return SettingsInputs(
        pack,
        pack_note,
        qp,
        tdir,
        steps,
        strength,
        tdir_ratio,
        stage_filter,
        metrics,
        anchors,
        match,
        contrast,
        run,
        halt,
    )


def _results_column() -> tuple[ResultPanel, FrameViewer]:
    status = gr.Markdown("Choose a clip and press **Run comparison**.", elem_id="compare-status")
    table = gr.Dataframe(
        label="metrics per codec (rates from the bitstreams' bytes)",
        interactive=False,
        elem_id="metrics-table",
        wrap=True,
    )
    with gr.Tab("Frames"):
        viewer = _frame_viewer()
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
    return ResultPanel(status, table, metric, chart, tdir_text, timing, timing_plot, stage_plot, files), viewer


def _frame_viewer() -> FrameViewer:
    key = gr.State("")  # the comparison on show
    count = gr.State(DEFAULT_FRAMES)  # its number of frames
    with gr.Row():
        previous = gr.Button("◀ previous", size="sm", elem_id="prev")
        frame = gr.Slider(0, DEFAULT_FRAMES - 1, value=0, step=1, label="frame", elem_id="frame")
        following = gr.Button("next ▶", size="sm", elem_id="next")
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
    zoomed = gr.Image(label="zoomed crop", format="png", interactive=False, show_label=False, elem_id="zoom")
    heat_codec = gr.Dropdown([("original", "original")], value="original", label="error heatmap of")
    heat = gr.Image(label="error heatmap", format="png", interactive=False, show_label=False, elem_id="heatmap")
    return FrameViewer(
        key, count, previous, frame, following, caption, side, left, right, wipe, zoom, cx, cy, zoomed, heat_codec, heat
    )


# --- events -------------------------------------------------------------------------------------------------------


def _wire_inputs(tab: CompareTab, handler: CompareHandler, packs: PackPicker) -> None:
    """An upload the browser cannot play shows its first frame; a pack picked shows its summary."""

    def on_upload(path):
        frame, note = handler.clip_preview(path)
        return gr.Image(value=frame, visible=frame is not None), note

    tab.clip.video.change(
        on_upload, inputs=[tab.clip.video], outputs=[tab.preview, tab.preview_note], api_visibility="private"
    )
    tab.settings.pack.change(
        _pack_note(packs.summary),
        inputs=[tab.settings.pack],
        outputs=[tab.settings.pack_note],
        api_visibility="private",
    )


def _wire_run(tab: CompareTab, handler: CompareHandler, max_jobs: int) -> None:
    """Run: the comparison as a heavy job, then its first frame in the viewer; Stop ends it at its next step."""
    results, viewer, state = tab.results, tab.viewer, tab.state

    def on_run(values: dict, request: gr.Request, progress=gr.Progress()):
        session_state: SessionState = values[state]
        try:
            compare_request = tab.settings.request(tab.clip.request(values), values)
            view = handler.run(compare_request, session_state, request.session_hash, progress)
        except Exception as e:  # every failure becomes one line in the page
            return {results.status: error_message(e)}
        return {state: session_state, **results.show(view), **viewer.first_look(view)}

    run_event = tab.settings.run.click(
        on_run,
        inputs={*tab.clip.components, *tab.settings.components, state},
        outputs=[state, *results.outputs, *viewer.first_look_outputs],
        concurrency_limit=max_jobs,
        concurrency_id=HEAVY,
        api_visibility="private",
    )
    run_event.then(_viewer(tab, handler), **_view_io(tab), api_visibility="private")
    tab.settings.halt.click(
        _stopper(handler.stop),
        inputs=None,
        outputs=[results.status],
        cancels=[run_event],
        api_visibility="private",
    )


def _wire_viewer(tab: CompareTab, handler: CompareHandler) -> None:
    """The viewer follows its controls: frame, codecs, zoom, a click on the heatmap."""
    viewer = tab.viewer
    on_view, view_io = _viewer(tab, handler), _view_io(tab)
    gr.on(
        [
            viewer.frame.release,
            viewer.frame.input,
            viewer.left.change,
            viewer.right.change,
            viewer.heat_codec.change,
            viewer.zoom.release,
            viewer.cx.release,
            viewer.cy.release,
        ],
        on_view,
        **view_io,
        api_visibility="private",
        trigger_mode="always_last",
    )
    viewer.previous.click(
        lambda t: max(0, int(t) - 1), inputs=viewer.frame, outputs=viewer.frame, api_visibility="private"
    ).then(on_view, **view_io, api_visibility="private")
    viewer.next.click(
        lambda t, n: min(int(n) - 1, int(t) + 1),
        inputs=[viewer.frame, viewer.count],
        outputs=viewer.frame,
        api_visibility="private",
    ).then(on_view, **view_io, api_visibility="private")
    viewer.heat.select(
        _zoom_picker,
        inputs=[viewer.cx, viewer.cy, viewer.heat],
        outputs=[viewer.cx, viewer.cy],
        api_visibility="private",
    ).then(on_view, **view_io, api_visibility="private")


def _wire_chart(tab: CompareTab, handler: CompareHandler) -> None:
    """The per-frame chart follows its metric."""
    viewer, results, state = tab.viewer, tab.results, tab.state

    def on_chart(values: dict):
        if not values[viewer.key]:
            return {results.chart: None}
        try:
            chart = ChartRequest(values[viewer.key], values[results.metric])
            return {results.chart: handler.per_frame_figure(chart, values[state])}
        except Exception as e:
            return {results.status: error_message(e)}

    results.metric.change(
        on_chart,
        inputs={viewer.key, results.metric, state},
        outputs=[results.chart, results.status],
        api_visibility="private",
    )


def _viewer(tab: CompareTab, handler: CompareHandler) -> Callable[[dict], dict]:
    """The viewer's event: the frame its controls ask for, from the comparison on show."""
    viewer, status, state = tab.viewer, tab.results.status, tab.state

    def on_view(values: dict) -> dict:
        if not values[viewer.key]:
            return {viewer.caption: ""}
        try:
            view = handler.frame_view(viewer.request(values), values[state])
        except Exception as e:
            return {status: error_message(e)}
        return viewer.show(view)

    return on_view


def _view_io(tab: CompareTab) -> dict:
    return {"inputs": {*tab.viewer.components, tab.state}, "outputs": [*tab.viewer.outputs, tab.results.status]}


def _zoom_picker(evt: gr.SelectData, cx_value: float, cy_value: float, shown):
    """A click on the heatmap (one frame under a caption bar): centre the zoom window there."""
    if shown is None or not evt.index:
        return cx_value, cy_value
    height, width = shown.shape[0] - LABEL_BAR, shown.shape[1]
    x, y = evt.index[0], evt.index[1] - LABEL_BAR
    if not (0 <= x < width and 0 <= y < height):
        return cx_value, cy_value
    return round(x / width, 3), round(y / height, 3)


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
