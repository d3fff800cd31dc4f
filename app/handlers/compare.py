"""The Compare tab's handlers: run a comparison (DiffVC beside its anchors on the session's clip), view its frames
and per-frame charts, stop it, preview an upload, and the `/compare` API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from app import views
from app.feedback import error_message
from app.handlers.codecs import installed_pack
from app.handlers.workspace import (
    DEFAULT_MAX_SIDE,
    ClipRequest,
    SessionState,
    UserError,
    Workspace,
    escape,
    metric_device,
)
from codec.metrics import metric_names, perceptual_metrics

if TYPE_CHECKING:
    from codec.eval.compare import CodecRun, CompareSettings, Comparison

DEFAULT_ANCHORS = ("x265", "condlc")  # condlc: DiffVC's codec without the stage, what the first wipe shows it against
ZOOM = 4.0  # the viewer's first zoom


@dataclass(frozen=True)
class CompareRequest:
    clip: ClipRequest
    qp: int = 32
    tdir: bool = True
    steps: int = 0
    strength: float = -1.0
    tdir_ratio: float = -1.0
    anchors: tuple[str, ...] = DEFAULT_ANCHORS
    match_bitrate: bool = True
    tdir_contrast: bool = True
    metrics: tuple[str, ...] = field(default_factory=metric_names)
    pack: str = ""  # an installed pack's name (`CodecInfo.pack_choices`); "" = the studio's configured pack
    filter: str = "0"  # DiffVC's stage filter for the stream (`DiffVCOptions.filter`)

    @classmethod
    def api(cls, video: str, qp: int, tdir: bool, frames: int) -> CompareRequest:
        """The `/compare` API's request: DiffVC at `qp` (TDIR on/off) against x265 at matched bitrate, on the first
        `frames` frames at the default size cap."""
        clip = ClipRequest(video, 0, int(frames), DEFAULT_MAX_SIDE)
        return cls(clip, qp=int(qp), tdir=bool(tdir), anchors=("x265",), tdir_contrast=False)


@dataclass
class CompareView:
    key: str
    status: str
    table: pd.DataFrame
    timing: pd.DataFrame
    timing_figure: Any
    stage_figure: Any
    tdir: str
    files: list[str]
    frames: int
    codecs: list[tuple[str, str]]  # (label, slug) of the viewer's choices, 'original' first
    per_frame_figure: Any
    cached: bool = False  # answered from the comparison store
    wipe: tuple[str, str] = ("original", "original")  # the viewer's first wipe (left, right)
    zoom_centre: tuple[float, float] = (0.5, 0.5)  # where the viewer's zoom first looks


@dataclass(frozen=True)
class FrameRequest:
    key: str
    frame: int = 0
    left: str = "original"
    right: str = "diffvc"
    heat: str = "diffvc"
    zoom: float = ZOOM
    cx: float = 0.5
    cy: float = 0.5


@dataclass
class FrameView:
    side_by_side: np.ndarray
    wipe: tuple[np.ndarray, np.ndarray]
    zoom: np.ndarray
    heatmap: np.ndarray
    caption: str


@dataclass(frozen=True)
class ChartRequest:
    """The per-frame chart of one metric (a `METRIC_TABLE` name) for the comparison `key`."""

    key: str
    metric: str


class CompareHandler:
    """The Compare tab over a workspace: each comparison runs as a heavy job that the session's Stop button ends."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def run(self, request: CompareRequest, state: SessionState, session: str, progress=None) -> CompareView:
        """Run (or fetch from disk) the comparison; the session now owns it."""
        from codec.eval.compare import ComparisonStore

        job = self.workspace.heavy_job()
        video, source = self.workspace.load_clip(request.clip)
        settings = self._settings(request)
        with self._stop_button(session, job.stop_pressed), job.running() as cores:
            comparison = ComparisonStore(self.workspace.config.results_dir).run(
                video,
                settings,
                source=source,
                start=int(request.clip.start),
                progress=(lambda f, d: progress(f, desc=d)) if progress else None,
                stop=job.stopped,
                lanes=cores.lanes,
            )
        self.workspace.comparisons.keep(comparison)
        if comparison.key in state.comparisons:
            state.comparisons.remove(comparison.key)
        state.comparisons.append(comparison.key)
        return _compare_view(comparison, self.workspace.safe_files(comparison.files()))

    def stop(self, session: str) -> str:
        with self._lock:
            event = self._stops.get(session)
        if event is not None:
            event.set()
        return "Stopping: the run ends at its next step."

    def frame_view(self, request: FrameRequest, state: SessionState) -> FrameView:
        comparison = self.workspace.comparison(request.key, state)
        return _frame_view(comparison, request)

    def per_frame_figure(self, request: ChartRequest, state: SessionState):
        comparison = self.workspace.comparison(request.key, state)
        return views.per_frame_figure(comparison.runs, request.metric)

    def api(self, request: CompareRequest) -> list[dict[str, Any]]:
        """The `/compare` API (`CompareRequest.api`): the results rows, one per codec, rates from the bitstreams'
        bytes, each with whether it came from the comparison store."""
        state = SessionState()
        view = self.run(request, state, session=f"api-{threading.get_ident()}")
        comparison = self.workspace.comparison(view.key, state)
        return [{**_api_row(run), "cached": view.cached} for run in comparison.runs]

    def clip_preview(self, path: str | None) -> tuple[np.ndarray | None, str]:
        """(the first frame, a note) for an upload a browser cannot play (AVI, MJPEG, 10-bit HEVC...), whose
        video element would stay blank although the codecs read it; (None, "") for one it plays."""
        from codec.errors import VideoError
        from codec.video import browser_playback_problem, read_video

        if not path:
            return None, ""
        problem = browser_playback_problem(path)
        if problem is None:
            return None, ""
        try:
            first = read_video(path, frames=1, limits=self.workspace.limits()).frames[0]
        except VideoError as e:
            return None, error_message(e)
        return first, (
            f"Your browser cannot play this file ({escape(problem)}), so its first frame is shown here. "
            "The comparison reads the file itself."
        )

    def _settings(self, request: CompareRequest) -> CompareSettings:
        from codec.eval.compare import CompareSettings

        return CompareSettings(
            qp=int(request.qp),
            tdir=bool(request.tdir),
            steps=int(request.steps),
            strength=float(request.strength),
            tdir_ratio=float(request.tdir_ratio),
            anchors=tuple(request.anchors),
            match_bitrate=bool(request.match_bitrate),
            tdir_contrast=bool(request.tdir_contrast),
            pack=installed_pack(request.pack).name if request.pack else self.workspace.config.pack,
            filter=str(request.filter),
            metrics=tuple(m for m in metric_names() if m in request.metrics),
            device=metric_device(),
        )

    @contextmanager
    def _stop_button(self, session: str, event: threading.Event) -> Iterator[None]:
        """While the session's comparison runs, its Stop button sets `event`."""
        with self._lock:
            self._stops[session] = event
        try:
            yield
        finally:
            with self._lock:
                self._stops.pop(session, None)


