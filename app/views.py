"""What the page shows, computed from a comparison: labelled frame grids, zoomed crops, error heatmaps, tables and
plotly figures. Plain numpy / PIL / pandas / plotly: no Gradio, no model.

Frames are uint8 RGB [H, W, 3]; a comparison's runs carry `engine.measure`'s `ResultRow`s (rates from bitstream
bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from codec.eval.rows import ResultRow
from codec.metrics import get_metric, metric_names, perceptual_metrics

PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692")
LABEL_BAR = 18  # pixels of caption above each tile
MIN_TILE_WIDTH = 240  # smaller frames are shown enlarged by a whole factor, so captions fit and pixels stay sharp


# --- images -----------------------------------------------------------------------------------------------------


def enlarged(frame: np.ndarray, min_width: int = MIN_TILE_WIDTH) -> np.ndarray:
    """`frame` repeated by the smallest whole factor (nearest neighbour) that makes it at least `min_width` wide."""
    factor = max(1, math.ceil(min_width / frame.shape[1]))
    return frame if factor == 1 else np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def captioned(frame: np.ndarray, text: str) -> np.ndarray:
    """`frame` with a dark caption bar above it."""
    from PIL import Image, ImageDraw

    h, w = frame.shape[:2]
    canvas = Image.new("RGB", (w, h + LABEL_BAR), (24, 24, 27))
    canvas.paste(Image.fromarray(frame), (0, LABEL_BAR))
    ImageDraw.Draw(canvas).text((4, 3), text, fill=(240, 240, 240))
    return np.asarray(canvas)


def grid(tiles: Sequence[tuple[str, np.ndarray]], columns: int = 3, gap: int = 4) -> np.ndarray:
    """Captioned tiles (all the same size) on a grid, `columns` wide."""
    if not tiles:
        raise ValueError("nothing to show")
    images = [captioned(enlarged(frame), text) for text, frame in tiles]
    h, w = images[0].shape[:2]
    cols = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / cols)
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return out


def crop_box(height: int, width: int, cx: float, cy: float, zoom: float) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a window 1/zoom of the frame centred at (cx, cy) in 0..1, clamped."""
    zoom = max(1.0, float(zoom))
    ch, cw = max(4, round(height / zoom)), max(4, round(width / zoom))
    ch, cw = min(ch, height), min(cw, width)
    top = int(np.clip(round(cy * height - ch / 2), 0, height - ch))
    left = int(np.clip(round(cx * width - cw / 2), 0, width - cw))
    return top, left, ch, cw


def most_textured_window(frame: np.ndarray, size: tuple[int, int], grid: int = 8) -> tuple[int, int]:
    """(top, left) of the size = (w, h) window with the largest luma gradient energy, on a `grid`-pixel grid:
    where texture is, so where a codec's blur and a diffusion stage's texture show."""
    luma = frame.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    energy = np.abs(np.diff(luma, axis=0))[:, :-1] + np.abs(np.diff(luma, axis=1))[:-1, :]
    w, h = min(size[0], energy.shape[1]), min(size[1], energy.shape[0])
    candidates = [
        (energy[y : y + h, x : x + w].sum(), y, x)
        for y in range(0, energy.shape[0] - h + 1, grid)
        for x in range(0, energy.shape[1] - w + 1, grid)
    ]
    _, top, left = max(candidates)
    return top, left


