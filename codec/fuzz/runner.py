"""The fuzzing run: a corpus of real streams, seeded mutations, sandboxed decodes in a worker pool, a summary.

1. Corpus: every codec encodes a few small synthetic clips (`codec.video.synthetic_clip`) chosen to cover its
   structure: a GOP boundary (intra_period 2 or 3), an odd size (padding, the anchors' size hint), 4:4:4 or
   intra-once streams. DiffVC and condlc use `pack` (default "random-tiny", a random-init model).
2. Cases: case i mutates a sample of codec `codecs[i % n]` with kind `KINDS[(i // n) % len(KINDS)]`, drawn from
   `random.Random(f"{seed}:{i}")`, so each case is reproducible on its own and every codec meets every kind.
3. Decodes: a pool of spawned workers loads the decoders once; each case runs in a forked child
   (`codec.fuzz.sandbox`) under the time limit (`timeout_s`, plus `eval_s` per U-Net evaluation a DVC1 header
   declares, since that work is the stream's to ask for) and the memory bound.
4. Verdicts (`codec.fuzz.oracle.judge`) are counted per codec, per kind and per codec and kind; each finding is
   kept with its bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from codec.bitstream import MIN_UNIT_SIZE, read_header
from codec.errors import CodecError
from codec.fuzz.mutate import KINDS, NotApplicable, StreamSample, mutate, stream_syntax
from codec.fuzz.oracle import ALLOWED, FINDINGS, allocation_failed, judge
from codec.fuzz.sandbox import process_memory, run_sandboxed

__all__ = ["FuzzConfig", "FuzzReport", "build_corpus", "fuzzed_codecs", "run_fuzz"]


def fuzzed_codecs() -> tuple[str, ...]:
    """Every registered codec: each one's decoder is fuzzed."""
    from codec.registry import codec_names

    return codec_names()


def takes_pack(codec: str) -> bool:
    from codec.registry import get_entry

    return get_entry(codec).takes_pack


@dataclass(frozen=True)
class ClipSpec:
    """One corpus stream: a synthetic clip (frames, height, width, seed) encoded at qp with extra codec options."""

    label: str
    frames: int
    height: int
    width: int
    options: str
    qp: int
    seed: int = 1


def corpus_specs(codec: str, quick: bool = False) -> list[ClipSpec]:
    """The clips a codec's corpus is encoded from, by its bitstream syntax and options; `quick` keeps the first
    two. Odd sizes and every intra period the options allow; a codec of opaque syntax gets two plain clips at the
    middle of its QP range."""
    from codec.registry import get_entry

    entry = get_entry(codec)
    syntax = entry.bitstream_syntax
    if syntax in ("hevc", "h264"):
        specs = [
            ClipSpec("gop2-48x32", 3, 32, 48, "intra_period=2", 32),
            ClipSpec("gop3-33x17", 4, 17, 33, "intra_period=3", 40),  # odd size in 4:2:0: padded, size hint
            ClipSpec("once-40x24-444", 2, 24, 40, "intra_period=-1:chroma=444", 24),
        ]
    elif syntax == "av1":
        specs = [
            ClipSpec("gop2-48x32", 3, 32, 48, "intra_period=2", 40),
            ClipSpec("gop3-33x17", 4, 17, 33, "intra_period=3", 50),
            ClipSpec("once-40x24", 2, 24, 40, "intra_period=-1", 30),
        ]
    elif syntax == "dvc1":
        diffvc = entry.has_option("reuse")  # DiffVC's diffusion options
        specs = [
            ClipSpec("gop2-48x32", 3, 32, 48, "intra_period=2", 30),
            ClipSpec(
                "gop3-33x17",
                4,
                17,
                33,
                "intra_period=3:qp_offsets=0,4" + (":reuse=step:reuse_warp=off" if diffvc else ""),
                45,
            ),  # fmt: skip
            ClipSpec("once-70x40", 2, 40, 70, "intra_period=-1" + (":tdir=off" if diffvc else ""), 20),
        ]
    else:
        gop = "intra_period=2" if entry.has_option("intra_period") else ""
        middle = sum(entry.qp_range) // 2
        specs = [ClipSpec("gop2-48x32", 3, 32, 48, gop, middle), ClipSpec("odd-33x17", 2, 17, 33, gop, middle)]
    return specs[:2] if quick else specs