# --- views --------------------------------------------------------------------------------------------------------


def anchor_choices() -> tuple[str, ...]:
    """The codecs a comparison can put beside DiffVC (every registered one but DiffVC, classical ones first)."""
    from codec.registry import comparison_anchors

    return comparison_anchors()


def _compare_view(comparison: Comparison, files: list[Path]) -> CompareView:
    """The comparison as the page shows it; `files`: its downloads, already checked (`Workspace.safe_files`)."""
    runs, clip = comparison.runs, comparison.clip
    cached = "from the cache (same clip and settings as an earlier run)"
    how = cached if comparison.cached else f"in {comparison.elapsed_s:.1f} s"
    status = [
        f"**Done** {how}: {escape(clip['source'] or 'clip')}, {clip['frames']} frames of "
        f"{clip['width']}x{clip['height']} from frame {clip['start']}."
    ]
    status += [f"- {escape(note)}" for note in comparison.notes]
    return CompareView(
        key=comparison.key,
        status="\n".join(status),
        table=views.metrics_table(runs, clip["fps"]),
        timing=views.timing_table(runs),
        timing_figure=views.timing_figure(runs),
        stage_figure=views.stage_figure(runs),
        tdir=views.tdir_summary(runs),
        files=[str(p) for p in files],
        frames=int(clip["frames"]),
        codecs=[("original", "original"), *((run.label, run.slug) for run in runs)],
        per_frame_figure=views.per_frame_figure(runs, _first_metric(runs)),
        cached=comparison.cached,
        wipe=_first_wipe(runs),
        zoom_centre=views.textured_zoom_centre(comparison.frames()["original"][0], ZOOM),
    )


