"""What the app's handlers share: the configuration, the clip reader under the app's limits, heavy jobs (time limit,
threads), per-session folders, safe downloads, and the comparisons on hand.

Per-session data lives in `SessionState` (a `gr.State`, kept on the server): the comparisons this session ran,
its blind pair, its sweep. A session can only view, pair or download comparisons it ran itself, and downloads are
only ever paths inside the app's own result folders.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.blind import BlindPair
from codec.threads import JobCores, job_cores

if TYPE_CHECKING:
    from codec.eval.compare import Comparison
    from codec.video import Video, VideoLimits

DEFAULT_FRAMES = 16
DEFAULT_MAX_SIDE = 256
DEFAULT_TIME_LIMIT_S = 900.0  # per heavy job (comparison, sweep); DIFFVC_STUDIO_TIME_LIMIT
DEFAULT_MAX_PIXELS = 40_000_000  # frames x width x height of a job's clip after the size cap; DIFFVC_STUDIO_MAX_PIXELS
COMPARISONS_IN_MEMORY = 4  # comparisons (rows and decoded frames) kept for the viewer, the charts and the blind test


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
    lanes: int | None = None  # 1: a job's steps in turn; 2: metrics beside codings; None: as codec.threads decides

    @classmethod
    def from_env(cls, environ: dict[str, str], repo: Path) -> StudioConfig:
        """DIFFVC_STUDIO_PACK, DIFFVC_STUDIO_DATA (default: <cache root>/studio), DIFFVC_STUDIO_TIME_LIMIT (seconds
        per heavy job, default 900), DIFFVC_STUDIO_MAX_PIXELS (frames x width x height per job, default 4e7),
        DIFFVC_STUDIO_JOBS (heavy jobs at once, default 1), DIFFVC_STUDIO_THREADS (torch threads per heavy job,
        default: the cores idle when it starts), DIFFVC_STUDIO_LANES (1: a job's steps in turn, 2: its metrics
        beside its codings; default: 2 where the second core is only partly busy when it starts)."""
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
            lanes=_lanes(environ),
        )


@dataclass
class SessionState:
    """What one browser session owns. Kept server-side in a gr.State."""

    comparisons: list[str] = field(default_factory=list)  # comparison keys, oldest first
    pair: BlindPair | None = None
    pair_reference: bool = False
    sweep_dir: str | None = None


@dataclass(frozen=True)
class ClipRequest:
    path: str | None  # the uploaded file as Gradio stored it (never a path built from its name)
    start: int = 0
    frames: int = DEFAULT_FRAMES
    max_side: int = DEFAULT_MAX_SIDE


@dataclass
class HeavyJob:
    """One comparison or sweep, from the moment its request arrives: stopped at its next step once past the time
    limit (JobTimeLimit) or once `stop_pressed` is set; `running()` puts it on its torch threads."""

    time_limit_s: float
    threads: int | None  # None: the cores idle when it starts (codec.threads)
    jobs: int  # heavy jobs that may run at once
    lanes: int | None = None  # None: two where the second core is only partly busy (codec.threads)
    began: float = field(default_factory=time.monotonic)
    stop_pressed: threading.Event = field(default_factory=threading.Event)

    def stopped(self) -> bool:
        """The job's stop check, made at every step: False to go on, True once stopped; JobTimeLimit past it."""
        if time.monotonic() > self.began + self.time_limit_s:
            raise JobTimeLimit(
                f"this job ran past the time limit of {self.time_limit_s:g} s and was stopped; "
                "nothing was kept. Try fewer frames, a smaller size cap or fewer anchors."
            )
        return self.stop_pressed.is_set()

    def running(self) -> AbstractContextManager[JobCores]:
        return job_cores(self.threads, self.jobs, self.lanes)