def decoder_spec(codec: str, pack: str) -> str:
    return f"{codec}:pack={pack}:device=cpu" if takes_pack(codec) else codec


@dataclass(frozen=True)
class FuzzConfig:
    """A fuzzing run. mutations: how many damaged streams, spread evenly over `codecs` and the kinds of
    `codec.fuzz.mutate.KINDS`. timeout_s: per decode, plus eval_s per U-Net evaluation a DVC1 header declares.
    memory_mb: bound on a decode's peak memory above the worker's (its address space is capped at twice that).
    workers: decoding processes. corpus: "full" (three streams per codec) or "quick" (two). max_steps: the largest
    diffusion step count a DVC1 header edit writes (up to the format's 1000; a quick run lowers it, since a
    stream's decode time grows with its steps)."""

    mutations: int = 10_000
    seed: int = 0
    codecs: tuple[str, ...] = field(default_factory=fuzzed_codecs)
    workers: int = 2
    timeout_s: float = 20.0
    eval_s: float = 0.25
    memory_mb: int = 1024
    pack: str = "random-tiny"
    corpus: str = "full"
    max_steps: int = 1000

    def __post_init__(self) -> None:
        known = fuzzed_codecs()
        unknown = set(self.codecs) - set(known)
        if unknown or not self.codecs:
            raise ValueError(f"codecs must be among {', '.join(known)}, got {', '.join(self.codecs) or 'none'}")
        if self.mutations < 1 or self.workers < 1 or self.timeout_s <= 0 or self.memory_mb <= 0:
            raise ValueError("mutations, workers, timeout_s and memory_mb must be positive")
        if self.corpus not in ("full", "quick"):
            raise ValueError(f"corpus must be full or quick, got {self.corpus!r}")
        if not 0 <= self.max_steps <= 1000:
            raise ValueError(f"max_steps must be in 0..1000, got {self.max_steps}")


# --- corpus -----------------------------------------------------------------------------------------------


def build_corpus(config: FuzzConfig) -> tuple[dict[str, list[StreamSample]], list[dict[str, Any]]]:
    """Encode every codec's clips: ({codec: samples}, a description of each stream for the summary)."""
    samples: dict[str, list[StreamSample]] = {}
    described = []
    with _scheduling_kept():
        _encode_corpus(config, samples, described)
    return samples, described


