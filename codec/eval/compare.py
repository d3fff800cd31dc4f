"""One comparison on one clip: DiffVC against anchors at matched bitrate, written to a result folder.

This is what the app's Compare tab runs, as a library:

    video = load_clip(path, start=0, frames=16, max_side=256)
    store = ComparisonStore(cache_root() / "studio" / "comparisons")
    comparison = store.run(video, CompareSettings(qp=32, anchors=("x265",)), source="clip.mp4")
    comparison.runs[0].row.bpp, comparison.files()          # ResultRows as engine.measure makes them; downloads

* Every codec goes through `engine.measure` (rate from the bitstream's bytes, quality from the decoder's output,
  encode and decode timed apart after `engine.warm_up`).
* "Match bitrate" (`match_bitrate`): an anchor is encoded at the QP (or CRF, per its `rc` option) whose rate is
  closest to DiffVC's, found by bisection over the anchor's QP range (rate falls with QP), so what is shown side by
  side costs the same bits. Where the anchor cannot reach the target, the closest end is used and a note says so.
* A comparison's folder holds each bitstream, each decoded clip (mp4), results.csv/json, comparison.json and the
  decoded frames (frames.npz, for the frame viewer). Folders are named by a key over the clip's content hash, the
  settings and the model pack's identity, so the same request is answered from disk; a folder appears whole
  (written aside, then renamed) or not at all. File names come from fixed codec slugs, never from user input.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import CodecError, VideoError
from codec.eval.cache import cache_key
from codec.eval.engine import (
    Coding,
    EvalRequest,
    LocalRunner,
    Measurement,
    ScoringLane,
    TimedEncode,
    code,
    evaluate,
    score,
    timed_encode,
    warm_up,
)
from codec.eval.rows import ResultRow
from codec.metrics import metric_names, metrics_for_size
from codec.progress import frame_progress
from codec.registry import VideoCodec, comparison_anchors, get_entry
from codec.video import DEFAULT_LIMITS, Video, VideoLimits, read_video

MATCH_TOLERANCE = 0.25  # a match within +-25 % of the target rate counts as reached
MAX_FRAMES = 128
MAX_SIDE_RANGE = (32, 1920)
COMPARISON_FILE = "comparison.json"
FRAMES_FILE = "frames.npz"
SCHEMA = 2  # 2: each run's row is a `ResultRow.to_dict`

Progress = Callable[[float, str], None]  # (fraction done 0..1, what is running)
StopCheck = Callable[[], bool]  # True when the user asked to stop


class ComparisonCancelled(CodecError):
    """The user stopped a comparison; nothing was written."""


# --- the clip -------------------------------------------------------------------------------------------------


def capped_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(W, H) scaled down (never up) so that the longer side is at most `max_side`; both even, at least 2."""
    scale = min(1.0, max_side / max(width, height))
    return tuple(max(2, 2 * round(v * scale / 2)) for v in (width, height))  # type: ignore[return-value]


def load_clip(
    path: str | Path, start: int = 0, frames: int = 16, max_side: int = 256, limits: VideoLimits = DEFAULT_LIMITS
) -> Video:
    """`frames` frames from frame `start` of a video file, resized so that its longer side is at most `max_side`.

    Raises VideoError (a message for a person) on a file that is not a readable video, or out-of-range settings.
    """
    if not 1 <= frames <= MAX_FRAMES:
        raise VideoError(f"number of frames must be 1..{MAX_FRAMES}, got {frames}")
    if not MAX_SIDE_RANGE[0] <= max_side <= MAX_SIDE_RANGE[1]:
        raise VideoError(f"size cap must be {MAX_SIDE_RANGE[0]}..{MAX_SIDE_RANGE[1]} pixels, got {max_side}")
    # one pass: the first frame's size (the source's, up to 8K) sets the size cap's, then every frame is resized
    return read_video(path, start=start, frames=frames, limits=limits, fit=lambda w, h: capped_size(w, h, max_side))


