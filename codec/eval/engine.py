"""The evaluation engine: run (codec spec x QP) jobs on one clip, measure rate, quality and time, cache rows.

Every number comes from a real run: the rate from the bitstream's bytes, quality from the *decoder's* output
(decoded from those bytes, not the encoder's reconstruction), encode and decode time measured apart after a
warm-up run of each codec.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from codec.errors import CodecError
from codec.eval.cache import ResultCache, cache_key
from codec.eval.rows import ResultRow
from codec.metrics import compute_metrics, metric_names
from codec.registry import Encoded, VideoCodec, get_codec, options_dict
from codec.video import Video

WARMUP_FRAMES = 2


@dataclass(frozen=True)
class EvalRequest:
    """One clip, the codecs and QPs to run on it, and how."""

    video: Video
    specs: Sequence[str]
    qps: Sequence[int]
    qps_by_spec: Mapping[str, Sequence[int]] = field(default_factory=dict)  # a spec's own QPs (else `qps`)
    source: str = ""  # a name for the clip in reports (file name)
    start: int = 0  # first frame's index in the source (recorded, part of the cache key)
    metrics: Sequence[str] = field(default_factory=metric_names)
    device: str = "cpu"
    cache_dir: Path | None = None
    force: bool = False
    warmup: bool = True


@dataclass
class Measurement:
    """One job's results: the row of the results table, plus what only a live run has (the frames)."""

    row: ResultRow
    encoded: Encoded | None = None
    decoded: Video | None = None
    cached: bool = False


@dataclass
class Job:
    """One (spec, QP) of a request, with its codec built once (a remote runner rebuilds it from `spec`)."""

    spec: str
    qp: int
    codec: VideoCodec = field(repr=False)


def canonical_spec(codec: VideoCodec) -> str:
    """'x265' -> 'x265:chroma=420:intra_period=32:...' with every option, sorted: one name per configuration."""
    opts = options_dict(codec.options)  # type: ignore[attr-defined]
    return ":".join([codec.name, *(f"{k}={v}" for k, v in sorted(opts.items()))])


def evaluate(
    request: EvalRequest,
    progress: Callable[[int, int, str], None] | None = None,
    runner: JobRunner | None = None,
) -> list[ResultRow]:
    """Run every (spec, qp) job of `request`; return the rows in spec, then QP order.

    Cached rows are reused unless `request.force`; the others run on `runner` (default `LocalRunner`: one after
    the other, here; `codec.eval.cluster.RayRunner` spreads them over a Ray cluster) and are cached as they come.
    `progress(done, total, label)` is called after each job.
    """
    jobs = [
        Job(spec, qp, codec)
        for spec, codec in _build_codecs(request.specs)
        for qp in request.qps_by_spec.get(spec, request.qps)
    ]
    cache = ResultCache(request.cache_dir) if request.cache_dir else None
    clip_hash = request.video.content_hash()
    keys = [_job_key(request, job, clip_hash) for job in jobs]
    rows: list[ResultRow | None] = [
        None if (request.force or cache is None) else _cached(cache, key, job) for key, job in zip(keys, jobs)
    ]
    done = 0
    for i, row in enumerate(rows):
        if row is not None:
            done += 1
            if progress:
                progress(done, len(jobs), f"{jobs[i].spec} qp={jobs[i].qp} (cached)")
    pending = [(i, jobs[i]) for i, row in enumerate(rows) if row is None]
    for i, row in (runner or LocalRunner()).run(request, pending):
        row = replace(row, source=request.source, start=request.start, clip_hash=clip_hash)
        if cache is not None:
            cache.put(keys[i], row)
        rows[i] = row
        done += 1
        if progress:
            progress(done, len(jobs), f"{jobs[i].spec} qp={jobs[i].qp}")
    return [row for row in rows if row is not None]


def _cached(cache: ResultCache, key: str, job: Job) -> ResultRow | None:
    """The cached row of `job`, named by this job's spec: the key is the canonical spec, so a row cached under
    another spelling of the same configuration ("condlc" and "condlc:intra_qp_offset=-16" while that is the default)
    is reused, and must answer to the name this request gave it."""
    row = cache.get(key)
    return None if row is None else replace(row, spec=job.spec)


