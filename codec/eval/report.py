"""Results table (JSON + CSV), BD-rate and bits at equal quality against the first codec, the HTML report (plotly)
and PNG RD plots.

BD-rate uses the `bjontegaard` package (Akima interpolation). Metrics where lower is better (LPIPS, DISTS)
are negated before interpolation, so a negative BD-rate always means "fewer bits for the same quality".
BD-rate needs the two curves' quality ranges to overlap; `rate_ratio_at_equal_quality` needs only the test
codec's points to fall within the anchor's range, and says how many did.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import bjontegaard
import numpy as np
import pandas as pd

from codec.eval.rows import ResultRow, csv_first_columns
from codec.metrics import get_metric, metric_names

BD_METHOD = "akima"
MIN_BD_POINTS = 4
MIN_ANCHOR_POINTS = 2  # rate_ratio_at_equal_quality: a line needs two points
BD_TABLE_COLUMNS = ["anchor", "test", "metric", "bd_rate_pct", "note", "bits_vs_anchor", "bits_vs_anchor_note"]


class RatePoint(Protocol):
    """A point of a rate-distortion curve: a `ResultRow`, or anything else with a rate and metric values."""

    @property
    def bpp(self) -> float: ...

    @property
    def metrics(self) -> Mapping[str, float | None]: ...


def results_frame(rows: Sequence[ResultRow]) -> pd.DataFrame:
    """Rows -> a flat table (`ResultRow.csv_record`): the fixed columns first, then the others as they come."""
    frame = pd.DataFrame([row.csv_record() for row in rows])
    first = [c for c in csv_first_columns() if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def results_json(rows: Sequence[ResultRow]) -> str:
    """results.json: the rows' `ResultRow.to_dict`, in order."""
    return json.dumps([row.to_dict() for row in rows], indent=1, default=str)


def read_results_json(path: Path) -> list[ResultRow]:
    """The rows of a results.json `results_json` wrote; RowSchemaError when they are of another schema."""
    return [ResultRow.from_dict(data) for data in json.loads(path.read_text())]


def curves(rows: Sequence[ResultRow]) -> dict[str, list[ResultRow]]:
    """spec -> its rows sorted by bpp, in the order the specs first appear."""
    out: dict[str, list[ResultRow]] = {}
    for row in rows:
        out.setdefault(row.spec, []).append(row)
    return {spec: sorted(points, key=lambda r: r.bpp) for spec, points in out.items()}


def rate_quality(points: Sequence[RatePoint], metric: str, sign: float = 1.0) -> list[tuple[float, float]]:
    """(bpp, sign * metric) of the points that have `metric`, in order."""
    pairs = [(p.bpp, p.metrics.get(metric)) for p in points]
    return [(bpp, sign * value) for bpp, value in pairs if is_number(value)]  # type: ignore[operator]


def bd_rate(anchor: Sequence[RatePoint], test: Sequence[RatePoint], metric: str) -> tuple[float | None, str]:
    """BD-rate (%) of `test` against `anchor` on `metric`, and a note ('' when fine, else why it is missing or what
    was left out).

    Each curve is first reduced to its operating points (`_monotone_curve`, as `rate_ratio_at_equal_quality`
    reads the anchor's): a point is left out when another point of the same curve reaches at least its quality for
    no more bits, an operating point no encoder would choose. Quality then rises with rate along both curves, as the
    Bjontegaard integral needs (a deep metric can score a codec's lowest rate better than the one above it); the
    note counts the points left out."""
    sign = get_metric(metric).sign
    a_points, t_points = _rated(anchor, metric, sign), _rated(test, metric, sign)
    a, t = _monotone_curve(a_points), _monotone_curve(t_points)
    left_out = [
        f"{n} {name} point(s) off its monotone curve left out"
        for n, name in ((len(a_points) - len(a), "anchor"), (len(t_points) - len(t), "test"))
        if n
    ]
    if min(len(a), len(t)) < MIN_BD_POINTS:
        return None, "; ".join([f"needs {MIN_BD_POINTS} points per curve", *left_out])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = bjontegaard.bd_rate(
                [bpp for _, bpp in a],
                [quality for quality, _ in a],
                [bpp for _, bpp in t],
                [quality for quality, _ in t],
                method=BD_METHOD,
                require_matching_points=False,
            )
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as e:
            return None, f"not computable: {e}"
    warned = sorted({str(w.message).splitlines()[0] for w in caught})
    note = "; ".join([*left_out, *warned])[:200]
    return (float(value) if is_number(value) else None), note