# --- settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareSettings:
    """What a comparison runs. DiffVC's options left at 0 / -1 take the model pack's defaults.

    anchors: names of registered codecs other than DiffVC (`comparison_anchors`). match_bitrate: search each
    anchor's QP for DiffVC's rate (else the anchors run at `qp`, clipped to their range). tdir_contrast: also run
    DiffVC with TDIR flipped (time and quality of TDIR on against off). pack: the DiffVC model pack ("" = the
    default pack, "random-tiny" = random init). filter: DiffVC's stage filter for the stream (`DiffVCOptions.filter`:
    "0" as trained, "-1" the stage off, "auto" the encoder's pick of four strengths).
    """

    qp: int = 32
    tdir: bool = True
    steps: int = 0
    strength: float = -1.0
    tdir_ratio: float = -1.0
    anchors: tuple[str, ...] = ("x265",)
    match_bitrate: bool = True
    tdir_contrast: bool = True
    intra_period: int = 32
    pack: str = ""
    filter: str = "0"
    metrics: tuple[str, ...] = field(default_factory=metric_names)
    device: str = "cpu"  # where metrics run (the neural codecs pick their own device)

    def __post_init__(self) -> None:
        known = comparison_anchors()
        unknown = [a for a in self.anchors if a not in known]
        if unknown:
            raise CodecError(f"unknown anchor(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        if not self.metrics:
            raise CodecError("choose at least one metric")

    def diffvc_options(self, tdir: bool | None = None) -> dict[str, Any]:
        return {
            "pack": self.pack,
            "tdir": self.tdir if tdir is None else tdir,
            "steps": self.steps,
            "strength": self.strength,
            "tdir_ratio": self.tdir_ratio,
            "intra_period": self.intra_period,
            "filter": self.filter,
        }

    def anchor_options(self, name: str) -> dict[str, Any]:
        """The anchor's options: the comparison's intra period, and its model pack where it takes one."""
        pack = {"pack": self.pack} if get_entry(name).takes_pack else {}
        return {**pack, "intra_period": self.intra_period}


# --- bitrate matching -----------------------------------------------------------------------------------------


@dataclass
class BitrateMatch:
    """The QP of an anchor whose rate is closest to `target_bpp` (in log-rate), and every QP tried on the way."""

    qp: int
    bpp: float
    target_bpp: float
    tried: list[tuple[int, float]]

    @property
    def reached(self) -> bool:
        return abs(math.log(self.bpp / self.target_bpp)) <= math.log1p(MATCH_TOLERANCE)


def match_bitrate(
    codec,
    video: Video,
    target_bpp: float,
    stop: StopCheck | None = None,
    on_try: Callable[[int, float], None] | None = None,
    encodes: dict[int, TimedEncode] | None = None,
) -> BitrateMatch:
    """Bisect `codec`'s QP range for the rate closest to `target_bpp` (bpp from the bitstream's bytes).

    Assumes the rate does not rise with QP (true of every registered codec's rate control). About
    log2(range) + 2 encodes: 8 for x265's 0..51. `encodes`, when given, receives each QP's timed encode, so the
    chosen one need not run again.
    """
    if not target_bpp > 0:
        raise CodecError(f"cannot match a rate of {target_bpp} bpp")
    probe = _RateProbe(codec, video, stop, on_try, encodes)
    qp = closest_qp(probe.bpp, codec.qp_range, target_bpp)
    return BitrateMatch(qp, probe.rates[qp], target_bpp, sorted(probe.rates.items()))


def closest_qp(bpp: Callable[[int], float], qp_range: tuple[int, int], target_bpp: float) -> int:
    """The QP in `qp_range` (inclusive) whose rate bpp(qp) is closest to `target_bpp` in log-rate, by bisection
    (the rate must not rise with QP); an end of the range where the target lies beyond it."""
    lo, hi = qp_range
    if bpp(hi) >= target_bpp:
        return hi  # even the coarsest QP spends more than the target
    if bpp(lo) <= target_bpp:
        return lo  # even the finest QP spends less
    while hi - lo > 1:  # invariant: bpp(lo) > target > bpp(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if bpp(mid) > target_bpp else (lo, mid)
    return min((lo, hi), key=lambda q: abs(math.log(bpp(q) / target_bpp)))


class _RateProbe:
    """A codec's rate on a clip by QP, each QP encoded once (`rates`); checks `stop` before each encode, reports it
    to `on_try` and keeps it in `encodes` where given."""

    def __init__(
        self,
        codec,
        video: Video,
        stop: StopCheck | None,
        on_try: Callable[[int, float], None] | None,
        encodes: dict[int, TimedEncode] | None,
    ) -> None:
        self.codec, self.video, self.stop, self.on_try, self.encodes = codec, video, stop, on_try, encodes
        self.rates: dict[int, float] = {}

    def bpp(self, qp: int) -> float:
        if qp not in self.rates:
            if self.stop and self.stop():
                raise ComparisonCancelled("stopped")
            timed = timed_encode(self.codec, self.video, qp)
            if self.encodes is not None:
                self.encodes[qp] = timed
            self.rates[qp] = timed[0].bpp(self.video)
            if self.on_try:
                self.on_try(qp, self.rates[qp])
        return self.rates[qp]


# --- results --------------------------------------------------------------------------------------------------


@dataclass
class CodecRun:
    """One codec's part of a comparison. slug: a fixed file-name-safe id; row: `engine.measure`'s row."""

    slug: str
    label: str
    role: str  # "diffvc", "contrast" (DiffVC with TDIR flipped) or "anchor"
    row: ResultRow
    bitstream_file: str
    decoded_file: str
    match: dict[str, Any] | None = None  # asdict(BitrateMatch) plus "reached"

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "row": self.row.to_dict()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CodecRun:
        return cls(**{**data, "row": ResultRow.from_dict(data["row"])})


@dataclass
class Comparison:
    """A finished comparison in its folder. clip: source name, start, frames, width, height, fps, hash."""

    key: str
    folder: Path
    clip: dict[str, Any]
    settings: dict[str, Any]
    runs: list[CodecRun]
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cached: bool = False
    decoded: dict[str, np.ndarray] | None = field(default=None, repr=False)  # the frames, while in memory

    @property
    def rows(self) -> list[ResultRow]:
        return [run.row for run in self.runs]

    def run(self, slug: str) -> CodecRun:
        for run in self.runs:
            if run.slug == slug:
                return run
        raise CodecError(f"no codec {slug!r} in this comparison")

    def files(self) -> list[Path]:
        """The downloads: each bitstream and decoded mp4, results.csv and results.json."""
        names = [n for run in self.runs for n in (run.bitstream_file, run.decoded_file)]
        return [self.folder / n for n in [*names, "results.csv", "results.json"]]

    def frames(self) -> dict[str, np.ndarray]:
        """'original' and each run's slug -> decoded frames uint8 [T, H, W, 3]: those of the run that just made
        the comparison, else read from its folder once."""
        if self.decoded is None:
            with np.load(self.folder / FRAMES_FILE) as data:
                self.decoded = {name: data[name] for name in data.files}
        return self.decoded

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "key": self.key,
            "clip": self.clip,
            "settings": self.settings,
            "runs": [r.to_json() for r in self.runs],
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def load(cls, folder: Path) -> Comparison:
        data = json.loads((folder / COMPARISON_FILE).read_text())
        if data.get("schema") != SCHEMA:
            raise CodecError(f"{folder}: comparison of another schema")
        return cls(
            data["key"],
            folder,
            data["clip"],
            data["settings"],
            [CodecRun.from_json(r) for r in data["runs"]],
            data["notes"],
            data["elapsed_s"],
            cached=True,
        )


class ComparisonStore:
    """A folder of comparisons, one sub-folder per key; `run` answers a repeated request from disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        if not key.isalnum():
            raise CodecError("bad comparison key")
        return self.root / key

    def get(self, key: str) -> Comparison | None:
        try:
            return Comparison.load(self.folder(key))
        except (OSError, ValueError, KeyError, TypeError, CodecError):
            return None

    def run(
        self,
        video: Video,
        settings: CompareSettings,
        source: str = "",
        start: int = 0,
        progress: Progress | None = None,
        stop: StopCheck | None = None,
        lanes: int = 1,
    ) -> Comparison:
        """The comparison of `video` under `settings`: from disk when done before, else run and stored. `lanes` 2:
        each codec's metrics run on a second thread while the next codec codes (`codec.threads.JobCores`); the
        rows are the same, the codecs' timings taken beside that work."""
        under_test = build_under_test(settings)
        clip = _clip_record(video, source, start, video.content_hash())
        key = _comparison_key(clip, settings, under_test)
        done = self.get(key)
        if done is not None:
            done.clip["source"] = source or done.clip.get("source", "")
            return done
        job = ComparisonJob(video, clip, settings, under_test, key, lanes)
        return self._run_and_keep(job, _Steps(progress, stop))

    def _run_and_keep(self, job: ComparisonJob, steps: _Steps) -> Comparison:
        """Run `job` in a work folder, then rename it to the key's: a folder appears whole or not at all."""
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".run-", dir=self.root))
        try:
            comparison = _run(job, work, steps)
            target = self.folder(job.key)
            try:
                work.rename(target)
            except OSError:  # another session finished the same comparison first: keep theirs
                pass
            comparison.folder = target
            return comparison
        finally:
            shutil.rmtree(work, ignore_errors=True)


