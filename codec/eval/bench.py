"""The dataset benchmark: every sequence of a folder under one set of test conditions, BD-rates as papers print them.

    python -m codec bench DIR --codecs x265 condlc diffvc --qps 22 27 32 37 --qps-for condlc=8,24,40,56 ...

Sequences (`find_sequences`): every video file under DIR (y4m, raw `.yuv` with its size in the name as the test
sets ship them, mp4 and whatever else PyAV reads); a sequence's class is the first folder below DIR (`ClassB/`,
`ClassC/`, `UVG/` ...), "-" for files at the top. Test conditions (`BenchConditions`), the same for every codec: the
first 96 frames, one intra period of 32 for every codec that has the option (unless its spec sets its own), low
delay (every registered codec codes without B-frames). The first spec is the anchor.

Written to OUT: one folder per sequence with the evaluation's own files (`write_results`: results, BD-rates, RD
plots, HTML report), `bench.csv` (per sequence, test codec and metric: BD-rate and bits relative to the anchor at
equal quality), `summary.csv` (the mean BD-rate per class and over all sequences) and `report.md` (both tables, as
papers print them). Every job goes through the evaluation cache, so a stopped benchmark resumes where it was; with
`--ray` the jobs run on a Ray cluster (`codec.eval.cluster`), with the same cache and rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from codec.errors import CodecError, VideoError
from codec.eval.engine import EvalRequest, JobRunner, evaluate
from codec.eval.report import bd_rate_table, is_number, metrics_present, write_results
from codec.eval.rows import ResultRow
from codec.metrics import metric_names, metrics_for_size
from codec.registry import get_entry, parse_spec
from codec.video import RAW_SUFFIX, Video, read_video

VIDEO_SUFFIXES = frozenset({RAW_SUFFIX, ".y4m", ".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg"})
TOP_CLASS = "-"


@dataclass(frozen=True)
class BenchSequence:
    """A sequence of the benchmark: its file, its name in the tables and its class (first folder below DIR)."""

    path: Path
    name: str
    cls: str


@dataclass(frozen=True)
class BenchConditions:
    """What every codec runs under: the first `frames` frames (all when the sequence is shorter) and one intra
    period. `size` (WIDTHxHEIGHT) resizes every sequence, for a quick run on a CPU; None keeps the native size."""

    frames: int = 96
    intra_period: int = 32
    size: tuple[int, int] | None = None

    def spec(self, spec: str) -> str:
        """`spec` with the conditions' intra period, when its codec has the option and the spec does not set it."""
        name, options = parse_spec(spec)
        if "intra_period" in options or not get_entry(name).has_option("intra_period"):
            return spec
        return f"{spec}:intra_period={self.intra_period}"


@dataclass
class BenchResult:
    """Every sequence's rows, and the tables built from them."""

    rows: dict[str, list[ResultRow]] = field(default_factory=dict)  # sequence name -> its evaluation rows
    skipped: dict[str, str] = field(default_factory=dict)  # sequence name -> why it could not be read
    per_sequence: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)