class RecentComparisons:
    """The comparisons this app ran or read back lately, with their decoded frames, so that the viewer, the charts,
    the blind test and the API read them from memory; the least recently used beyond `size` go, and are read back
    from the store (comparison.json, frames.npz) when asked for again."""

    def __init__(self, root: Path, size: int = COMPARISONS_IN_MEMORY) -> None:
        self.root, self.size = root, size
        self._kept: OrderedDict[str, Comparison] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, comparison: Comparison) -> None:
        with self._lock:
            self._kept[comparison.key] = comparison
            self._kept.move_to_end(comparison.key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)

    def get(self, key: str) -> Comparison | None:
        """The comparison of that key, from memory, else from the store (then kept); None when it is on neither."""
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        from codec.eval.compare import ComparisonStore

        comparison = ComparisonStore(self.root).get(key)
        if comparison is not None:
            self.keep(comparison)
        return comparison


class Workspace:
    """The configuration and what every handler does with it: read a clip under the app's limits, start a heavy
    job, give a session its folder, hand out downloads, and find a session's comparisons."""

    def __init__(self, config: StudioConfig) -> None:
        self.config = config
        self.comparisons = RecentComparisons(config.results_dir)

    def limits(self) -> VideoLimits:
        """The reader's limits for one job: the library's, with this app's pixel budget and time limit."""
        from codec.video import DEFAULT_LIMITS

        return dataclasses.replace(
            DEFAULT_LIMITS,
            max_total_pixels=min(DEFAULT_LIMITS.max_total_pixels, self.config.max_pixels),
            max_decode_s=min(DEFAULT_LIMITS.max_decode_s, self.config.time_limit_s),
        )

    def load_clip(self, clip: ClipRequest) -> tuple[Video, str]:
        """(the clip, a name for it safe to show): read once, resized to the size cap."""
        from codec.eval.compare import load_clip

        if not clip.path:
            raise UserError("Choose a clip first: upload one, or pick the example below the upload box.")
        path = Path(clip.path)
        video = load_clip(
            path, start=int(clip.start), frames=int(clip.frames), max_side=int(clip.max_side), limits=self.limits()
        )
        return video, display_name(path.name)

    def heavy_job(self) -> HeavyJob:
        """A comparison or sweep starting now, under the configured time limit, threads and number of jobs."""
        config = self.config
        return HeavyJob(config.time_limit_s, config.threads, config.heavy_jobs, config.lanes)

    def session_dir(self, session: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_-]", "", session)[:64] or "anonymous"
        folder = self.config.sessions_dir / safe
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def safe_files(self, paths: list[Path]) -> list[Path]:
        """Only existing files inside the app's own folders are ever handed out for download."""
        roots = [self.config.results_dir.resolve(), self.config.sessions_dir.resolve()]
        safe = []
        for path in paths:
            real = path.resolve()
            if real.is_file() and any(real.is_relative_to(root) for root in roots):
                safe.append(real)
        return safe

    def owned(self, state: SessionState) -> Iterator[Comparison]:
        """The comparisons of this session still on hand, oldest first."""
        for key in state.comparisons:
            comparison = self.comparisons.get(key)
            if comparison is not None:
                yield comparison

    def comparison(self, key: str, state: SessionState) -> Comparison:
        """A comparison this session ran; UserError for any other key."""
        if key not in state.comparisons:
            raise UserError("Run a comparison first: this session has none to show.")
        comparison = self.comparisons.get(key)
        if comparison is None:
            raise UserError("This comparison is no longer on disk; run it again.")
        return comparison


def metric_device() -> str:
    """Where the metrics run: the GPU when there is one (the neural codecs pick theirs with device=auto)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def display_name(name: str) -> str:
    """A file name safe to show (the name is never used as a path)."""
    return re.sub(r"[^\w.\- ()]", "_", name)[:80]


def escape(text: str) -> str:
    """Markdown/HTML-inert text."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", str(text))


def _lanes(environ) -> int | None:
    lanes = _positive(environ, "DIFFVC_STUDIO_LANES", None, int)
    if lanes not in (None, 1, 2):
        raise ValueError(f"DIFFVC_STUDIO_LANES must be 1 or 2, got {lanes}")
    return lanes


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