# --- what a comparison runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnderTest:
    """DiffVC as a comparison runs it, built once: the codec and its identity (model pack, format, encoder), or
    None and why it cannot run here."""

    codec: VideoCodec | None
    identity: str = ""
    reason: str | None = None


_MODEL_BUILD = threading.Lock()


def build_under_test(settings: CompareSettings) -> UnderTest:
    """DiffVC with the comparison's options. Loads the model pack on first use, one thread at a time: a random-init
    pack draws its weights from torch's global generator, and two threads building it at once interleave their
    draws into two different models (measured: three builds, three hashes), whose bitstreams then differ and name a
    pack no other process has."""
    with _MODEL_BUILD:
        codec, reason = _build("diffvc", settings.diffvc_options())
        return UnderTest(codec, codec.identity() if codec else "", reason)  # type: ignore[attr-defined]


def diffvc_identity(settings: CompareSettings) -> tuple[str | None, str]:
    """(why DiffVC cannot run, or None; its identity: pack hash and options); loads the model pack on first use."""
    under_test = build_under_test(settings)
    return under_test.reason, under_test.identity


@dataclass(frozen=True)
class PlannedRun:
    """One codec of a comparison, built. slug: a fixed file-name-safe id; role: "diffvc", "contrast" (DiffVC with
    TDIR flipped) or "anchor"."""

    slug: str
    label: str
    role: str
    codec: VideoCodec


