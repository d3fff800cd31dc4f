"""The app's event handlers, without Gradio: each takes a small request dataclass and returns a view dataclass.

`Studio` holds the configuration (model pack, folders) and the library entry points it calls: the comparison
(`codec.eval.compare`), the rate-distortion sweep (the evaluation engine), and the blind-test store (`app.blind`).
The codec library is imported on first use, so building the page loads no model.

Per-session data lives in `SessionState` (a `gr.State`, kept on the server): the comparisons this session ran,
its blind pair, its output folder. A session can only view, pair or download comparisons it ran itself, and
downloads are only ever paths inside the app's own result folders.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from app import views
from app.blind import BlindPair, BlindStore, Candidate, draw_pair
from app.feedback import error_message
from codec.metrics import metric_names, perceptual_metrics
from codec.threads import job_threads

if TYPE_CHECKING:
    from codec.eval.compare import Comparison

log = logging.getLogger(__name__)

DEFAULT_FRAMES = 16
DEFAULT_ANCHORS = ("x265", "condlc")  # condlc: DiffVC's codec without the stage, what the first wipe shows it against
ZOOM = 4.0  # the viewer's first zoom
DEFAULT_MAX_SIDE = 256
# The RD tab's default QPs. With these x265 spans 37.6 down to 22.1 dB PSNR-RGB (1.15 to 0.012 bpp; DISTS 0.019 to
# 0.31) on the example clip at the app's defaults (16 frames, 256x144; even QP 0 stops at 38.5 dB), so that the neural
# codecs' points (23-28 dB in docs/RESULTS.md) fall within its curve and their bits at equal quality can be read off
# it. The four common-test QPs (22-37) stay in, so earlier sweeps' cached points are reused; 37, 44 and 51 step by 7
# where log bpp is nearly linear in quality. The neural codecs span their whole 0-63 scale.
DEFAULT_ANCHOR_QPS = "12, 22, 27, 32, 37, 44, 51"
DEFAULT_NEURAL_QPS = "16, 32, 48, 63"
PAIR_WIDTH = 480  # blind-test frames narrower than this are shown enlarged by a whole factor (nearest neighbour)


DEFAULT_TIME_LIMIT_S = 900.0  # per heavy job (comparison, sweep); DIFFVC_STUDIO_TIME_LIMIT
DEFAULT_MAX_PIXELS = 40_000_000  # frames x width x height of a job's clip after the size cap; DIFFVC_STUDIO_MAX_PIXELS


class UserError(Exception):
    """Something the person can fix (no clip chosen, a bad QP list): shown as it is."""


class JobTimeLimit(UserError):
    """A heavy job ran past the per-job time limit and was stopped at its next step."""


@dataclass(frozen=True)
class StudioConfig:
    """pack: DiffVC's model pack ("" = the embedded default). results_dir: comparison folders (shared cache, by
    content hash + settings). sessions_dir: per-session outputs (sweeps, vote exports). db_path: the blind votes."""

    pack: str
    results_dir: Path
    sessions_dir: Path
    eval_cache: Path
    db_path: Path
    example_clip: Path
    time_limit_s: float = DEFAULT_TIME_LIMIT_S  # a heavy job is stopped at its first step after this
    max_pixels: int = DEFAULT_MAX_PIXELS  # frames x W x H of a job's clip (after the size cap)
    heavy_jobs: int = 1  # heavy jobs (comparison, sweep, API) at once
    threads: int | None = None  # torch threads per heavy job; None: the cores idle when it starts (codec.threads)

    @classmethod
    def from_env(cls, environ: dict[str, str], repo: Path) -> StudioConfig:
        """DIFFVC_STUDIO_PACK, DIFFVC_STUDIO_DATA (default: <cache root>/studio), DIFFVC_STUDIO_TIME_LIMIT (seconds
        per heavy job, default 900), DIFFVC_STUDIO_MAX_PIXELS (frames x width x height per job, default 4e7),
        DIFFVC_STUDIO_JOBS (heavy jobs at once, default 1), DIFFVC_STUDIO_THREADS (torch threads per heavy job,
        default: the cores idle when it starts)."""
        from codec.weights import cache_root

        data = Path(environ.get("DIFFVC_STUDIO_DATA") or cache_root() / "studio")
        return cls(
            pack=environ.get("DIFFVC_STUDIO_PACK", ""),
            results_dir=data / "comparisons",
            sessions_dir=data / "sessions",
            eval_cache=cache_root() / "eval-cache",
            db_path=data / "blind.sqlite",
            example_clip=repo / "assets" / "clips" / "bigbuckbunny.mp4",
            time_limit_s=_positive(environ, "DIFFVC_STUDIO_TIME_LIMIT", DEFAULT_TIME_LIMIT_S, float),
            max_pixels=_positive(environ, "DIFFVC_STUDIO_MAX_PIXELS", DEFAULT_MAX_PIXELS, int),
            heavy_jobs=_positive(environ, "DIFFVC_STUDIO_JOBS", 1, int),
            threads=_positive(environ, "DIFFVC_STUDIO_THREADS", None, int),
        )


@dataclass
class SessionState:
    """What one browser session owns. Kept server-side in a gr.State."""

    comparisons: list[str] = field(default_factory=list)  # comparison keys, oldest first
    pair: BlindPair | None = None
    pair_reference: bool = False
    sweep_dir: str | None = None


# --- requests and views -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipRequest:
    path: str | None  # the uploaded file as Gradio stored it (never a path built from its name)
    start: int = 0
    frames: int = DEFAULT_FRAMES
    max_side: int = DEFAULT_MAX_SIDE


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
    pack: str = ""  # an installed pack's name (`Studio.pack_choices`); "" = the studio's configured pack


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
class SweepRequest:
    clip: ClipRequest
    codecs: tuple[str, ...] = ("x265", "diffvc")
    anchor_qps: str = DEFAULT_ANCHOR_QPS
    neural_qps: str = DEFAULT_NEURAL_QPS
    tdir: bool = True
    metrics: tuple[str, ...] = field(default_factory=metric_names)


@dataclass
class SweepView:
    status: str
    figure: Any
    bd_table: pd.DataFrame
    results: pd.DataFrame
    files: list[str]
    metrics: list[str]


@dataclass(frozen=True)
class VoteRequest:
    """A blind-test vote on the session's current pair: "A", "B" or "tie", who voted (free text), a comment."""

    choice: str
    rater: str = ""
    comment: str = ""