def rate_ratio_at_equal_quality(
    anchor: Sequence[RatePoint], test: Sequence[RatePoint], metric: str
) -> tuple[float | None, str]:
    """Bits of `test` relative to `anchor` at equal quality on `metric`, read off the anchor's curve, and a note.

    Definition. The anchor's curve is its points (quality q, log bpp), sorted by quality and kept only where
    they are monotone: a point is dropped when another spends no more bits for at least its quality, so q
    and bpp both rise along the curve. Lower-is-better metrics (LPIPS, DISTS; `Metric.higher_is_better`) are negated
    first, as in `bd_rate`. For each test point whose quality lies within the anchor's quality range,
    log bpp_anchor(q) is interpolated linearly between the two anchor points around q, and the point's
    ratio is bpp_test / bpp_anchor(q). The value is the geometric mean of these ratios: 6.0 means "6x the
    anchor's bits for the same quality", 0.5 half of them, 1.0 the same.

    Test points outside the anchor's range are left out, never extrapolated; the note says how many test
    points were in range and where the others lay (better than the anchor's best, or worse than its worst).
    None, with the reason in the note, when no test point is in range or the anchor has fewer than
    `MIN_ANCHOR_POINTS` points on its curve. Rates (bpp) must be > 0; points without `metric` are skipped.
    """
    sign = get_metric(metric).sign
    a, t = _rated(anchor, metric, sign), _rated(test, metric, sign)
    curve = _monotone_curve(a)
    dropped = f"; {len(a) - len(curve)} anchor point(s) off its monotone curve ignored" if len(curve) < len(a) else ""
    if len(curve) < MIN_ANCHOR_POINTS:
        return None, f"needs {MIN_ANCHOR_POINTS} anchor points on its curve{dropped}"
    if not t:
        return None, f"no test point has {metric}"
    q = np.array([c[0] for c in curve])
    log_bpp = np.log([c[1] for c in curve])
    inside = [(bpp, quality) for bpp, quality in t if q[0] <= quality <= q[-1]]
    better = sum(quality > q[-1] for _, quality in t)
    worse = len(t) - len(inside) - better
    span = sorted((sign * q[0], sign * q[-1]))
    outside = ", ".join(
        part
        for part in (
            f"{better} better than its best" if better else "",
            f"{worse} worse than its worst" if worse else "",
        )
        if part
    )
    if not inside:
        where = (
            f"all {len(t)} are better than its best"
            if better == len(t)
            else f"all {len(t)} are worse than its worst"
            if worse == len(t)
            else outside
        )
        return None, (
            f"no test point within the anchor's quality range ({span[0]:.4g} to {span[1]:.4g}): "
            f"{where}; not extrapolated{dropped}"
        )
    log_ratio = [math.log(bpp) - float(np.interp(quality, q, log_bpp)) for bpp, quality in inside]
    value = math.exp(sum(log_ratio) / len(log_ratio))
    if len(inside) == len(t):
        return value, f"all {len(t)} test points within the anchor's quality range{dropped}"
    return value, (
        f"{len(inside)} of {len(t)} test points within the anchor's quality range "
        f"({span[0]:.4g} to {span[1]:.4g}); left out: {outside}{dropped}"
    )


def _rated(points: Sequence[RatePoint], metric: str, sign: float) -> list[tuple[float, float]]:
    """(bpp, sign * metric) of the points that have `metric` and a positive rate."""
    return [(bpp, quality) for bpp, quality in rate_quality(points, metric, sign) if bpp > 0]