@dataclass(frozen=True)
class ComparisonJob:
    """One comparison to run: the clip and its record (`_clip_record`), the settings, DiffVC built, the key."""

    video: Video
    clip: dict[str, Any]
    settings: CompareSettings
    under_test: UnderTest
    key: str
    lanes: int = 1  # 2: metrics beside the next codec's coding (`ScoringLane`)


class _Steps:
    """A comparison's progress, in steps of about equal time (each codec: warm-up, encode, decode, metrics), and
    the stop check made at each step."""

    def __init__(self, progress: Progress | None, stop: StopCheck | None) -> None:
        self.progress, self.stop = progress, stop
        self.total, self.done = 1.0, 0.0

    def report(self, advance: float, what: str) -> None:
        if self.stop and self.stop():
            raise ComparisonCancelled("stopped")
        self.done += advance
        if self.progress:
            self.progress(min(self.done / self.total, 0.999), what)

    def finish(self) -> None:
        if self.progress:
            self.progress(1.0, "done")


def _options(name: str, values: dict[str, Any]):
    from codec.registry import parse_options

    return parse_options(get_entry(name).options_type, values, name)


def _codec(name: str, values: dict[str, Any]) -> VideoCodec:
    from codec.registry import get_codec

    return get_codec(name, **values)


def _build(name: str, values: dict[str, Any]) -> tuple[VideoCodec | None, str | None]:
    """(the codec, None), or (None, why it cannot run here): its options parsed and checked once."""
    entry = get_entry(name)
    options = _options(name, values)
    reason = entry.unavailable_reason(options)
    return (None, reason) if reason else (entry.cls(options), None)