@dataclass
class PairView:
    status: str
    a: np.ndarray | None
    b: np.ndarray | None
    reference: np.ndarray | None


# --- the handlers --------------------------------------------------------------------------------------------


class Studio:
    """Every handler of the page, over one configuration."""

    def __init__(self, config: StudioConfig) -> None:
        self.config = config
        self.blind = BlindStore(config.db_path)
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def preload(self) -> None:
        """Load DiffVC's model pack now, before any request (the entry point calls this before serving): no two
        requests then race to build it (see `codec.eval.compare.diffvc_identity`) and the first user waits less."""
        from codec.errors import CodecError
        from codec.eval.compare import CompareSettings, diffvc_identity

        try:
            diffvc_identity(CompareSettings(pack=self.config.pack))
        except CodecError as e:  # reported on the page by pack_status
            log.warning("DiffVC model pack not preloaded: %s", e)

    def _sweep_plan(self, name: str, request: SweepRequest, anchor_qps, neural_qps):
        """A codec's sweep: the neural QPs for a neural codec, the anchor QPs otherwise; the model pack and the
        TDIR switch where its options have them."""
        from codec.eval.compare import SweepPlan
        from codec.registry import get_entry

        entry = get_entry(name)
        options = {"pack": self.config.pack} if entry.takes_pack else {}
        if entry.has_option("tdir"):
            options["tdir"] = bool(request.tdir)
        return SweepPlan(name, options, neural_qps if entry.kind == "neural" else anchor_qps)

    # -- status ------------------------------------------------------------------------------------------------

    def pack_status(self) -> tuple[bool, str]:
        """(DiffVC usable, a markdown line about the model pack)."""
        from codec.errors import CodecError
        from codec.registry import get_entry, parse_options

        entry = get_entry("diffvc")
        pack = self.config.pack
        try:
            reason = entry.unavailable_reason(parse_options(entry.options_type, {"pack": pack}, "diffvc"))
        except CodecError as e:  # a bad pack setting is reported, not raised, so the page still loads
            reason = str(e)
        if reason:
            return False, (
                f"**DiffVC is off: no model pack could be loaded** ({_escape(reason)}). x265, x264 and AV1 "
                "still run. Set `DIFFVC_STUDIO_PACK=random-tiny` for a random-init model (real bitstreams "
                "and timings, no quality), or install a trained pack."
            )
        if pack.startswith("random-"):
            return True, (
                f"DiffVC model pack: `{_escape(pack)}`, a **random-init** model: real bitstreams and "
                "timings, but no quality to judge."
            )
        from codec.diffvc.pack import resolve_pack

        folder = resolve_pack(pack or None)
        return True, f"DiffVC model pack: `{_escape(folder.name if folder else pack)}`."

    def pack_choices(self) -> tuple[list[tuple[str, str]], str]:
        """The pack picker: ([(label, name)] of every installed pack, `random-tiny` last), and the one chosen first
        (the configured pack, else the default pack, else `random-tiny`)."""
        from codec.diffvc.pack import DEFAULT_PACK_NAME, installed_packs

        packs = installed_packs()
        names = [p.name for p in packs]
        configured = Path(self.config.pack).name if self.config.pack else DEFAULT_PACK_NAME
        first = configured if configured in names else names[0]
        return [(f"{p.name} ({p.preset}, {p.size_mb:g} MB)" if p.path else p.name, p.name) for p in packs], first

    def pack_summary(self, name: str) -> str:
        """A markdown line about an installed pack: preset, size, provenance, the device it would run on, and for a
        `full` pack without a GPU how much work a frame is before anyone waits for it."""
        import torch

        pack = self._installed_pack(name)
        gpu = torch.cuda.is_available()
        where = "the GPU" if gpu else "this CPU"
        line = f"**{_escape(pack.name)}**: {_escape(pack.preset)} preset"
        line += f", {pack.size_mb:g} MB" if pack.path else ""
        line += f", runs on {where}. {_escape(pack.provenance)}."
        if pack.preset == "full" and not gpu:
            line += (
                " **No GPU here:** the full preset runs Stable Diffusion 2.1's U-Net (866 M parameters) and VAE on the "
                f"CPU, {self._unet_evals_per_frame(pack)} U-Net + ControlNet evaluations per P-frame: minutes per "
                "frame. Use a few frames at a small size, or a machine with a GPU."
            )
        return line

    @staticmethod
    def _unet_evals_per_frame(pack) -> int:
        import json

        from codec.diffvc.diffusion import num_reuse_steps, num_sampling_steps
        from codec.diffvc.pack import CONFIG_FILE

        diffusion = json.loads((pack.path / CONFIG_FILE).read_text())["diffusion"]
        steps = num_sampling_steps(diffusion["steps"], diffusion["strength"])
        return steps - num_reuse_steps(steps, diffusion["tdir_ratio"])

    @staticmethod
    def _installed_pack(name: str):
        """The installed pack of that name; a name the picker did not offer (a path, say) is refused."""
        from codec.diffvc.pack import installed_packs

        for pack in installed_packs():
            if pack.name == name:
                return pack
        raise UserError(f"no installed model pack is called {name!r}; choose one the list offers")

    def codec_rows(self) -> list[list[str]]:
        from codec.errors import CodecError
        from codec.registry import list_codecs, parse_options

        rows = []
        for entry in list_codecs():
            try:
                options = (
                    parse_options(entry.options_type, {"pack": self.config.pack}, entry.name)
                    if entry.takes_pack
                    else None
                )
                reason = entry.unavailable_reason(options)
            except CodecError as e:
                reason = str(e)
            pack = f" (pack {self.config.pack or 'default'})" if entry.takes_pack else ""
            rows.append([entry.name, ("usable" if reason is None else f"unusable: {reason}") + pack, entry.description])
        return rows

    # -- compare -----------------------------------------------------------------------------------------------

    def stop(self, session: str) -> str:
        with self._lock:
            event = self._stops.get(session)
        if event is not None:
            event.set()
        return "Stopping: the run ends at its next step."

    def compare(self, request: CompareRequest, state: SessionState, session: str, progress=None) -> CompareView:
        """Run (or fetch from disk) the comparison; the session now owns it."""
        from codec.eval.compare import CompareSettings, ComparisonStore

        deadline = time.monotonic() + self.config.time_limit_s
        video, source = self._load_clip(request.clip)
        settings = CompareSettings(
            qp=int(request.qp),
            tdir=bool(request.tdir),
            steps=int(request.steps),
            strength=float(request.strength),
            tdir_ratio=float(request.tdir_ratio),
            anchors=tuple(request.anchors),
            match_bitrate=bool(request.match_bitrate),
            tdir_contrast=bool(request.tdir_contrast),
            pack=self._installed_pack(request.pack).name if request.pack else self.config.pack,
            metrics=tuple(m for m in metric_names() if m in request.metrics),
            device=_metric_device(),
        )
        stop = threading.Event()
        with self._lock:
            self._stops[session] = stop
        try:
            with job_threads(self.config.threads, self.config.heavy_jobs):
                comparison = ComparisonStore(self.config.results_dir).run(
                    video,
                    settings,
                    source=source,
                    start=int(request.clip.start),
                    progress=(lambda f, d: progress(f, desc=d)) if progress else None,
                    stop=lambda: self._past(deadline) or stop.is_set(),
                )
        finally:
            with self._lock:
                self._stops.pop(session, None)
        if comparison.key in state.comparisons:
            state.comparisons.remove(comparison.key)
        state.comparisons.append(comparison.key)
        return self._compare_view(comparison)

    def _compare_view(self, comparison: Comparison) -> CompareView:
        runs = comparison.runs
        clip = comparison.clip
        how = (
            "from the cache (same clip and settings as an earlier run)"
            if comparison.cached
            else f"in {comparison.elapsed_s:.1f} s"
        )
        status = [
            f"**Done** {how}: {_escape(clip['source'] or 'clip')}, {clip['frames']} frames of "
            f"{clip['width']}x{clip['height']} from frame {clip['start']}."
        ]
        status += [f"- {_escape(note)}" for note in comparison.notes]
        codecs = [("original", "original"), *((run.label, run.slug) for run in runs)]
        return CompareView(
            key=comparison.key,
            status="\n".join(status),
            table=views.metrics_table(runs, clip["fps"]),
            timing=views.timing_table(runs),
            timing_figure=views.timing_figure(runs),
            stage_figure=views.stage_figure(runs),
            tdir=views.tdir_summary(runs),
            files=[str(p) for p in self._safe_files(comparison.files())],
            frames=int(clip["frames"]),
            codecs=codecs,
            per_frame_figure=views.per_frame_figure(runs, _first_metric(runs)),
            cached=comparison.cached,
            wipe=_first_wipe(runs),
            zoom_centre=views.textured_zoom_centre(comparison.frames()["original"][0], ZOOM),
        )

    def _past(self, deadline: float) -> bool:
        """False before `deadline`; after it, JobTimeLimit (the job's stop check calls this at every step)."""
        if time.monotonic() > deadline:
            raise JobTimeLimit(
                f"this job ran past the time limit of {self.config.time_limit_s:g} s and was stopped; "
                "nothing was kept. Try fewer frames, a smaller size cap or fewer anchors."
            )
        return False

    def _limits(self):
        """The reader's limits for one job: the library's, with this app's pixel budget and time limit."""
        from codec.video import DEFAULT_LIMITS

        return dataclasses.replace(
            DEFAULT_LIMITS,
            max_total_pixels=min(DEFAULT_LIMITS.max_total_pixels, self.config.max_pixels),
            max_decode_s=min(DEFAULT_LIMITS.max_decode_s, self.config.time_limit_s),
        )

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
            first = read_video(path, frames=1, limits=self._limits()).frames[0]
        except VideoError as e:
            return None, error_message(e)
        return first, (
            f"Your browser cannot play this file ({_escape(problem)}), so its first frame is shown here. "
            "The comparison reads the file itself."
        )

    def _load_clip(self, clip: ClipRequest):
        from codec.eval.compare import load_clip

        if not clip.path:
            raise UserError("Choose a clip first: upload one, or pick the example below the upload box.")
        path = Path(clip.path)
        video = load_clip(
            path, start=int(clip.start), frames=int(clip.frames), max_side=int(clip.max_side), limits=self._limits()
        )
        return video, _display_name(path.name)

    def _safe_files(self, paths: list[Path]) -> list[Path]:
        """Only existing files inside the app's own folders are ever handed out for download."""
        roots = [self.config.results_dir.resolve(), self.config.sessions_dir.resolve()]
        safe = []
        for path in paths:
            real = path.resolve()
            if real.is_file() and any(real.is_relative_to(root) for root in roots):
                safe.append(real)
        return safe

    def _comparison(self, key: str, state: SessionState) -> Comparison:
        if key not in state.comparisons:
            raise UserError("Run a comparison first: this session has none to show.")
        comparison = _load_comparison(self.config.results_dir, key)
        if comparison is None:
            raise UserError("This comparison is no longer on disk; run it again.")
        return comparison

    def per_frame_figure(self, key: str, metric: str, state: SessionState):
        comparison = self._comparison(key, state)
        return views.per_frame_figure(comparison.runs, metric)

    def frame_view(self, request: FrameRequest, state: SessionState) -> FrameView:
        comparison = self._comparison(request.key, state)
        frames = _load_frames(self.config.results_dir, request.key)
        labels = {"original": "original", **{run.slug: run.label for run in comparison.runs}}
        t = int(np.clip(request.frame, 0, frames["original"].shape[0] - 1))
        for slug in (request.left, request.right, request.heat):
            if slug not in frames:
                raise UserError(f"no codec {slug!r} in this comparison")
        rows = {run.slug: run.row for run in comparison.runs}

        def caption(slug: str) -> str:
            if slug == "original":
                return f"original, frame {t}"
            row = rows[slug]
            psnr = row.per_frame.get("psnr", [None] * (t + 1))[t]
            extra = f", {psnr:.2f} dB" if psnr is not None else ""
            return f"{labels[slug]}: {row.bpp:.4f} bpp, {row.frame_bits[t]} bits{extra}"

        tiles = [(caption(slug), frames[slug][t]) for slug in labels]
        zoom_tiles = [
            (labels[slug], views.zoomed(frames[slug][t], request.cx, request.cy, request.zoom)) for slug in labels
        ]
        zoom_tiles[0] = (
            "original (window in yellow)",
            views.mark_box(frames["original"][t], request.cx, request.cy, request.zoom),
        )
        zoom_tiles.insert(
            1, ("original, zoomed", views.zoomed(frames["original"][t], request.cx, request.cy, request.zoom))
        )
        types = next(iter(rows.values())).frame_types if rows else ""
        ftype = types[t] if t < len(types) else "?"
        return FrameView(
            side_by_side=views.grid(tiles, columns=3),
            wipe=(frames[request.left][t], frames[request.right][t]),
            zoom=views.grid(zoom_tiles, columns=3),
            heatmap=views.captioned(
                views.enlarged(views.error_heatmap(frames["original"][t], frames[request.heat][t])),
                f"|{labels[request.heat]} - original|, 0 (black) .. 64+ (yellow)",
            ),
            caption=f"Frame {t} ({ftype}-frame). Wipe: **{_escape(labels[request.left])}** (left) | "
            f"**{_escape(labels[request.right])}** (right).",
        )

    def api_compare(self, video: str, qp: int, tdir: bool, frames: int) -> list[dict[str, Any]]:
        """The `/compare` API: DiffVC at `qp` (TDIR on/off) against x265 at matched bitrate, on `frames` frames;
        returns the results rows (one per codec, rates from the bitstreams' bytes)."""
        state = SessionState()
        request = CompareRequest(
            ClipRequest(video, 0, int(frames), DEFAULT_MAX_SIDE),
            qp=int(qp),
            tdir=bool(tdir),
            anchors=("x265",),
            tdir_contrast=False,
        )
        view = self.compare(request, state, session=f"api-{threading.get_ident()}")
        comparison = _load_comparison(self.config.results_dir, view.key)
        return [{**_api_row(run), "cached": view.cached} for run in comparison.runs]

    # -- rate-distortion ---------------------------------------------------------------------------------------

    def sweep(self, request: SweepRequest, state: SessionState, session: str, progress=None) -> SweepView:
        from codec.eval.compare import run_sweep
        from codec.eval.report import bd_rate_table, metrics_present, rd_figure

        if not request.codecs:
            raise UserError("Choose at least one codec for the sweep.")
        deadline = time.monotonic() + self.config.time_limit_s
        video, source = self._load_clip(request.clip)
        anchor_qps, neural_qps = _qps(request.anchor_qps, "anchor"), _qps(request.neural_qps, "DiffVC / condlc")
        plans = [
            self._sweep_plan(name, request, anchor_qps, neural_qps) for name in sweep_codecs() if name in request.codecs
        ]
        out = self._session_dir(session) / f"sweep-{len(list(self._session_dir(session).glob('sweep-*'))) + 1}"
        metrics = tuple(m for m in metric_names() if m in request.metrics) or metric_names()
        with job_threads(self.config.threads, self.config.heavy_jobs):
            rows, paths = run_sweep(
                video,
                plans,
                out,
                self.config.eval_cache,
                source=source,
                start=int(request.clip.start),
                metrics=metrics,
                device=_metric_device(),
                progress=lambda f, d: (self._past(deadline), progress and progress(f, desc=d)),
            )
        state.sweep_dir = str(out)
        present = metrics_present(rows)
        table = bd_rate_table(rows, present)
        columns = ["spec", "qp", "bpp", *present, "enc_fps", "dec_fps"]
        from codec.eval.report import results_frame

        results = results_frame(rows)[columns].round(4)
        first = plans[0].name
        status = (
            f"**Done**: {len(rows)} points on {_escape(source)} ({video.num_frames} frames of "
            f"{video.width}x{video.height}); BD-rate against {first} (negative = fewer bits for the same "
            f"quality) and bits relative to {first} at equal quality (read off {first}'s curve; 6.00 = 6x its "
            "bits), with why either is missing in the table's notes. Points computed before came from the "
            "cache."
        )
        return SweepView(
            status=status,
            figure=rd_figure(rows, present[0]),
            bd_table=views.bd_rate_view(table),
            results=results,
            files=[str(p) for p in self._safe_files([paths["html"], paths["csv"], paths["bdrate"]])],
            metrics=present,
        )

    def sweep_figure(self, metric: str, state: SessionState):
        from codec.errors import RowSchemaError
        from codec.eval.report import rd_figure, read_results_json

        if not state.sweep_dir:
            raise UserError("Run a sweep first.")
        try:
            rows = read_results_json(Path(state.sweep_dir) / "results.json")
        except RowSchemaError:
            raise UserError("This sweep was written by an older version of the studio; run it again.") from None
        return rd_figure(rows, metric)

    def _session_dir(self, session: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_-]", "", session)[:64] or "anonymous"
        folder = self.config.sessions_dir / safe
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- blind test --------------------------------------------------------------------------------------------

    def new_pair(self, state: SessionState, show_reference: bool) -> PairView:
        """A random pair at matched bitrate from this session's comparisons; the names stay in `state`."""
        candidates = []
        for key in state.comparisons:
            comparison = _load_comparison(self.config.results_dir, key)
            if comparison is None:
                continue
            candidates += [
                Candidate(
                    key,
                    comparison.clip["hash"],
                    run.slug,
                    run.label,
                    run.row.bpp,
                    run.row.frames,
                    under_test=run.role in ("diffvc", "contrast"),
                )
                for run in comparison.runs
            ]
        if not state.comparisons:
            raise UserError("Run a comparison first (Compare tab): the pairs come from this session's comparisons.")
        pair = draw_pair(candidates)
        if pair is None:
            raise UserError(
                "No two codecs of your comparisons are at matched bitrate (within 25 %). Run a "
                "comparison with *match bitrate* on, or with *TDIR flipped* for a TDIR on/off pair."
            )
        frames = _load_frames(self.config.results_dir, pair.comparison)
        state.pair, state.pair_reference = pair, bool(show_reference)
        return PairView(
            status=f"Frame {pair.frame} of one of your clips. Which looks better, **A** or **B**? "
            "(Both cost about the same bits.)",
            a=views.enlarged(frames[pair.slug_a][pair.frame], PAIR_WIDTH),
            b=views.enlarged(frames[pair.slug_b][pair.frame], PAIR_WIDTH),
            reference=views.enlarged(frames["original"][pair.frame], PAIR_WIDTH) if show_reference else None,
        )

    def vote(self, request: VoteRequest, state: SessionState, session: str) -> str:
        pair = state.pair
        if pair is None:
            raise UserError("Draw a pair first (New pair); each pair takes one vote.")
        vote_id = self.blind.record(pair, request.choice, request.rater, session, state.pair_reference, request.comment)
        state.pair = None
        picked = {"A": f"A ({pair.label_a})", "B": f"B ({pair.label_b})", "tie": "a tie"}[request.choice]
        return (
            f"Vote {vote_id} counted: you chose {_escape(picked)}. **A was {_escape(pair.label_a)}** "
            f"({pair.bpp_a:.4f} bpp), **B was {_escape(pair.label_b)}** ({pair.bpp_b:.4f} bpp). "
            "Draw a new pair to go on."
        )

    def blind_results(self) -> pd.DataFrame:
        rows = [s.as_row() for s in self.blind.stats()]
        if not rows:
            return pd.DataFrame({"pair": ["no votes yet"]})
        return pd.DataFrame(rows).fillna(0)

    def export_votes(self, session: str) -> str:
        return str(self.blind.export_csv(self._session_dir(session) / "blind-votes.csv"))