def _frame_view(comparison: Comparison, request: FrameRequest) -> FrameView:
    """Frame `request.frame` (clamped) of every codec: side by side, the wipe's two, zoomed, and the heatmap."""
    frames = comparison.frames()
    labels = {"original": "original", **{run.slug: run.label for run in comparison.runs}}
    for slug in (request.left, request.right, request.heat):
        if slug not in frames:
            raise UserError(f"no codec {slug!r} in this comparison")
    t = int(np.clip(request.frame, 0, frames["original"].shape[0] - 1))
    original, window = frames["original"][t], (request.cx, request.cy, request.zoom)
    tiles = [(_caption(comparison, labels, slug, t), frames[slug][t]) for slug in labels]
    zoom_tiles = [
        ("original (window in yellow)", views.mark_box(original, *window)),
        ("original, zoomed", views.zoomed(original, *window)),
        *((labels[slug], views.zoomed(frames[slug][t], *window)) for slug in labels if slug != "original"),
    ]
    return FrameView(
        side_by_side=views.grid(tiles, columns=3),
        wipe=(frames[request.left][t], frames[request.right][t]),
        zoom=views.grid(zoom_tiles, columns=3),
        heatmap=views.captioned(
            views.enlarged(views.error_heatmap(original, frames[request.heat][t])),
            f"|{labels[request.heat]} - original|, 0 (black) .. 64+ (yellow)",
        ),
        caption=f"Frame {t} ({_frame_type(comparison, t)}-frame). Wipe: **{escape(labels[request.left])}** (left) "
        f"| **{escape(labels[request.right])}** (right).",
    )


def _caption(comparison: Comparison, labels: dict[str, str], slug: str, t: int) -> str:
    """A tile's caption: the codec, its rate, frame t's bits and PSNR where measured."""
    if slug == "original":
        return f"original, frame {t}"
    row = comparison.run(slug).row
    psnr = row.per_frame.get("psnr", [None] * (t + 1))[t]
    extra = f", {psnr:.2f} dB" if psnr is not None else ""
    return f"{labels[slug]}: {row.bpp:.4f} bpp, {row.frame_bits[t]} bits{extra}"


def _frame_type(comparison: Comparison, t: int) -> str:
    types = comparison.runs[0].row.frame_types if comparison.runs else ""
    return types[t] if t < len(types) else "?"


def _first_wipe(runs: list[CodecRun]) -> tuple[str, str]:
    """What the viewer first shows: DiffVC against its own codec without the diffusion stage (condlc) when the
    comparison has it, so that the first look is at what the stage does; else against the original."""
    slugs = [run.slug for run in runs]
    right = slugs[0] if slugs else "original"
    return ("condlc" if "condlc" in slugs and right != "condlc" else "original"), right


def _first_metric(runs: list[CodecRun]) -> str:
    for metric in (*perceptual_metrics(), *metric_names()):
        if all(run.row.metrics.get(metric) is not None for run in runs):
            return metric
    return "psnr"


def _api_row(run: CodecRun) -> dict[str, Any]:
    from codec.eval.report import csv_first_columns

    row = run.row.to_dict()  # the API's rows are the JSON form, cut down
    keep = (
        *csv_first_columns(),
        "unet_evals",
        "frame_types",
        "timings",
        "params",
        "clip_hash",
        "sha256",
        "recon_match",
    )
    return {
        "label": run.label,
        "role": run.role,
        **{k: row.get(k) for k in keep},
        "matched": run.match,
        "per_frame": row.get("per_frame"),
    }