class JobRunner(Protocol):
    """Runs jobs of a request, yielding (the job's index, its row) in any order as each finishes."""

    def run(self, request: EvalRequest, jobs: Sequence[tuple[int, Job]]) -> Iterator[tuple[int, ResultRow]]: ...


class LocalRunner:
    """The jobs one after the other in this process, each codec warmed up before its first job; with `lanes` 2,
    each job's metrics run beside the next job's coding (`ScoringLane`), the rows the same and in the same order."""

    def __init__(self, lanes: int = 1) -> None:
        self.lanes = lanes

    def run(self, request: EvalRequest, jobs: Sequence[tuple[int, Job]]) -> Iterator[tuple[int, ResultRow]]:
        warmed: set[str] = set()
        scored: list[tuple[int, ResultRow]] = []
        with ScoringLane(beside=self.lanes > 1) as lane:
            for index, job in jobs:
                if request.warmup and job.spec not in warmed:
                    warm_up(job.codec, request.video, job.qp)
                    warmed.add(job.spec)
                coding = code(job.codec, request.video, job.qp)
                lane.submit(
                    functools.partial(score_job, job.codec, request, job, coding),
                    lambda row, i=index: scored.append((i, row)),
                )
                lane.deliver_done()
                yield from _drain(scored)
            lane.deliver_all()
            yield from _drain(scored)


def _drain(items: list) -> Iterator:
    """Yield and remove every item of `items`, in order."""
    while items:
        yield items.pop(0)


class ScoringLane:
    """Where the metrics of a run of codings (a comparison, a sweep) run: in turn, as each coding is done (`beside`
    False), or on one worker thread beside the next coding (`beside` True: the codings are mostly single-threaded,
    the metrics' VGG16s too, so two cores do both at once). Results are delivered on the caller's thread in
    submission order, so the progress, the files and the rows are those of the sequential run; an error in the
    metrics is raised there. `score` touches nothing a coding uses, so the two may run at once."""

    def __init__(self, beside: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metrics") if beside else None
        self._pending: deque[tuple[Future, Callable[[Any], None]]] = deque()

    def __enter__(self) -> ScoringLane:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:  # on an error or a stop, the queued metrics are dropped, the running ones end
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, work: Callable[[], Any], deliver: Callable[[Any], None]) -> None:
        """Run `work` (now, or on the lane's thread); `deliver` its result on this thread, in order."""
        if self._pool is not None:
            self._pending.append((self._pool.submit(work), deliver))
            return
        future: Future = Future()
        future.set_result(work())
        self._pending.append((future, deliver))

    def deliver_done(self) -> None:
        """Deliver the results finished so far, in order (up to the first still running)."""
        while self._pending and self._pending[0][0].done():
            future, deliver = self._pending.popleft()
            deliver(future.result())

    def deliver_all(self) -> None:
        """Wait for every result and deliver them, in order."""
        while self._pending:
            future, deliver = self._pending.popleft()
            deliver(future.result())


def run_job(codec: VideoCodec, request: EvalRequest, job: Job) -> ResultRow:
    """One job's row, measured here (the part of a job every runner shares)."""
    return score_job(codec, request, job, code(codec, request.video, job.qp))


def score_job(codec: VideoCodec, request: EvalRequest, job: Job, coding: Coding) -> ResultRow:
    """The row of a job's coding (`score`) under the request's metrics and device."""
    return score(codec, request.video, job.qp, coding, request.metrics, request.device, spec=job.spec).row


def _build_codecs(specs: Sequence[str]) -> list[tuple[str, VideoCodec]]:
    """Build each codec once (validates every spec before any job runs)."""
    if not specs:
        raise CodecError("no codec given")
    return [(spec, get_codec(spec)) for spec in specs]


def _job_key(request: EvalRequest, job: Job, clip_hash: str) -> str:
    return cache_key(
        clip=clip_hash,
        spec=canonical_spec(job.codec),
        qp=job.qp,
        start=request.start,
        frames=request.video.num_frames,
        size=[request.video.width, request.video.height],
        identity=job.codec.identity(),
        metrics=sorted(request.metrics),  # type: ignore[attr-defined]
    )


TimedEncode = tuple[Encoded, float]  # an encode and its wall time in seconds


def timed_encode(codec: VideoCodec, video: Video, qp: int) -> TimedEncode:
    t0 = time.perf_counter()
    encoded = codec.encode(video, qp)
    return encoded, time.perf_counter() - t0