def find_sequences(folder: Path) -> list[BenchSequence]:
    """The video files under `folder` in name order (hidden files and folders skipped)."""
    if not folder.is_dir():
        raise CodecError(f"{folder}: no such folder")
    found = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not any(p.startswith(".") for p in parts):
            found.append(BenchSequence(path, path.stem, parts[0] if len(parts) > 1 else TOP_CLASS))
    if not found:
        raise CodecError(f"{folder}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CodecError(f"{folder}: sequence names must be unique, found twice: {', '.join(twice)}")
    return found


def run_bench(
    sequences: Sequence[BenchSequence],
    specs: Sequence[str],
    qps: Sequence[int],
    qps_by_spec: Mapping[str, Sequence[int]] | None = None,
    conditions: BenchConditions = BenchConditions(),
    metrics: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    device: str = "cpu",
    force: bool = False,
    runner: JobRunner | None = None,
) -> BenchResult:
    """Evaluate every spec at its QPs on every sequence under `conditions`; rows keep the specs as given.
    progress(done, total, label) counts jobs over the whole benchmark; runner: where the jobs run (`evaluate`)."""
    if len(specs) < 2:
        raise CodecError("a benchmark needs an anchor and at least one codec to test against it")
    qps_by_spec = dict(qps_by_spec or {})
    conditioned = {conditions.spec(s): s for s in specs}
    jobs_per_sequence = sum(len(qps_by_spec.get(s, qps)) for s in specs)
    total = jobs_per_sequence * len(sequences)
    result = BenchResult()
    for n, sequence in enumerate(sequences):
        try:
            video = read_video(sequence.path, frames=conditions.frames, size=conditions.size)
            kept = _metrics_for(video, metrics, sequence)
        except VideoError as e:  # one unreadable or too small file does not cost the rest of the benchmark
            result.skipped[sequence.name] = str(e)
            continue
        request = EvalRequest(
            video=video,
            specs=list(conditioned),
            qps=sorted(set(qps)),
            qps_by_spec={c: qps_by_spec[s] for c, s in conditioned.items() if s in qps_by_spec},
            source=sequence.path.name,
            metrics=kept,
            cache_dir=cache_dir,
            device=device,
            force=force,
        )

        rows = evaluate(request, _offset_progress(progress, n * jobs_per_sequence, total, sequence.name), runner)
        result.rows[sequence.name] = [replace(row, spec=conditioned[row.spec]) for row in rows]
    result.per_sequence = per_sequence_table([s for s in sequences if s.name in result.rows], result.rows)
    result.summary = summary_table(result.per_sequence)
    return result


def _offset_progress(
    progress: Callable[[int, int, str], None] | None, done_before: int, total: int, name: str
) -> Callable[[int, int, str], None] | None:
    """One sequence's job counter as the whole benchmark's."""
    if progress is None:
        return None
    return lambda done, _total, label: progress(done_before + done, total, f"{name}: {label}")


def _metrics_for(video: Video, metrics: Sequence[str] | None, sequence: BenchSequence) -> tuple[str, ...]:
    kept, notes = metrics_for_size(metrics or metric_names(), video.width, video.height)
    if not kept:
        raise VideoError(f"{sequence.name}: {notes[0]}")
    return tuple(kept)


def per_sequence_table(sequences: Sequence[BenchSequence], rows: Mapping[str, list[ResultRow]]) -> pd.DataFrame:
    """One row per (sequence, test spec, metric): class, BD-rate (%) against the first spec and its note, bits
    relative to it at equal quality."""
    frames = []
    for sequence in sequences:
        table = bd_rate_table(rows[sequence.name], metrics_present(rows[sequence.name]))
        table.insert(0, "sequence", sequence.name)
        table.insert(0, "class", sequence.cls)
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summary_table(per_sequence: pd.DataFrame) -> pd.DataFrame:
    """Per (class, test spec, metric) and over every sequence ("all"): the mean BD-rate and the geometric mean of
    the bits relative to the anchor at equal quality, with how many sequences had a BD-rate (a curve pair that does
    not overlap has none, and is left out of the mean, not counted as 0)."""
    if per_sequence.empty:
        return pd.DataFrame(columns=["class", "test", "metric", "bd_rate_pct", "sequences", "of", "bits_vs_anchor"])
    classes = per_sequence["class"].nunique() > 1
    groups = [*(per_sequence.groupby("class", sort=True) if classes else []), ("all", per_sequence)]
    records = []
    for cls, part in groups:
        for (test, metric), cell in part.groupby(["test", "metric"], sort=False):
            values = [v for v in cell["bd_rate_pct"] if is_number(v)]
            ratios = [v for v in cell["bits_vs_anchor"] if is_number(v) and v > 0]
            records.append(
                {
                    "class": cls,
                    "test": test,
                    "metric": metric,
                    "bd_rate_pct": sum(values) / len(values) if values else None,
                    "sequences": len(values),
                    "of": len(cell),
                    "bits_vs_anchor": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
                }
            )
    return pd.DataFrame(records)


def write_bench(result: BenchResult, out: Path, anchor: str, conditions: BenchConditions) -> dict[str, Path]:
    """Each sequence's evaluation files in OUT/SEQUENCE/, then bench.csv, summary.csv and report.md."""
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in result.rows.items():
        write_results(rows, out / name)
    paths = {"per_sequence": out / "bench.csv", "summary": out / "summary.csv", "report": out / "report.md"}
    result.per_sequence.to_csv(paths["per_sequence"], index=False)
    result.summary.to_csv(paths["summary"], index=False)
    paths["report"].write_text(markdown_report(result, anchor, conditions))
    return paths


def markdown_report(result: BenchResult, anchor: str, conditions: BenchConditions) -> str:
    """BD-rate (%) against the anchor per sequence, then per class and over all, one column per (codec, metric);
    then the same layout for the bits relative to the anchor at equal quality."""
    size = "native size" if conditions.size is None else "resized to {}x{}".format(*conditions.size)
    lines = [
        f"# Benchmark against {anchor}",
        "",
        f"{len(result.rows)} sequences, the first {conditions.frames} frames, intra period {conditions.intra_period}, "
        f"low delay, {size}. n/a: the curves do not overlap (bench.csv says why); class and overall means leave "
        "those out and say over how many.",
        "",
    ]
    lines += [f"Skipped: {name} ({why})" for name, why in result.skipped.items()]
    lines += [""] if result.skipped else []
    if result.per_sequence.empty:
        return "\n".join(lines + ["No BD-rate: every sequence failed or there is one codec."]) + "\n"
    lines += [f"## BD-rate (%): negative is fewer bits than {anchor} for the same quality", ""]
    lines += _table(result, "bd_rate_pct", _pct)
    lines += ["", f"## Bits relative to {anchor} at equal quality (x; read off its curve, geometric means)", ""]
    lines += _table(result, "bits_vs_anchor", _times)
    return "\n".join(lines) + "\n"


def _table(result: BenchResult, column: str, fmt: Callable[[Any], str]) -> list[str]:
    per, summary = result.per_sequence, result.summary
    columns = list(dict.fromkeys(zip(per["test"], per["metric"], strict=True)))
    lines = ["| class | sequence | " + " | ".join(f"{t} {m}" for t, m in columns) + " |"]
    lines.append("|" + " --- |" * (2 + len(columns)))
    for (cls, name), part in per.groupby(["class", "sequence"], sort=False):
        cells = {(t, m): v for t, m, v in zip(part["test"], part["metric"], part[column], strict=True)}
        lines.append(f"| {cls} | {name} | " + " | ".join(fmt(cells.get(c)) for c in columns) + " |")
    for cls, part in summary.groupby("class", sort=False):
        cells = {(t, m): r for t, m, r in zip(part["test"], part["metric"], part.to_dict("records"), strict=True)}
        label = "**average**" if cls == "all" else f"average of {cls}"
        lines.append(
            f"| {cls} | {label} | " + " | ".join(_mean_cell(cells.get(c), column, fmt) for c in columns) + " |"
        )
    return lines


def _pct(value: Any) -> str:
    return f"{value:+.1f}" if is_number(value) else "n/a"


def _times(value: Any) -> str:
    return f"{value:.2f}x" if is_number(value) else "n/a"


def _mean_cell(record: dict | None, column: str, fmt: Callable[[Any], str]) -> str:
    if record is None or not is_number(record[column]):
        return "n/a"
    partial = (
        ""
        if record["sequences"] == record["of"] or column != "bd_rate_pct"
        else f" ({record['sequences']}/{record['of']})"
    )
    return fmt(record[column]) + partial