def _clip_record(video: Video, source: str, start: int, clip_hash: str) -> dict[str, Any]:
    return {
        "source": source,
        "start": start,
        "frames": video.num_frames,
        "width": video.width,
        "height": video.height,
        "fps": str(Fraction(video.fps)),
        "hash": clip_hash,
    }


def _comparison_key(clip: dict[str, Any], settings: CompareSettings, under_test: UnderTest) -> str:
    """The comparison's folder name: the clip's content, where it starts, the settings and DiffVC's identity."""
    return cache_key(
        kind="comparison",
        clip=clip["hash"],
        start=clip["start"],
        settings=asdict(settings),
        identity=under_test.identity,
        diffvc_unavailable=under_test.reason,
    )[:32]


def _on(flag: bool) -> str:
    return "on" if flag else "off"


# --- running it -----------------------------------------------------------------------------------------------


def _run(job: ComparisonJob, folder: Path, steps: _Steps) -> Comparison:
    """Every codec of the comparison in turn, DiffVC first (the anchors match its rate); files into `folder`. Each
    coding's metrics go to the scoring lane, which runs them in turn or beside the next codec's coding."""
    began = time.perf_counter()
    metrics, notes = metrics_for_size(job.settings.metrics, job.video.width, job.video.height)
    lineup = _lineup(job, notes)
    if job.lanes > 1:
        notes.append(
            "Each codec's metrics ran on a second core while the next codec coded (two lanes, as the idle cores "
            "allowed): its timings were taken beside that work."
        )
    steps.total = len(lineup) * 4.0  # warm-up + encode + decode + metrics, about equal shares per codec
    runs: list[CodecRun] = []
    decoded: dict[str, np.ndarray] = {"original": job.video.frames}
    target = None  # DiffVC's rate, once it has run

    def scored(planned: PlannedRun, match: BitrateMatch | None, result: Measurement) -> None:
        steps.report(1, f"{planned.label}: done, {result.row.bpp:.4f} bpp")
        runs.append(_write_run(job, planned, result, match, folder))
        decoded[planned.slug] = result.decoded.frames

    with ScoringLane(beside=job.lanes > 1) as lane:
        for planned in lineup:
            qp, coding, match = _code(job, planned, target, steps)
            if planned.role == "diffvc":
                target = coding.encoded.bpp(job.video)
            notes += _match_notes(planned, match)
            lane.submit(
                functools.partial(_score, job, planned, qp, coding, metrics),
                functools.partial(scored, planned, match),
            )
            lane.deliver_done()
        lane.deliver_all()
    elapsed = time.perf_counter() - began
    settings = _jsonable(asdict(job.settings))
    comparison = Comparison(job.key, folder, job.clip, settings, runs, notes, elapsed, decoded=decoded)
    _write_results(comparison)
    steps.finish()
    return comparison