@contextmanager
def _scheduling_kept() -> Iterator[None]:
    """Restore this thread's scheduling policy afterwards: libsvtav1, run as root, leaves the thread that encoded
    at SCHED_FIFO priority 99, and workers spawned from it would inherit that (a busy real-time decode then starves
    every other one on its core)."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def _encode_corpus(config: FuzzConfig, samples: dict[str, list[StreamSample]], described: list[dict]) -> None:
    from codec.registry import get_codec
    from codec.video import synthetic_clip

    for codec in config.codecs:
        samples[codec] = []
        for spec in corpus_specs(codec, config.corpus == "quick"):
            options = f":{spec.options}" if spec.options else ""
            pack = f":pack={config.pack}:device=cpu" if takes_pack(codec) else ""
            encoder = get_codec(f"{codec}{pack}{options}")
            clip = synthetic_clip(spec.frames, spec.height, spec.width, seed=spec.seed)
            encoded = encoder.encode(clip, spec.qp)
            label = f"{codec}/{spec.label}"
            samples[codec].append(StreamSample(codec, encoded.bitstream, label))
            described.append({
                "codec": codec, "label": label, "encoder": f"{codec}{pack}{options}", "qp": spec.qp,
                "frames": spec.frames, "size": [spec.width, spec.height], "bytes": len(encoded.bitstream),
                "frame_types": "".join(encoded.frame_types),
            })  # fmt: skip


# --- cases ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    index: int
    codec: str
    kind: str
    detail: str
    sample: str
    data: bytes
    time_limit_s: float


def declared_evals(data: bytes) -> int:
    """U-Net evaluations a DVC1 stream asks for (frames x sampling steps, TDIR ignored); 0 if the header is
    unreadable. Frames are counted no further than the bytes could hold units."""
    try:
        header, offset = read_header(data)
    except CodecError:
        return 0
    per_frame = min(header.steps, round(header.steps * header.strength_milli / 1000))
    return per_frame * min(header.num_frames, (len(data) - offset) // MIN_UNIT_SIZE)


def make_cases(config: FuzzConfig, samples: dict[str, list[StreamSample]]) -> Iterator[Case]:
    """The run's cases, in order (lazily)."""
    codecs = config.codecs
    for index in range(config.mutations):
        codec = codecs[index % len(codecs)]
        kind = KINDS[(index // len(codecs)) % len(KINDS)]
        rng = random.Random(f"{config.seed}:{index}")
        pool = samples[codec]
        first = rng.randrange(len(pool))
        mutation = None
        for attempt in range(len(pool)):
            sample = pool[(first + attempt) % len(pool)]
            try:
                mutation = mutate(rng, sample, kind, pool, config.max_steps)
                break
            except NotApplicable:
                continue
        if mutation is None:  # no sample offers this kind a target: a plain bit flip, counted as such
            sample = pool[first]
            mutation = mutate(rng, sample, "bit_flip", pool)
        limit = config.timeout_s
        if stream_syntax(codec) == "dvc1":
            limit += config.eval_s * declared_evals(mutation.data)
        yield Case(index, codec, mutation.kind, mutation.detail, sample.label, mutation.data, limit)


# --- workers ----------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(specs: dict[str, str], warm: dict[str, list[bytes]], memory_mb: int) -> None:
    """Load every decoder once and decode each clean sample (which loads the models before any fork)."""
    from codec.registry import get_codec

    if any(takes_pack(codec) for codec in specs):
        import torch

        torch.set_num_threads(1)  # two workers share two cores; each decode is small
    if os.sched_getscheduler(0) != os.SCHED_OTHER:  # e.g. inherited from an AV1 encode (see _scheduling_kept)
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    decoders = {codec: get_codec(spec) for codec, spec in specs.items()}
    for codec, streams in warm.items():
        for data in streams:
            decoders[codec].decode(data)
    _WORKER.update(decoders=decoders, memory_mb=memory_mb)


def _decode_summary(decoder: Any, data: bytes) -> dict[str, Any]:
    video = decoder.decode(data)
    return {"shape": list(video.frames.shape), "dtype": str(video.frames.dtype), "fps": str(video.fps)}


def _run_case(case: Case) -> dict[str, Any]:
    decoder, memory_mb = _WORKER["decoders"][case.codec], _WORKER["memory_mb"]
    result = run_sandboxed(lambda: _decode_summary(decoder, case.data), case.time_limit_s, 2 * memory_mb)
    retry = None
    if allocation_failed(result):  # the cap's doing, or the decoder's own refusal? the same decode, 4x the room
        retry = run_sandboxed(lambda: _decode_summary(decoder, case.data), case.time_limit_s, 8 * memory_mb)
    outcome, why = judge(case.codec, case.data, result, memory_mb, retry)
    record = {
        "case": case.index, "codec": case.codec, "kind": case.kind, "detail": case.detail, "sample": case.sample,
        "bytes": len(case.data), "outcome": outcome, "why": why, "error_type": result.error_type,
        "error": result.error_message[:300], "seconds": round(result.seconds, 4),
        "memory_mb": round(result.memory_mb, 1), "peak_rss_mb": round(result.peak_rss_mb, 1),
        "time_limit_s": round(case.time_limit_s, 1),
        "worker_rss_mb": round(process_memory()[1] / 2**20, 1),
    }  # fmt: skip
    if outcome in FINDINGS:
        record["data"] = case.data.hex()
        record["traceback"] = result.traceback
    return record


# --- the run and its report -------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """Every case's record and the run's context; `summary()` is the JSON the run writes."""

    config: FuzzConfig
    corpus: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    corpus_s: float = 0.0

    @property
    def findings(self) -> list[dict[str, Any]]:
        return sorted((r for r in self.records if r["outcome"] in FINDINGS), key=lambda r: r["case"])

    def summary(self) -> dict[str, Any]:
        records = self.records
        outcomes = ALLOWED + FINDINGS

        def count(rs: list[dict[str, Any]]) -> dict[str, int]:
            c = Counter(r["outcome"] for r in rs)
            return {o: c[o] for o in outcomes if c[o]} | {"total": len(rs)}

        by_codec: dict[str, list] = defaultdict(list)
        by_kind: dict[str, list] = defaultdict(list)
        for r in records:
            by_codec[r["codec"]].append(r)
            by_kind[r["kind"]].append(r)
        codecs = {}
        for codec in self.config.codecs:
            rs = by_codec.get(codec, [])
            kinds = defaultdict(list)
            for r in rs:
                kinds[r["kind"]].append(r)
            errors = Counter(_category(r["error"]) for r in rs if r["outcome"] == "error")
            codecs[codec] = {
                "outcomes": count(rs),
                "by_kind": {k: count(kinds[k]) for k in KINDS if k in kinds},
                "error_types": dict(Counter(r["why"] for r in rs if r["outcome"] == "error").most_common()),
                "top_errors": dict(errors.most_common(12)),
                "decode_s": _stats([r["seconds"] for r in rs]),
                "memory_mb": _stats([r["memory_mb"] for r in rs]),
                "peak_rss_mb": _stats([r["peak_rss_mb"] for r in rs]),
            }
        return {
            "config": asdict(self.config),
            "environment": _environment(),
            "corpus": self.corpus,
            "totals": {
                "cases": len(records),
                "outcomes": count(records),
                "findings": len(self.findings),
                "elapsed_s": round(self.elapsed_s, 1),
                "corpus_s": round(self.corpus_s, 1),
                "decode_s": _stats([r["seconds"] for r in records]),
                "decode_memory_mb": _stats([r["memory_mb"] for r in records]),
                "decode_peak_rss_mb": _stats([r["peak_rss_mb"] for r in records]),
                "worker_rss_mb_max": max((r["worker_rss_mb"] for r in records), default=0.0),
                "time_limit_s_max": max((r["time_limit_s"] for r in records), default=0.0),
            },
            "by_codec": codecs,
            "by_kind": {k: count(by_kind[k]) for k in KINDS if k in by_kind},
            "slowest": [_brief(r) for r in sorted(records, key=lambda r: -r["seconds"])[:10]],
            "most_memory": [_brief(r) for r in sorted(records, key=lambda r: -r["memory_mb"])[:10]],
            "findings": [{k: v for k, v in r.items() if k != "data"} for r in self.findings],
        }

    def write(self, out: Path) -> Path:
        """Under `out`: summary.json, summary.md (`markdown()`), cases.jsonl (one record per case, without its
        bytes) and findings/<case>-<codec>-<kind>.bin with each finding's bytes."""
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "cases.jsonl", "w") as f:
            for r in self.records:
                f.write(json.dumps({k: v for k, v in r.items() if k not in ("data", "traceback")}) + "\n")
        folder = out / "findings"
        for r in self.findings:
            folder.mkdir(exist_ok=True)
            (folder / f"{r['case']:06d}-{r['codec']}-{r['kind']}.bin").write_bytes(bytes.fromhex(r["data"]))
        (out / "summary.md").write_text(self.markdown())
        path = out / "summary.json"
        path.write_text(json.dumps(self.summary(), indent=1) + "\n")
        return path

    def table(self) -> str:
        """Outcome counts per codec and per kind, as text."""
        s = self.summary()
        outcomes = [o for o in ALLOWED + FINDINGS if any(o in c["outcomes"] for c in s["by_codec"].values())]
        head = f"{'':16s}" + "".join(f"{o:>18s}" for o in outcomes) + f"{'total':>8s}"
        lines = [head]
        for name, c in [*s["by_codec"].items(), ("", None), *((k, {"outcomes": v}) for k, v in s["by_kind"].items())]:
            if c is None:
                lines.append("")
                continue
            o = c["outcomes"]
            lines.append(f"{name:16s}" + "".join(f"{o.get(x, 0):>18d}" for x in outcomes) + f"{o['total']:>8d}")
        t = s["totals"]
        lines.append(
            f"\n{t['cases']} mutations in {t['elapsed_s']:.0f} s (corpus {t['corpus_s']:.0f} s); "
            f"slowest decode {t['decode_s']['max']:.2f} s; "
            f"decode memory: peak {t['decode_peak_rss_mb']['max']:.0f} MiB "
            f"resident (models included), at most {t['decode_memory_mb']['max']:.0f} MiB above its worker; "
            f"findings: {t['findings']}"
        )
        return "\n".join(lines)

    def markdown(self) -> str:
        """The run's figures as a Markdown section (for docs/RESULTS.md, "Reliability")."""
        s, cfg = self.summary(), self.config
        t = s["totals"]
        lines = [
            f"Bitstream fuzzing (`python -m codec fuzz`, seed {cfg.seed}): {t['cases']} seeded mutations of real "
            f"streams, {t['elapsed_s'] / 60:.0f} min on {s['environment']['cpus']} CPUs with {cfg.workers} workers; "
            f"time limit {cfg.timeout_s:g} s per decode (+{cfg.eval_s:g} s per U-Net evaluation a DVC1 header "
            f"declares), memory bound {cfg.memory_mb} MiB above the worker. Findings: {t['findings']}.",
            "",
            "| codec | mutations | clear error | decoded at the declared size | findings | slowest decode (s) "
            "| most memory above the worker (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, c in s["by_codec"].items():
            o = c["outcomes"]
            found = sum(o.get(f, 0) for f in FINDINGS)
            decoded = o.get("decoded", 0) + o.get("decoded_unchecked", 0)
            lines.append(
                f"| {name} | {o['total']} | {o.get('error', 0)} | {decoded} | {found} | {c['decode_s']['max']:.2f} "
                f"| {c['memory_mb']['max']:.0f} |"
            )
        lines += [
            "",
            "Clear errors / decodes per kind of mutation:",
            "",
            "| kind | " + " | ".join(s["by_codec"]) + " |",
            "|---|" + "---:|" * len(s["by_codec"]),
        ]
        for kind in KINDS:
            cells = []
            for c in s["by_codec"].values():
                o = c["by_kind"].get(kind, {})
                found = sum(o.get(f, 0) for f in FINDINGS)
                cells.append(f"{o.get('error', 0)} / {o.get('decoded', 0) + o.get('decoded_unchecked', 0)}"
                             + (f" / **{found} found**" if found else ""))  # fmt: skip
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        for f in s["findings"]:
            lines.append(f"* finding: case {f['case']}, {f['codec']} {f['kind']} ({f['detail']}): {f['outcome']}, "
                         f"{f['why']}")  # fmt: skip
        return "\n".join(lines) + "\n"


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("case", "codec", "kind", "detail", "outcome", "why", "seconds", "memory_mb", "time_limit_s")
    return {k: r[k] for k in keys}


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": round(sum(values) / len(values), 4), "p50": pick(0.5), "p99": pick(0.99), "max": ordered[-1]}


def _category(message: str) -> str:
    """'x265: ... at byte 12 ...' -> a message with numbers replaced by N, cut at the first detail."""
    import re

    text = re.sub(r"0x[0-9a-f]+|\b\d+\b", "N", message)
    return re.split(r" \(| at byte| for |: b'", text)[0][:120]


def _environment() -> dict[str, str]:
    import av
    import numpy
    import torch

    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count()),
        "av": av.__version__, "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "torch": torch.__version__, "numpy": numpy.__version__,
    }  # fmt: skip