def textured_zoom_centre(frame: np.ndarray, zoom: float) -> tuple[float, float]:
    """(cx, cy) in 0..1: the centre of the most textured window that a zoom of `zoom` shows."""
    height, width = frame.shape[:2]
    _, _, ch, cw = crop_box(height, width, 0.5, 0.5, zoom)
    top, left = most_textured_window(frame, (cw, ch), grid=max(1, min(ch, cw) // 4))
    return round((left + cw / 2) / width, 2), round((top + ch / 2) / height, 2)


def zoomed(frame: np.ndarray, cx: float, cy: float, zoom: float) -> np.ndarray:
    """The window `crop_box` picks, enlarged back to the frame's size with nearest-neighbour (pixels stay visible)."""
    h, w = frame.shape[:2]
    top, left, ch, cw = crop_box(h, w, cx, cy, zoom)
    window = frame[top : top + ch, left : left + cw]
    rows = np.minimum(np.arange(h) * ch // h, ch - 1)
    cols = np.minimum(np.arange(w) * cw // w, cw - 1)
    return np.ascontiguousarray(window[rows][:, cols])


def mark_box(frame: np.ndarray, cx: float, cy: float, zoom: float) -> np.ndarray:
    """`frame` with the zoom window outlined in yellow."""
    h, w = frame.shape[:2]
    top, left, ch, cw = crop_box(h, w, cx, cy, zoom)
    out = frame.copy()
    colour = np.array([255, 220, 0], np.uint8)
    out[top, left : left + cw] = out[top + ch - 1, left : left + cw] = colour
    out[top : top + ch, left] = out[top : top + ch, left + cw - 1] = colour
    return out


def error_heatmap(reference: np.ndarray, distorted: np.ndarray, full_scale: float = 64.0) -> np.ndarray:
    """Absolute error per pixel (mean over R, G, B), 0..`full_scale` mapped to the 'inferno' colour map."""
    from matplotlib import colormaps

    error = np.abs(reference.astype(np.float32) - distorted.astype(np.float32)).mean(axis=-1)
    lut = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[np.clip(error / full_scale * 255, 0, 255).astype(np.uint8)]


# --- tables -------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int) -> Any:
    return round(float(value), digits) if isinstance(value, (int, float)) and math.isfinite(value) else None


def kbps(row: ResultRow, fps: str | float) -> float | None:
    seconds = row.frames / float(Fraction(str(fps)))
    return 8 * row.bytes / seconds / 1000 if seconds > 0 else None


def metrics_table(runs: Sequence[Any], fps: str) -> pd.DataFrame:
    """One row per codec: how its QP was chosen, its diffusion stage's strength, rate (bytes, bpp, kbps), quality,
    speed, U-Net evaluations."""
    records = []
    for run in runs:
        row = run.row
        match = run.match
        how = (
            "DiffVC's QP"
            if run.role != "anchor"
            else (
                "QP slider"
                if match is None
                else f"matched ({len(match['tried'])} tries){'' if match['reached'] else ': target out of reach'}"
            )
        )
        records.append(
            {
                "codec": run.label,
                "QP": row.qp,
                "QP from": how,
                "stage filter": stage_filter(row),
                "bytes": row.bytes,
                "bpp": _num(row.bpp, 4),
                "kbps": _num(kbps(row, _fps_of(row, fps)), 1),
                **{get_metric(m).label: _num(row.metrics.get(m), 4) for m in metric_names()},
                "enc fps": _num(row.enc_fps, 2),
                "dec fps": _num(row.dec_fps, 2),
                "U-Net evals": _unet_evals(row),
            }
        )
    return pd.DataFrame(records)


def stage_filter(row: ResultRow) -> str:
    """How strongly a DiffVC stream's diffusion stage restores (its header's filter level): "off", "as trained" or
    "1.5x" (the trained filter's strength times 1 + gain), with "(auto)" where the encoder chose it; "" for a
    codec without the stage (condlc's streams declare no sampling steps)."""
    gain = row.params.get("filter_gain")
    if gain is None or not row.params.get("steps"):
        return ""
    strength = "off" if gain == -1 else "as trained" if gain == 0 else f"{1 + gain:g}x"
    return f"{strength} (auto)" if row.options.get("filter") == "auto" else strength


def _fps_of(row: ResultRow, fps: str) -> str:
    return str(row.params.get("fps") or fps)


def _unet_evals(row: ResultRow) -> str:
    return "" if row.unet_evals is None else str(row.unet_evals)


def bd_rate_view(table: pd.DataFrame) -> pd.DataFrame:
    """`codec.eval.report.bd_rate_table` for the page: one row per (test codec, metric) with BD-rate (%), the bits
    relative to the anchor at equal quality (x), and why either is missing or partial."""
    if not len(table):
        return pd.DataFrame({"note": ["BD-rate needs at least two codecs."]})
    records = []
    for _, r in table.iterrows():
        notes = [f"BD-rate: {r['note']}" if r["note"] else "", f"bits: {r['bits_vs_anchor_note']}"]
        records.append(
            {
                "test": r["test"],
                "metric": get_metric(r["metric"]).axis_label,
                "BD-rate (%)": _num(r["bd_rate_pct"], 2),
                f"bits vs {r['anchor']} at equal quality (x)": _num(r["bits_vs_anchor"], 2),
                "note": "; ".join(n for n in notes if n),
            }
        )
    return pd.DataFrame(records)


def timing_table(runs: Sequence[Any]) -> pd.DataFrame:
    """Encode and decode seconds per codec, and DiffVC's encoder stages (seconds over the whole clip)."""
    records = []
    for run in runs:
        row = run.row
        stages = {k: v for k, v in row.timings.items() if k not in ("encode", "decode")}
        records.append(
            {
                "codec": run.label,
                "frames": row.frames,
                "encode s": _num(row.enc_s, 3),
                "decode s": _num(row.dec_s, 3),
                "enc fps": _num(row.enc_fps, 2),
                "dec fps": _num(row.dec_fps, 2),
                **{f"{k} s": _num(v, 3) for k, v in stages.items()},
                "U-Net evals": _unet_evals(row),
            }
        )
    return pd.DataFrame(records)


def tdir_summary(runs: Sequence[Any]) -> str:
    """One markdown line: DiffVC's time and quality with TDIR on against off, when both ran."""
    on = next((r for r in runs if r.role in ("diffvc", "contrast") and r.row.options.get("tdir")), None)
    off = next((r for r in runs if r.role in ("diffvc", "contrast") and not r.row.options.get("tdir")), None)
    if on is None or off is None:
        return "TDIR on against off: run with *Also run DiffVC with TDIR flipped* to see it."
    t_on, t_off = on.row.timings.get("diffusion", 0.0), off.row.timings.get("diffusion", 0.0)
    parts = [f"**TDIR on against off**: encode {on.row.enc_s:.2f} s vs {off.row.enc_s:.2f} s"]
    if t_off > 0:
        parts.append(f"diffusion stage {t_on:.2f} s vs {t_off:.2f} s ({t_on / t_off:.0%} of TDIR off)")
    parts.append(f"U-Net evaluations {on.row.unet_evals} vs {off.row.unet_evals}")
    for metric in perceptual_metrics():
        value_on, value_off = on.row.metrics.get(metric), off.row.metrics.get(metric)
        if value_on is not None and value_off is not None:
            parts.append(f"{get_metric(metric).label} {value_on:.4f} vs {value_off:.4f}")
    return "; ".join(parts) + "."


# --- figures ------------------------------------------------------------------------------------------------


def frame_kinds(types: str, frame_bits: Sequence[int]) -> list[str]:
    """Each frame's type as the per-frame chart names it: "I", "P", or "P, skipped" for a P-frame of no bits (a
    neural codec's skipped frame: the previous frame shown again; docs/FORMAT.md)."""
    return ["P, skipped" if t == "P" and b == 0 else t for t, b in zip(types, frame_bits, strict=False)]


def per_frame_figure(runs: Sequence[Any], metric: str):
    """Two panels over the frame index: `metric` per frame and bits per frame, one colour per codec; intra frames
    are drawn as diamonds on the metric curve and as outlined bars; the hover names each frame's type, and a
    skipped P-frame as such."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=(get_metric(metric).axis_label, "bits per frame"),
    )
    for i, run in enumerate(runs):
        colour = PALETTE[i % len(PALETTE)]
        types = run.row.frame_types
        values = run.row.per_frame.get(metric)
        x = list(range(len(run.row.frame_bits)))
        kinds = frame_kinds(types, run.row.frame_bits)
        symbols = ["diamond" if t == "I" else "circle" for t in types] or None
        sizes = [10 if t == "I" else 5 for t in types] or None
        if values is not None:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=list(values),
                    mode="lines+markers",
                    name=run.label,
                    legendgroup=run.label,
                    line=dict(color=colour),
                    marker=dict(symbol=symbols, size=sizes),
                    customdata=kinds or None,
                    hovertemplate="frame %{x} (%{customdata})<br>%{y:.4f}<extra>%{fullData.name}</extra>",
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Bar(
                x=x,
                y=list(run.row.frame_bits),
                name=run.label,
                legendgroup=run.label,
                showlegend=False,
                marker=dict(
                    color=colour, line=dict(color=["black" if t == "I" else colour for t in types] or colour, width=2)
                ),
                customdata=kinds or None,
                hovertemplate="frame %{x} (%{customdata})<br>%{y} bits<extra>%{fullData.name}</extra>",
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(title_text="frame (diamond / outlined bar: I-frame)", row=2, col=1)
    fig.update_layout(
        template="plotly_white",
        height=520,
        barmode="group",
        margin=dict(l=60, r=20, t=40, b=50),
        legend=dict(orientation="h", y=-0.18),
    )
    return fig


def timing_figure(runs: Sequence[Any]):
    """Encode and decode seconds of the whole clip per codec (grouped bars)."""
    import plotly.graph_objects as go

    labels = [r.label for r in runs]
    fig = go.Figure(
        [
            go.Bar(x=labels, y=[r.row.enc_s for r in runs], name="encode"),
            go.Bar(x=labels, y=[r.row.dec_s for r in runs], name="decode"),
        ]
    )
    fig.update_layout(
        template="plotly_white",
        height=340,
        barmode="group",
        title="seconds for the clip",
        margin=dict(l=50, r=20, t=40, b=40),
    )
    return fig


def stage_figure(runs: Sequence[Any]):
    """DiffVC's encoder time per stage (stacked bars), for each DiffVC run (TDIR on and off)."""
    import plotly.graph_objects as go

    neural = [r for r in runs if r.row.timings.get("diffusion") is not None]
    fig = go.Figure(
        [
            go.Bar(x=[r.label for r in neural], y=[r.row.timings.get(stage, 0.0) for r in neural], name=stage)
            for stage in ("motion", "latent", "entropy", "diffusion", "vae")
        ]
    )
    fig.update_layout(
        template="plotly_white",
        height=340,
        barmode="stack",
        title="DiffVC encoder stages (s; the encoder runs the decoder in its loop)",
        margin=dict(l=50, r=20, t=40, b=40),
    )
    return fig