def warm_up(codec: VideoCodec, video: Video, qp: int) -> None:
    """Encode and decode the first frames once, untimed: loads models, fills caches, compiles kernels."""
    head = Video(video.frames[:WARMUP_FRAMES], video.fps)
    codec.decode(codec.encode(head, qp).bitstream)


@dataclass
class Coding:
    """One encode and the decode of its bytes, timed, before any metric (`code`)."""

    encoded: Encoded
    enc_wall: float  # seconds
    decoded: Video
    dec_s: float


def code(codec: VideoCodec, video: Video, qp: int, encoded: TimedEncode | None = None) -> Coding:
    """Encode (or take `encoded`: this very encode, done and timed before, a bitrate search's) and decode from the
    bytes; the decoded clip must have the source's shape."""
    encoded, enc_wall = encoded or timed_encode(codec, video, qp)
    t0 = time.perf_counter()
    decoded = codec.decode(encoded.bitstream)
    dec_s = time.perf_counter() - t0
    if decoded.frames.shape != video.frames.shape:
        raise CodecError(f"{codec.name} decoded {decoded.frames.shape}, expected {video.frames.shape}")
    return Coding(encoded, enc_wall, decoded, dec_s)


def score(
    codec: VideoCodec,
    video: Video,
    qp: int,
    coding: Coding,
    metrics: Sequence[str] | None = None,
    device: str = "cpu",
    spec: str = "",
) -> Measurement:
    """The row of a coding: its metrics against the original, its rate from the real bytes, its timings.

    enc_s is the codec's own encoder time where it reports one (`timings['encode']`: anchors decode their
    stream after encoding only to hand back a reconstruction), else the wall time of `encode`. Touches nothing
    the codec's next encode uses, so it may run on another thread beside it (a comparison's two lanes).
    """
    encoded, decoded = coding.encoded, coding.decoded
    per_frame = compute_metrics(video, decoded, metrics, device)
    enc_s = float(encoded.timings.get("encode", coding.enc_wall))
    dec_s = coding.dec_s
    row = ResultRow(
        codec=codec.name,
        spec=spec or codec.name,
        canonical_spec=canonical_spec(codec),
        qp=qp,
        frames=video.num_frames,
        width=video.width,
        height=video.height,
        bytes=encoded.num_bytes,
        bpp=encoded.bpp(video),
        metrics={m: (float(np.mean(per_frame[m])) if m in per_frame else None) for m in metric_names()},
        enc_s=enc_s,
        dec_s=dec_s,
        enc_fps=video.num_frames / enc_s if enc_s > 0 else None,
        dec_fps=video.num_frames / dec_s if dec_s > 0 else None,
        recon_match=bool(np.array_equal(decoded.frames, encoded.reconstruction.frames)),
        frame_types="".join(encoded.frame_types),
        options=options_dict(codec.options),  # type: ignore[attr-defined]
        params=encoded.params,
        timings=encoded.timings,
        unet_evals=encoded.stats.get("unet_evals"),
        real_over_estimated=_real_over_estimated(encoded),
        stats=encoded.stats,
        identity=codec.identity(),  # type: ignore[attr-defined]
        device=device,
        frame_bits=tuple(map(int, encoded.frame_bits)),
        per_frame={m: tuple(v.tolist()) for m, v in per_frame.items()},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return Measurement(row=row, encoded=encoded, decoded=decoded)


def measure(
    codec: VideoCodec,
    video: Video,
    qp: int,
    metrics: Sequence[str] | None = None,
    device: str = "cpu",
    spec: str = "",
    encoded: TimedEncode | None = None,
) -> Measurement:
    """Encode, decode from the bytes, compare with the original (`code`, then `score`); the row and the live
    frames. `encoded`: this very encode, done and timed before (a bitrate search's), so it is not run again."""
    return score(codec, video, qp, code(codec, video, qp, encoded), metrics, device, spec)


def _real_over_estimated(encoded: Encoded) -> float | None:
    """Real bits of the entropy-coded strings over the estimate from the likelihoods (sum of -log2 p), for codecs
    that report an estimate (the neural ones, as CompressAI prints both): 1.0 is a coder that loses nothing."""
    estimated = encoded.stats.get("estimated_bits")
    return sum(encoded.frame_bits) / estimated if estimated else None