def run_fuzz(config: FuzzConfig, progress: Callable[[int, Counter], None] | None = None) -> FuzzReport:
    """Build the corpus, run every case in the worker pool, return the report (nothing written)."""
    start = time.perf_counter()
    samples, described = build_corpus(config)
    report = FuzzReport(config, described, corpus_s=time.perf_counter() - start)
    specs = {codec: decoder_spec(codec, config.pack) for codec in config.codecs}
    warm = {codec: [s.data for s in samples[codec]] for codec in config.codecs}
    counts: Counter = Counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(config.workers, _init_worker, (specs, warm, config.memory_mb)) as pool:
        for record in pool.imap_unordered(_run_case, make_cases(config, samples)):
            report.records.append(record)
            counts[record["outcome"]] += 1
            if progress is not None:
                progress(len(report.records), counts)
    report.records.sort(key=lambda r: r["case"])
    report.elapsed_s = time.perf_counter() - start
    return report


def print_progress(every: int = 500) -> Callable[[int, Counter], None]:
    """A progress callback printing the outcome counts to stderr every `every` cases."""
    started = time.perf_counter()

    def show(done: int, counts: Counter) -> None:
        if done % every == 0:
            seen = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"fuzz: {done} cases, {time.perf_counter() - started:.0f} s: {seen}", file=sys.stderr, flush=True)

    return show
