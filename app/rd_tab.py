"""The Rate-distortion tab: a QP sweep per codec on the Compare tab's clip (cached: a rerun is instant), RD curves
for each metric, the table of BD-rate and bits at equal quality against x265, and the HTML report to download."""

from __future__ import annotations

import gradio as gr

from app.compare_tab import FILTER_CHOICES, HEAVY, ClipInputs, metric_choices
from app.feedback import error_message
from app.handlers import (
    DEFAULT_ANCHOR_QPS,
    DEFAULT_NEURAL_QPS,
    CurveRequest,
    SweepHandler,
    SweepRequest,
    sweep_codecs,
)
from codec.metrics import metric_names


def build_rd_tab(handler: SweepHandler, clip: ClipInputs, state: gr.State, max_jobs: int) -> None:
    """The tab over `handler` (`run`, `figure`) on the Compare tab's `clip`; `max_jobs`: heavy jobs at once."""
    gr.Markdown(
        "A QP sweep per codec on the clip, start, frames and size cap chosen in the **Compare** tab. "
        "Every point is cached by clip content and settings, so a rerun is instant. Against the first codec "
        "chosen (x265 when ticked): **BD-rate** (%, negative means fewer bits for the same quality; missing "
        "where the curves' quality ranges do not overlap) and **bits at equal quality** (x: each point's "
        "bits over the first codec's at the same quality, read off its curve, geometric mean over the "
        "points within its quality range; 6.00 means 6x its bits)."
    )
    with gr.Row():
        codecs = gr.CheckboxGroup(list(sweep_codecs()), value=["x265", "diffvc"], label="codecs", elem_id="rd-codecs")
        anchor_qps = gr.Textbox(DEFAULT_ANCHOR_QPS, label="anchor QPs (x265, x264: 0-51; AV1: 1-63)")
        neural_qps = gr.Textbox(DEFAULT_NEURAL_QPS, label="DiffVC / condlc QPs (0-63)")
    with gr.Row():
        tdir = gr.Checkbox(True, label="DiffVC with TDIR")
        stage_filter = gr.Dropdown(
            FILTER_CHOICES, value="0", label="DiffVC: diffusion stage's sharpening, per stream", elem_id="rd-filter"
        )
        metrics = gr.CheckboxGroup(metric_choices(), value=list(metric_names()), label="metrics")
        run = gr.Button("Run sweep", variant="primary", elem_id="rd-run")
    status = gr.Markdown("", elem_id="rd-status")
    metric = gr.Dropdown(metric_choices(), value="psnr", label="RD curve of")
    plot = gr.Plot(elem_id="rd-plot")
    bd = gr.Dataframe(
        label="BD-rate (%) and bits at equal quality (x) against the first codec", interactive=False, elem_id="bd-table"
    )
    results = gr.Dataframe(label="every point", interactive=False)
    files = gr.File(label="HTML report, results CSV, BD-rate CSV", file_count="multiple", interactive=False)

    def on_run(values: dict, request: gr.Request, progress=gr.Progress()):
        try:
            view = handler.run(
                SweepRequest(
                    clip.request(values),
                    tuple(values[codecs]),
                    values[anchor_qps],
                    values[neural_qps],
                    bool(values[tdir]),
                    tuple(values[metrics]),
                    values[stage_filter],
                ),
                values[state],
                request.session_hash,
                progress,
            )
        except Exception as e:
            return {status: error_message(e)}
        shown = view.metrics[0]
        return {
            state: values[state],
            status: view.status,
            plot: view.figure,
            bd: view.bd_table,
            results: view.results,
            files: view.files,
            metric: gr.Dropdown(choices=metric_choices(view.metrics), value=shown),
        }

    def on_metric(values: dict):
        try:
            return {plot: handler.figure(CurveRequest(values[metric]), values[state])}
        except Exception as e:
            return {status: error_message(e)}

    run.click(
        on_run,
        inputs={*clip.components, codecs, anchor_qps, neural_qps, tdir, metrics, stage_filter, state},
        outputs=[state, status, plot, bd, results, files, metric],
        concurrency_limit=max_jobs,
        concurrency_id=HEAVY,
        api_visibility="private",
    )
    metric.input(on_metric, inputs={metric, state}, outputs=[plot, status], api_visibility="private")