def _lineup(job: ComparisonJob, notes: list[str]) -> list[PlannedRun]:
    """The codecs to run, built: DiffVC (and DiffVC with TDIR flipped) where it can run, then each anchor that can;
    a note for each that cannot."""
    settings, under_test = job.settings, job.under_test
    lineup: list[PlannedRun] = []
    if under_test.codec is None:
        notes.append(
            f"DiffVC did not run: {under_test.reason}. The anchors ran at QP {settings.qp} (clipped to each "
            "codec's range)."
        )
    else:
        lineup.append(PlannedRun("diffvc", f"DiffVC (TDIR {_on(settings.tdir)})", "diffvc", under_test.codec))
        if settings.tdir_contrast:
            flipped = not settings.tdir
            codec = _codec("diffvc", settings.diffvc_options(tdir=flipped))
            lineup.append(PlannedRun(f"diffvc-tdir-{_on(flipped)}", f"DiffVC (TDIR {_on(flipped)})", "contrast", codec))
    for name in settings.anchors:
        codec, reason = _build(name, settings.anchor_options(name))
        if codec is None:
            notes.append(f"{name} did not run: {reason}.")
        else:
            lineup.append(PlannedRun(name, name, "anchor", codec))
    if not lineup:
        raise CodecError("nothing to run: DiffVC cannot run here and no anchor is chosen")
    return lineup


def _code(
    job: ComparisonJob, planned: PlannedRun, target: float | None, steps: _Steps
) -> tuple[int, Coding, BitrateMatch | None]:
    """One codec's coding: its QP (searched for DiffVC's rate `target` where it should match it), warmed up, then
    encoded and decoded (the search's own encode of that QP, when there was one); (QP, coding, match)."""
    label, video = planned.label, job.video
    searched: dict[int, TimedEncode] = {}
    qp, match = _pick_qp(job, planned, target, steps, searched)
    if match is None:  # a bitrate search has warmed the codec up already
        steps.report(0, f"{label}: warm-up (QP {qp})")
        warm_up(planned.codec, video, qp)
    steps.report(1, f"{label}: encoding and decoding {video.num_frames} frames")
    reported = 0.0  # of the 2 steps of encode + decode, those the codec's frames reported

    def per_frame(phase: str, frame: int, frames: int) -> None:
        nonlocal reported
        reported += 1 / frames  # encode and decode: one step each (codecs that report frames: DiffVC)
        steps.report(1 / frames, f"{label}: {phase}d frame {frame} of {frames}")

    with frame_progress(per_frame):
        coding = code(planned.codec, video, qp, encoded=searched.get(qp))
    steps.report(2 - reported, f"{label}: coded; metrics next")
    return qp, coding, match


def _score(job: ComparisonJob, planned: PlannedRun, qp: int, coding: Coding, metrics: Sequence[str]) -> Measurement:
    """One coding's row (`engine.score`), labelled as the comparison shows it."""
    return score(planned.codec, job.video, qp, coding, metrics, job.settings.device, spec=planned.label)


def _pick_qp(
    job: ComparisonJob, planned: PlannedRun, target: float | None, steps: _Steps, encodes: dict[int, TimedEncode]
) -> tuple[int, BitrateMatch | None]:
    """The QP a codec runs at: DiffVC's own; an anchor's matched to DiffVC's rate (its encodes go to `encodes`),
    or `settings.qp` clipped. An anchor that spends DiffVC's rate at DiffVC's QP (`rate_of_under_test`: condlc with
    the same pack) takes that QP: the same bits, found without a search."""
    codec, settings, label = planned.codec, job.settings, planned.label
    lo, hi = codec.qp_range
    shares_rate = get_entry(codec.name).rate_of_under_test
    if planned.role != "anchor" or not settings.match_bitrate or target is None or shares_rate:
        return min(hi, max(lo, settings.qp)), None
    steps.report(0, f"{label}: searching the QP for {target:.4f} bpp")
    match = match_bitrate(
        codec,
        job.video,
        target,
        steps.stop,
        on_try=lambda qp, bpp: steps.report(0, f"{label}: QP {qp} gives {bpp:.4f} bpp (target {target:.4f})"),
        encodes=encodes,
    )
    return match.qp, match