def _monotone_curve(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(bpp, quality) -> (quality, bpp) of the points no other beats (as good a quality for no more bits), sorted by
    quality; quality and bpp both strictly increase along it."""
    curve: list[tuple[float, float]] = []
    for bpp, quality in sorted(points, key=lambda p: (p[0], -p[1])):  # by rate; at equal rate, best quality first
        if not curve or quality > curve[-1][0]:
            curve.append((quality, bpp))
    return curve


def bd_rate_table(rows: Sequence[ResultRow], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (test spec, metric), against the first spec: BD-rate (%) and its note, and the bits relative
    to the anchor at equal quality (`rate_ratio_at_equal_quality`, x) and its note."""
    by_spec = curves(rows)
    specs = list(by_spec)
    records = []
    for spec in specs[1:]:
        for metric in metric_names() if metrics is None else metrics:
            anchor, test = by_spec[specs[0]], by_spec[spec]
            value, note = bd_rate(anchor, test, metric)
            ratio, ratio_note = rate_ratio_at_equal_quality(anchor, test, metric)
            records.append(
                {
                    "anchor": specs[0],
                    "test": spec,
                    "metric": metric,
                    "bd_rate_pct": value,
                    "note": note,
                    "bits_vs_anchor": ratio,
                    "bits_vs_anchor_note": ratio_note,
                }
            )
    table = pd.DataFrame(records, columns=BD_TABLE_COLUMNS)
    return table.astype({"bd_rate_pct": float, "bits_vs_anchor": float})


def is_number(value: Any) -> bool:
    """A finite int or float (a missing or NaN metric is not)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def metrics_present(rows: Sequence[RatePoint]) -> list[str]:
    return [m for m in metric_names() if any(is_number(r.metrics.get(m)) for r in rows)]


# --- writing ----------------------------------------------------------------------------------------------


def write_results(rows: Sequence[ResultRow], out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.csv, bdrate.csv, report.html and rd.png into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_present(rows)
    paths = {
        "json": out_dir / "results.json",
        "csv": out_dir / "results.csv",
        "bdrate": out_dir / "bdrate.csv",
        "html": out_dir / "report.html",
        "png": out_dir / "rd.png",
    }
    paths["json"].write_text(results_json(rows))
    results_frame(rows).to_csv(paths["csv"], index=False)
    table = bd_rate_table(rows, metrics)
    table.to_csv(paths["bdrate"], index=False)
    paths["html"].write_text(html_report(rows, table, metrics))
    plot_rd_png(rows, paths["png"], metrics)
    return paths


def rd_figure(rows: Sequence[ResultRow], metric: str):
    """A plotly figure: bpp (from real bytes) against `metric`, one line per codec spec, hover shows QP and time."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for spec, points in curves(rows).items():
        fig.add_trace(
            go.Scatter(
                x=[p.bpp for p in points],
                y=[p.metrics.get(metric) for p in points],
                mode="lines+markers",
                name=spec,
                customdata=[[p.qp, p.enc_fps, p.dec_fps] for p in points],
                hovertemplate="QP %{customdata[0]}<br>bpp %{x:.4f}<br>%{y:.4f}<br>"
                "enc %{customdata[1]:.2f} fps, dec %{customdata[2]:.2f} fps<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(
        title=get_metric(metric).title,
        xaxis_title="bpp (from bitstream bytes)",
        yaxis_title=get_metric(metric).axis_label,
        template="plotly_white",
        height=420,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def html_report(rows: Sequence[ResultRow], table: pd.DataFrame, metrics: Sequence[str]) -> str:
    """A self-contained HTML page (plotly.js embedded once, so it opens offline)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>RD report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>",
        f"<h1>Rate-distortion report</h1><p>{_clip_sentence(rows[0] if rows else None)} "
        "Rates are from the bitstreams' bytes; quality from the decoded frames.</p>",
    ]
    for i, metric in enumerate(metrics):
        parts.append(rd_figure(rows, metric).to_html(full_html=False, include_plotlyjs=(i == 0)))
    anchor = _esc(table["anchor"].iloc[0]) if len(table) else "the first codec"
    parts.append(f"<h2>BD-rate against {anchor}, and bits at equal quality</h2>")
    parts.append(
        "<p><b>bd_rate_pct</b>: the Bjontegaard delta rate (%), the average difference in bits between the two "
        "curves over the quality range they share (Akima interpolation of each curve); negative means fewer bits "
        f"than {anchor} for the same quality. It is missing where the curves' quality ranges do not overlap "
        "enough. <b>bits_vs_anchor</b>: the test codec's bits relative to the anchor's at equal quality (x), read "
        f"off {anchor}'s curve: for each test point whose quality lies within {anchor}'s quality range, "
        f"{anchor}'s bpp at that quality is interpolated (log bpp, piecewise-linear over its points sorted by "
        "quality; a point that spends more bits than another for less quality is left out), and the ratio test "
        "bpp / anchor bpp taken; the value is the geometric mean of these ratios "
        "(6.00 means 6x the anchor's bits, 0.50 half). Test points outside the anchor's range are not "
        "extrapolated; <b>bits_vs_anchor_note</b> says how many were in range. LPIPS and DISTS (lower is better) "
        "are negated first, so for every metric a BD-rate below 0 or a bits_vs_anchor below 1.00 means fewer bits "
        "for the same quality.</p>"
    )
    parts.append(
        table.to_html(
            index=False,
            na_rep="n/a",
            formatters={"bd_rate_pct": lambda v: f"{v:+.2f}", "bits_vs_anchor": lambda v: f"{v:.2f}"},
        )
        if len(table)
        else "<p>Only one codec: no BD-rate.</p>"
    )
    parts.append("<h2>All results</h2>")
    parts.append(results_frame(rows).to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    parts.append("</body></html>")
    return "\n".join(parts)


def _clip_sentence(row: ResultRow | None) -> str:
    if row is None:
        return "No results."
    return f"Clip: {_esc(row.source)}, {row.width}x{row.height}, {row.frames} frames from frame {row.start}."


def _esc(text: Any) -> str:
    import html

    return html.escape(str(text))


def plot_rd_png(rows: Sequence[ResultRow], path: Path, metrics: Sequence[str]) -> Path:
    """Matplotlib RD curves, one panel per metric, for docs/RESULTS.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, max(1, len(metrics)))
    n_rows = math.ceil(len(metrics) / cols) or 1
    fig, axes = plt.subplots(n_rows, cols, figsize=(5 * cols, 3.8 * n_rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for spec, points in curves(rows).items():
            ax.plot([p.bpp for p in points], [p.metrics.get(metric) for p in points], marker="o", label=spec)
        ax.set_xlabel("bpp")
        ax.set_title(get_metric(metric).title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
