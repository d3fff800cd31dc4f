"""The figures of issue [2.1] in one command: where a neural codec's bits go against x265.

    python -m tools.coding_efficiency [--spec condlc] [--out docs/results/coding-efficiency]

For each evaluation clip (Big Buck Bunny 256x144 and carphone 176x144, 32 frames, intra period 32): the RD points of
x265 (medium, low delay, same intra period) and of the codec, PSNR only (the anchor's own metric for these
targets), and from them
* bits relative to x265 at equal PSNR, read off x265's curve (`codec.eval.report.rate_ratio_at_equal_quality`);
* the drift over the GOP: the first 8 against the last 8 P-frames, PSNR and bytes, at QP 8 and 32, and beside it
  what x265 does at the same quality: its own drop at one QP, and the least drop it can reach with its last 8 P-frames
  held to 1.2x the first 8's bytes (any QP for each half), the floor the clip itself sets for the drift target;
* real bits over the estimate from the likelihoods;
and, on Big Buck Bunny, the I-frame alone against x265-intra, a still clip (one frame repeated: each P-frame's bytes
against the I-frame's at the same stream QP) and the rates over every QP 0..63 (a 32-frame GOP, and 3 frames as
tests/test_pack.py); on each clip its first frame repeated over a whole GOP (what the P-frames keep of the
I-frame's quality when nothing changes: generation loss, x265 beside it).
Results go through the evaluation cache, so a rerun only measures what changed. Prints Markdown; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from codec.eval.engine import EvalRequest, evaluate
from codec.eval.report import rate_ratio_at_equal_quality
from codec.eval.rows import ResultRow
from codec.registry import get_codec
from codec.video import Video, read_video

REPO = Path(__file__).resolve().parents[1]
CLIPS = {
    "bbb": (REPO / "assets" / "clips" / "bigbuckbunny.mp4", (256, 144)),
    "carphone": (Path("/work/data/eval-clips/carphone_pristine.mp4"), None),
}
ANCHOR = "x265"
ANCHOR_QPS = (12, 17, 22, 27, 32, 37, 42, 47, 51)
CODEC_QPS = (0, 8, 16, 24, 32, 40, 48, 56, 63)
DRIFT_QPS = (8, 32)
DRIFT_BYTES_RATIO = 1.2  # the drift target: the last 8 P-frames at most 1.2x the first 8's bytes, ...
DRIFT_DROP_DB = 1.0  # ... and within 1 dB of their PSNR
FRAMES = 32


def rd(
    video: Video, specs: dict[str, tuple[int, ...]], name: str, metrics: tuple[str, ...] = ("psnr",)
) -> dict[str, list[ResultRow]]:
    """spec -> its rows (PSNR only unless asked), through the evaluation cache."""
    from codec.weights import cache_root

    request = EvalRequest(
        video=video,
        specs=list(specs),
        qps=[],
        qps_by_spec=specs,
        source=name,
        metrics=list(metrics),
        cache_dir=cache_root() / "eval-cache",
    )
    rows = evaluate(request, lambda done, total, label: print(f"  {name}: {done}/{total} {label}", file=sys.stderr))
    out: dict[str, list[ResultRow]] = {}
    for row in rows:
        out.setdefault(row.spec, []).append(row)
    return out


def drift(row: ResultRow) -> dict:
    """First 8 against last 8 P-frames of a 32-frame GOP: mean PSNR and bytes."""
    bits = np.array(row.frame_bits) / 8
    psnr = np.array(row.per_frame["psnr"])
    return {
        "qp": row.qp,
        "first_psnr": float(psnr[1:9].mean()),
        "last_psnr": float(psnr[-8:].mean()),
        "first_bytes": float(bits[1:9].mean()),
        "last_bytes": float(bits[-8:].mean()),
        "i_bytes": float(bits[0]),
        "i_psnr": float(psnr[0]),
    }


def anchor_drift(anchor: list[ResultRow], first_psnr: float) -> dict:
    """What the anchor does over the same GOP with its first 8 P-frames at `first_psnr`: its drop to the last 8 at
    one QP, and the least drop it reaches when its last 8 may spend at most DRIFT_BYTES_RATIO x the first 8's bytes,
    any QP for each half. Both read off its constant-QP rows (each half a curve over the anchor's QPs, log bytes
    interpolated linearly in PSNR, held at the curves' ends outside them); where that least drop exceeds
    DRIFT_DROP_DB the clip's later frames are too much harder than its first to meet the drift target at this
    quality, whatever the rate control."""
    halves = [drift(row) for row in anchor]
    first = sorted((h["first_psnr"], math.log(h["first_bytes"]), h["first_psnr"] - h["last_psnr"]) for h in halves)
    last = sorted((math.log(h["last_bytes"]), h["last_psnr"]) for h in halves)
    psnrs, log_bytes, drops = (np.array(v) for v in zip(*first, strict=True))
    budget = float(np.interp(first_psnr, psnrs, log_bytes)) + math.log(DRIFT_BYTES_RATIO)
    last_log_bytes, last_psnrs = (np.array(v) for v in zip(*last, strict=True))
    return {
        "anchor_drop": float(np.interp(first_psnr, psnrs, drops)),
        "anchor_least_drop": first_psnr - float(np.interp(budget, last_log_bytes, last_psnrs)),
    }


def clip_figures(name: str, spec: str) -> dict:
    path, size = CLIPS[name]
    video = read_video(path, frames=FRAMES, size=size)
    curves = rd(video, {ANCHOR: ANCHOR_QPS, spec: CODEC_QPS}, name)
    ratio, note = rate_ratio_at_equal_quality(curves[ANCHOR], curves[spec], "psnr")
    rows = {r.qp: r for r in curves[spec]}
    return {
        "clip": name,
        "size": f"{video.width}x{video.height}",
        "bits_vs_x265": ratio,
        "note": note,
        "points": [
            {"qp": r.qp, "bpp": r.bpp, "psnr": r.metrics["psnr"], "real_over_estimated": r.real_over_estimated}
            for r in curves[spec]
        ],
        "anchor": [{"qp": r.qp, "bpp": r.bpp, "psnr": r.metrics["psnr"]} for r in curves[ANCHOR]],
        "drift": [drift_beside_anchor(rows[q], curves[ANCHOR]) for q in DRIFT_QPS],
    }


def drift_beside_anchor(row: ResultRow, anchor: list[ResultRow]) -> dict:
    """`drift` of the codec's row and `anchor_drift` at its first 8 P-frames' PSNR, in one dict."""
    figures = drift(row)
    return figures | anchor_drift(anchor, figures["first_psnr"])


def intra_figures(spec: str) -> dict:
    """The first frame of Big Buck Bunny alone: the codec's I-frame against x265-intra."""
    path, size = CLIPS["bbb"]
    video = read_video(path, frames=1, size=size)
    curves = rd(
        video,
        {f"{ANCHOR}:intra_period=1": ANCHOR_QPS, spec: CODEC_QPS, f"{spec}:intra=learned": CODEC_QPS},
        "bbb-intra",
    )
    anchor = curves[f"{ANCHOR}:intra_period=1"]
    return {
        k: dict(zip(("ratio", "note"), rate_ratio_at_equal_quality(anchor, v, "psnr"), strict=True))
        for k, v in curves.items()
        if k != f"{ANCHOR}:intra_period=1"
    }


def still_clip(name: str, frames: int, start: int = 0) -> Video:
    """Frame `start` of evaluation clip `name` repeated `frames` times."""
    path, size = CLIPS[name]
    frame = read_video(path, start=start, frames=1, size=size)
    return Video(np.repeat(frame.frames, frames, axis=0), frame.fps)


def still_figures(spec: str) -> list[dict]:
    """Frame 24 of Big Buck Bunny repeated 8 times: each P-frame's bytes over the I-frame's."""
    still = still_clip("bbb", 8, start=24)
    codec = get_codec(spec)
    out = []
    for qp in (8, 32, 56):
        bits = codec.encode(still, qp).frame_bits
        out.append(
            {"qp": qp, "i_bytes": bits[0] / 8, "max_p_bytes": max(bits[1:]) / 8, "p_over_i": max(bits[1:]) / bits[0]}
        )
    return out


STILL_GOP_ANCHOR_QPS = (22, 32)  # x265's, for reference: about the codec's quality at QP 8 and 32


def still_gop_figures(spec: str) -> list[dict]:
    """Each clip's first frame repeated over a whole GOP (32 frames): what the P-frames keep of the I-frame's
    quality when nothing changes (a codec without generation loss holds it; x265 beside it for reference)."""
    out = []
    for name, (path, _) in CLIPS.items():
        if not path.is_file():
            continue
        still = still_clip(name, FRAMES)
        curves = rd(still, {spec: DRIFT_QPS, ANCHOR: STILL_GOP_ANCHOR_QPS}, f"{name}-still-gop")
        for codec_spec in (spec, ANCHOR):
            for row in curves[codec_spec]:
                psnr = row.per_frame["psnr"]
                out.append(
                    {
                        "clip": name,
                        "spec": codec_spec,
                        "qp": row.qp,
                        "i_psnr": float(psnr[0]),
                        "first_p_psnr": float(psnr[1]),
                        "last_p_psnr": float(psnr[-1]),
                        "p_bytes": float(np.sum(row.frame_bits[1:]) / 8),
                    }
                )
    return out


def rate_range(spec: str, frames: int, start: int = 0) -> dict:
    """Bytes at every QP 0..63 on `frames` frames of Big Buck Bunny from `start`: the targets' GOP (32 from 0), and
    tests/test_pack.py's footage (3 from 24), where the HEVC I-frame's QP, which moves once every 3 of ours, rules."""
    path, size = CLIPS["bbb"]
    footage = read_video(path, start=start, frames=frames, size=size)
    codec = get_codec(spec)
    sizes = [codec.encode(footage, qp).num_bytes for qp in range(64)]
    rises = [qp for qp in range(63) if sizes[qp + 1] >= sizes[qp]]
    return {"frames": frames, "bytes": sizes, "span": sizes[0] / sizes[-1], "rises_at": rises}


def markdown(figures: dict) -> str:
    lines = ["| clip | bits vs x265 at equal PSNR | real / estimated bits (QP 0..63) |", "| --- | --- | --- |"]
    for c in figures["clips"]:
        ratios = [p["real_over_estimated"] for p in c["points"] if p["real_over_estimated"]]
        lines.append(
            f"| {c['clip']} {c['size']} | {c['bits_vs_x265']:.2f}x ({c['note']}) | "
            f"{min(ratios):.3f} - {max(ratios):.3f} |"
        )
    lines += [
        "",
        "| clip | QP | I-frame | first 8 P: PSNR, bytes | last 8 P: PSNR, bytes | PSNR drop | bytes ratio "
        "| x265 at the first 8's PSNR: drop at one QP | x265: least drop, last 8 at 1.2x bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in figures["clips"]:
        for d in c["drift"]:
            lines.append(
                f"| {c['clip']} | {d['qp']} | {d['i_bytes']:.0f} B, {d['i_psnr']:.2f} dB | "
                f"{d['first_psnr']:.2f} dB, {d['first_bytes']:.0f} B | {d['last_psnr']:.2f} dB, "
                f"{d['last_bytes']:.0f} B | {d['first_psnr'] - d['last_psnr']:.2f} dB | "
                f"{d['last_bytes'] / d['first_bytes']:.2f} | {d['anchor_drop']:.2f} dB | "
                f"{d['anchor_least_drop']:.2f} dB |"
            )
    lines += ["", "| I-frame coder | bits vs x265-intra at equal PSNR |", "| --- | --- |"]
    lines += [
        f"| {k} | {v['ratio']:.2f}x ({v['note']}) |" if v["ratio"] else f"| {k} | n/a ({v['note']}) |"
        for k, v in figures["intra"].items()
    ]
    lines += ["", "| still clip, QP | I-frame bytes | largest P-frame bytes | P / I |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {s['qp']} | {s['i_bytes']:.0f} | {s['max_p_bytes']:.0f} | {100 * s['p_over_i']:.2f} % |"
        for s in figures["still"]
    ]
    lines += [
        "",
        "| still GOP (frame 0 x 32) | QP | I-frame PSNR | first P | last P | lost over the GOP | P-frames' bytes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {s['clip']}, {s['spec']} | {s['qp']} | {s['i_psnr']:.2f} dB | {s['first_p_psnr']:.2f} dB | "
        f"{s['last_p_psnr']:.2f} dB | {s['first_p_psnr'] - s['last_p_psnr']:.2f} dB | {s['p_bytes']:.0f} |"
        for s in figures["still_gop"]
    ]
    lines.append("")
    lines += [
        f"Rates over QP 0..63 ({r['frames']} frames): {r['bytes'][0]} -> {r['bytes'][-1]} bytes, {r['span']:.1f}x; "
        f"QPs where the next QP does not cost fewer bytes: {r['rises_at'] or 'none'}"
        for r in figures["rates"]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.coding_efficiency", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="condlc", help="the codec spec to measure (default condlc)")
    parser.add_argument("--out", type=Path, default=Path("out/coding-efficiency"))
    args = parser.parse_args(argv)
    figures = {
        "spec": args.spec,
        "clips": [clip_figures(name, args.spec) for name in CLIPS if CLIPS[name][0].is_file()],
        "intra": intra_figures(args.spec),
        "still": still_figures(args.spec),
        "still_gop": still_gop_figures(args.spec),
        "rates": [rate_range(args.spec, FRAMES), rate_range(args.spec, 3, start=24)],
    }
    write_figures(args.out, figures, markdown(figures))
    return 0


def write_figures(out: Path, figures: dict, text: str) -> None:
    """figures.json and figures.md (the Markdown `text`) into `out`; the Markdown is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    (out / "figures.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