def _match_notes(planned: PlannedRun, match: BitrateMatch | None) -> list[str]:
    if match is None or match.reached:
        return []
    lo, hi = planned.codec.qp_range
    return [
        f"{planned.label} cannot reach DiffVC's {match.target_bpp:.4f} bpp within its QP range {lo}..{hi}: "
        f"closest is QP {match.qp} at {match.bpp:.4f} bpp."
    ]


def _write_run(
    job: ComparisonJob, planned: PlannedRun, result: Measurement, match: BitrateMatch | None, folder: Path
) -> CodecRun:
    """The codec's bitstream and decoded mp4 into `folder`; its row labelled with the clip and its role."""
    from codec.video import write_video

    clip, encoded = job.clip, result.encoded
    row = replace(
        result.row,
        source=clip["source"],
        start=clip["start"],
        clip_hash=clip["hash"],
        label=planned.label,
        role=planned.role,
        sha256=hashlib.sha256(encoded.bitstream).hexdigest(),
    )
    bitstream_file = f"{planned.slug}{get_entry(planned.codec.name).suffix}"
    decoded_file = f"{planned.slug}.mp4"
    (folder / bitstream_file).write_bytes(encoded.bitstream)
    write_video(result.decoded, folder / decoded_file)
    matched = {**asdict(match), "reached": match.reached} if match else None
    return CodecRun(planned.slug, planned.label, planned.role, row, bitstream_file, decoded_file, matched)


def _write_results(comparison: Comparison) -> None:
    """results.csv and .json (the rows), frames.npz (the original and every decoded clip), comparison.json."""
    from codec.eval.report import results_frame, results_json

    folder = comparison.folder
    results_frame(comparison.rows).to_csv(folder / "results.csv", index=False)
    (folder / "results.json").write_text(results_json(comparison.rows))
    np.savez_compressed(folder / FRAMES_FILE, **comparison.frames())
    (folder / COMPARISON_FILE).write_text(json.dumps(comparison.to_json(), indent=1, default=str))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --- rate-distortion sweep ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """One codec of a rate-distortion sweep: a name, its options, and its QPs."""

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    qps: tuple[int, ...] = ()

    @property
    def spec(self) -> str:
        return ":".join([self.name, *(f"{k}={_spec_value(v)}" for k, v in self.options.items() if v != "")])


def _spec_value(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def run_sweep(
    video: Video,
    plans: Sequence[SweepPlan],
    out_dir: Path,
    cache_dir: Path,
    source: str = "",
    start: int = 0,
    metrics: Sequence[str] | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    lanes: int = 1,
) -> tuple[list[ResultRow], dict[str, Path]]:
    """Every (codec, QP) of `plans` through the evaluation engine (cached: a rerun is instant), then the results
    table, BD-rate against the first plan, the HTML report and the RD plot written into `out_dir`. `lanes` 2: each
    job's metrics beside the next job's coding (`engine.LocalRunner`)."""
    from codec.eval.report import write_results

    total = sum(len(p.qps) for p in plans)
    if not total:
        raise CodecError("no QP to run")
    conditions = EvalRequest(
        video=video,
        specs=[],
        qps=[],
        source=source,
        start=start,
        metrics=tuple(metrics or metric_names()),
        device=device,
        cache_dir=cache_dir,
    )
    rows: list[ResultRow] = []
    for plan in plans:
        request = replace(conditions, specs=[plan.spec], qps=sorted(set(plan.qps)))
        rows += evaluate(request, _sweep_progress(progress, len(rows), total), LocalRunner(lanes))
    return rows, write_results(rows, out_dir)


def _sweep_progress(progress: Progress | None, done_before: int, total: int) -> Callable[[int, int, str], None]:
    """`evaluate`'s progress (jobs done, its total, label) for one plan, reported as the whole sweep's fraction."""

    def tick(done: int, _total: int, label: str) -> None:
        if progress:
            progress((done_before + done) / total, label)

    return tick