# --- helpers ---------------------------------------------------------------------------------------------------


def _load_comparison(root: Path, key: str) -> Comparison | None:
    from codec.eval.compare import ComparisonStore

    return ComparisonStore(root).get(key)


@lru_cache(maxsize=4)
def _load_frames(root: Path, key: str) -> dict[str, np.ndarray]:
    comparison = _load_comparison(root, key)
    if comparison is None:
        raise UserError("This comparison is no longer on disk; run it again.")
    return comparison.frames()


def anchor_choices() -> tuple[str, ...]:
    """The codecs a comparison can put beside DiffVC (every registered one but DiffVC, classical ones first)."""
    from codec.registry import comparison_anchors

    return comparison_anchors()


def sweep_codecs() -> tuple[str, ...]:
    """The codecs an RD sweep offers, in the order it runs them: the classical anchors first (BD-rates are
    against the first one chosen), then the neural codecs."""
    from codec.registry import codec_names

    return codec_names("anchor") + codec_names("neural")


def _metric_device() -> str:
    """Where the metrics run: the GPU when there is one (the neural codecs pick theirs with device=auto)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _first_wipe(runs) -> tuple[str, str]:
    """What the viewer first shows: DiffVC against its own codec without the diffusion stage (condlc) when the
    comparison has it, so that the first look is at what the stage does; else against the original."""
    slugs = [run.slug for run in runs]
    right = slugs[0] if slugs else "original"
    return ("condlc" if "condlc" in slugs and right != "condlc" else "original"), right


def _first_metric(runs) -> str:
    for metric in (*perceptual_metrics(), *metric_names()):
        if all(run.row.metrics.get(metric) is not None for run in runs):
            return metric
    return "psnr"


def _api_row(run) -> dict[str, Any]:
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


def _positive(environ, name: str, default, kind):
    text = (environ.get(name) or "").strip()
    if not text:
        return default
    try:
        value = kind(float(text))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {text!r}")
    return value


def _display_name(name: str) -> str:
    """A file name safe to show (the name is never used as a path)."""
    return re.sub(r"[^\w.\- ()]", "_", name)[:80]


def _escape(text: str) -> str:
    """Markdown/HTML-inert text."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", str(text))
