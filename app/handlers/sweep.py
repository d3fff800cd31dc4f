"""The Rate-distortion tab's handlers: a QP sweep per codec on the session's clip (through the evaluation engine and
its cache), the BD-rate table, and the RD curve of another metric."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from app import views
from app.handlers.workspace import ClipRequest, SessionState, UserError, Workspace, escape, metric_device
from codec.metrics import metric_names

if TYPE_CHECKING:
    from codec.eval.compare import SweepPlan

# The RD tab's default QPs. With these x265 spans 37.6 down to 22.1 dB PSNR-RGB (1.15 to 0.012 bpp; DISTS 0.019 to
# 0.31) on the example clip at the app's defaults (16 frames, 256x144; even QP 0 stops at 38.5 dB), so that the neural
# codecs' points (23-28 dB in docs/RESULTS.md) fall within its curve and their bits at equal quality can be read off
# it. The four common-test QPs (22-37) stay in, so earlier sweeps' cached points are reused; 37, 44 and 51 step by 7
# where log bpp is nearly linear in quality. The neural codecs span their whole 0-63 scale.
DEFAULT_ANCHOR_QPS = "12, 22, 27, 32, 37, 44, 51"
DEFAULT_NEURAL_QPS = "16, 32, 48, 63"


@dataclass(frozen=True)
class SweepRequest:
    clip: ClipRequest
    codecs: tuple[str, ...] = ("x265", "diffvc")
    anchor_qps: str = DEFAULT_ANCHOR_QPS
    neural_qps: str = DEFAULT_NEURAL_QPS
    tdir: bool = True
    metrics: tuple[str, ...] = field(default_factory=metric_names)
    filter: str = "0"  # DiffVC's stage filter per stream (`DiffVCOptions.filter`): a gain, "-1" (off) or "auto"


@dataclass
class SweepView:
    status: str
    figure: Any
    bd_table: pd.DataFrame
    results: pd.DataFrame
    files: list[str]
    metrics: list[str]


@dataclass(frozen=True)
class CurveRequest:
    """The RD curves of the session's last sweep in one metric (a `METRIC_TABLE` name)."""

    metric: str


class SweepHandler:
    """The Rate-distortion tab over a workspace: each sweep runs as a heavy job, into the session's folder."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def run(self, request: SweepRequest, state: SessionState, session: str, progress=None) -> SweepView:
        from codec.eval.compare import run_sweep

        if not request.codecs:
            raise UserError("Choose at least one codec for the sweep.")
        job = self.workspace.heavy_job()
        video, source = self.workspace.load_clip(request.clip)
        plans = self._plans(request)
        out = self._next_sweep_dir(session)
        metrics = tuple(m for m in metric_names() if m in request.metrics) or metric_names()
        with job.running() as cores:
            rows, paths = run_sweep(
                video,
                plans,
                out,
                self.workspace.config.eval_cache,
                source=source,
                start=int(request.clip.start),
                metrics=metrics,
                device=metric_device(),
                progress=lambda f, d: (job.stopped(), progress and progress(f, desc=d)),
                lanes=cores.lanes,
            )
        state.sweep_dir = str(out)
        files = self.workspace.safe_files([paths["html"], paths["csv"], paths["bdrate"]])
        return _sweep_view(rows, plans[0].name, source, video, files)

    def figure(self, request: CurveRequest, state: SessionState):
        from codec.errors import RowSchemaError
        from codec.eval.report import rd_figure, read_results_json

        if not state.sweep_dir:
            raise UserError("Run a sweep first.")
        try:
            rows = read_results_json(Path(state.sweep_dir) / "results.json")
        except RowSchemaError:
            raise UserError("This sweep was written by an older version of the studio; run it again.") from None
        return rd_figure(rows, request.metric)

    def _plans(self, request: SweepRequest) -> list[SweepPlan]:
        """The chosen codecs in the order the sweep runs them (`sweep_codecs`), each with its QPs."""
        anchor_qps, neural_qps = _qps(request.anchor_qps, "anchor"), _qps(request.neural_qps, "DiffVC / condlc")
        return [self._plan(name, request, anchor_qps, neural_qps) for name in sweep_codecs() if name in request.codecs]

    def _plan(
        self, name: str, request: SweepRequest, anchor_qps: tuple[int, ...], neural_qps: tuple[int, ...]
    ) -> SweepPlan:
        """A codec's sweep: the neural QPs for a neural codec, the anchor QPs otherwise; the model pack, the TDIR
        switch and the stage filter where its options have them."""
        from codec.eval.compare import SweepPlan
        from codec.registry import get_entry

        entry = get_entry(name)
        options = {"pack": self.workspace.config.pack} if entry.takes_pack else {}
        if entry.has_option("tdir"):
            options["tdir"] = bool(request.tdir)
        if entry.has_option("filter"):
            options["filter"] = request.filter
        return SweepPlan(name, options, neural_qps if entry.kind == "neural" else anchor_qps)

    def _next_sweep_dir(self, session: str) -> Path:
        folder = self.workspace.session_dir(session)
        return folder / f"sweep-{len(list(folder.glob('sweep-*'))) + 1}"


def sweep_codecs() -> tuple[str, ...]:
    """The codecs an RD sweep offers, in the order it runs them: the classical anchors first (BD-rates are
    against the first one chosen), then the neural codecs."""
    from codec.registry import codec_names

    return codec_names("anchor") + codec_names("neural")


def _sweep_view(rows, first: str, source: str, video, files: list[Path]) -> SweepView:
    from codec.eval.report import bd_rate_table, metrics_present, rd_figure, results_frame

    present = metrics_present(rows)
    columns = ["spec", "qp", "bpp", *present, "enc_fps", "dec_fps"]
    status = (
        f"**Done**: {len(rows)} points on {escape(source)} ({video.num_frames} frames of "
        f"{video.width}x{video.height}); BD-rate against {first} (negative = fewer bits for the same "
        f"quality) and bits relative to {first} at equal quality (read off {first}'s curve; 6.00 = 6x its "
        "bits), with why either is missing in the table's notes. Points computed before came from the "
        "cache."
    )
    return SweepView(
        status=status,
        figure=rd_figure(rows, present[0]),
        bd_table=views.bd_rate_view(bd_rate_table(rows, present)),
        results=results_frame(rows)[columns].round(4),
        files=[str(p) for p in files],
        metrics=present,
    )


def _qps(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in re.split(r"[,\s]+", text.strip()) if v}))
    except ValueError:
        raise UserError(f"{what} QPs must be whole numbers separated by commas, got {text!r}") from None
    if not values:
        raise UserError(f"give at least one {what} QP")
    if len(values) > 12:
        raise UserError(f"at most 12 {what} QPs per sweep")
    return values
