"""The figures of issue [2.2] in one command: what the diffusion stage adds on top of its own codec.

    python -m tools.perceptual_stage [--pack PACK] [--out docs/results/perceptual-stage]

For each evaluation clip (Big Buck Bunny 256x144 and carphone 176x144, 32 frames, intra period 32), through the
evaluation cache: x265 (medium, low delay, the same intra period) and the pack's `condlc`, `diffvc` (TDIR on, the
default ratio) and `diffvc:tdir=false` at the same QPs, with PSNR, LPIPS, DISTS, VMAF and tLP. From them:
* BD-rate of `diffvc` against `condlc` (same codec, stage on against off) on each metric;
* bits relative to x265 at equal DISTS and LPIPS, read off x265's curve, for `diffvc` and `condlc`;
* TDIR: U-Net evaluations and diffusion seconds with TDIR on over off, and DISTS on over off per QP and as BD-rate;
and, on Big Buck Bunny, the same zoomed crop of one frame from x265, `condlc` and `diffvc` at matched bits
(x265's QP whose stream is closest in bytes to diffvc's), written as `crop.png`. Prints Markdown; writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.views import most_textured_window
from codec.eval.report import bd_rate, rate_ratio_at_equal_quality
from codec.eval.rows import ResultRow
from codec.registry import get_codec
from codec.video import read_video
from tools.coding_efficiency import ANCHOR, ANCHOR_QPS, CLIPS, FRAMES, rd, write_figures

CODEC_QPS = (8, 16, 24, 32, 40, 48, 56)
METRICS = ("psnr", "lpips", "dists", "vmaf", "tlp")
CROP_QP, CROP_FRAME, CROP_SIZE, CROP_ZOOM = 32, 20, (96, 64), 3


def specs(pack: str) -> dict[str, str]:
    suffix = f":pack={pack}" if pack else ""
    return {"condlc": f"condlc{suffix}", "diffvc": f"diffvc{suffix}", "tdir_off": f"diffvc{suffix}:tdir=false"}


def clip_figures(name: str, pack: str) -> dict:
    path, size = CLIPS[name]
    video = read_video(path, frames=FRAMES, size=size)
    named = specs(pack)
    curves = rd(video, {ANCHOR: ANCHOR_QPS, **{s: CODEC_QPS for s in named.values()}}, name, METRICS)
    condlc, diffvc, tdir_off = (curves[named[k]] for k in ("condlc", "diffvc", "tdir_off"))
    return {
        "clip": name,
        "size": f"{video.width}x{video.height}",
        "diffvc_vs_condlc": {m: bd_rate(condlc, diffvc, m) for m in METRICS},
        "vs_x265": {
            k: {m: rate_ratio_at_equal_quality(curves[ANCHOR], curves[named[k]], m) for m in ("dists", "lpips")}
            for k in ("diffvc", "condlc")
        },
        "tdir": tdir_figures(diffvc, tdir_off),
        "points": {k: [point(r) for r in curves[s]] for k, s in named.items()},
        "anchor": [point(r) for r in curves[ANCHOR]],
    }


def point(row: ResultRow) -> dict:
    """A point of the JSON this writes: QP, bpp and the METRICS."""
    return {"qp": row.qp, "bpp": row.bpp, **{m: row.metrics[m] for m in METRICS}}


def tdir_figures(on: list[ResultRow], off: list[ResultRow]) -> dict:
    """TDIR on against off at the same QPs: U-Net evaluations, diffusion seconds, DISTS."""

    def total(rows: list[ResultRow], key) -> float:
        return float(sum(key(r) for r in rows))

    by_qp = {r.qp: r for r in off}
    return {
        "evals_ratio": total(on, lambda r: r.unet_evals) / total(off, lambda r: r.unet_evals),
        "diffusion_s_ratio": total(on, lambda r: r.timings["diffusion"]) / total(off, lambda r: r.timings["diffusion"]),
        "dists_change": {r.qp: r.metrics["dists"] / by_qp[r.qp].metrics["dists"] - 1 for r in on},
        "dists_bd_rate": bd_rate(off, on, "dists"),
    }


def crop_figure(pack: str, out: Path) -> dict:
    """One frame of Big Buck Bunny, its most textured CROP_SIZE window, from x265 / condlc / diffvc at matched bits."""
    path, size = CLIPS["bbb"]
    video = read_video(path, frames=FRAMES, size=size)
    named = specs(pack)
    neural = {k: get_codec(named[k]).encode(video, CROP_QP) for k in ("condlc", "diffvc")}
    target = neural["diffvc"].num_bytes
    x265 = get_codec(ANCHOR)
    anchor_qp, anchor = min(
        ((qp, x265.encode(video, qp)) for qp in range(12, 52)), key=lambda item: abs(item[1].num_bytes - target)
    )
    original = video.frames[CROP_FRAME]
    top, left = most_textured_window(original, CROP_SIZE)
    panels = [
        ("original", original, None),
        (f"x265 QP {anchor_qp}", anchor.reconstruction.frames[CROP_FRAME], anchor),
        (f"condlc QP {CROP_QP}", neural["condlc"].reconstruction.frames[CROP_FRAME], neural["condlc"]),
        (f"diffvc QP {CROP_QP}", neural["diffvc"].reconstruction.frames[CROP_FRAME], neural["diffvc"]),
    ]
    tiles = []
    for label, frame, encoded in panels:
        crop = frame[top : top + CROP_SIZE[1], left : left + CROP_SIZE[0]]
        bytes_note = f", {encoded.num_bytes} B" if encoded is not None else ""
        tiles.append(labelled(np.kron(crop, np.ones((CROP_ZOOM, CROP_ZOOM, 1), np.uint8)), label + bytes_note))
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out / "crop.png")
    return {
        "frame": CROP_FRAME,
        "window": [left, top, *CROP_SIZE],
        "diffvc_bytes": target,
        "condlc_bytes": neural["condlc"].num_bytes,
        "x265_qp": anchor_qp,
        "x265_bytes": anchor.num_bytes,
    }


def labelled(image: np.ndarray, label: str) -> np.ndarray:
    """The image with a 16-pixel caption strip above it and a 2-pixel white gap on its right."""
    strip = Image.new("RGB", (image.shape[1] + 2, 16), "white")
    ImageDraw.Draw(strip).text((3, 2), label, fill="black")
    body = np.pad(image, ((0, 0), (0, 2), (0, 0)), constant_values=255)
    return np.concatenate([np.asarray(strip), body], axis=0)


def markdown(figures: dict) -> str:
    def pct(pair) -> str:
        return "n/a" if pair[0] is None else f"{pair[0]:+.1f} %"

    def times(pair) -> str:
        return "n/a" if pair[0] is None else f"{pair[0]:.2f}x"

    lines = [
        "| clip | diffvc vs condlc BD-rate: PSNR | LPIPS | DISTS | VMAF | bits vs x265 at equal DISTS: diffvc "
        "| condlc | at equal LPIPS: diffvc | condlc |",
        "| --- " * 9 + "|",
    ]
    for c in figures["clips"]:
        bd, vs = c["diffvc_vs_condlc"], c["vs_x265"]
        lines.append(
            f"| {c['clip']} {c['size']} | {pct(bd['psnr'])} | {pct(bd['lpips'])} | {pct(bd['dists'])} | "
            f"{pct(bd['vmaf'])} | "
            f"{times(vs['diffvc']['dists'])} | {times(vs['condlc']['dists'])} | "
            f"{times(vs['diffvc']['lpips'])} | {times(vs['condlc']['lpips'])} |"
        )
    lines += [
        "",
        "| clip | TDIR on / off: U-Net evals | diffusion time | DISTS BD-rate | DISTS per QP |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in figures["clips"]:
        t = c["tdir"]
        per_qp = ", ".join(f"{qp}: {100 * v:+.1f} %" for qp, v in t["dists_change"].items())
        lines.append(
            f"| {c['clip']} | {t['evals_ratio']:.2f} | {t['diffusion_s_ratio']:.2f} | "
            f"{pct(t['dists_bd_rate'])} | {per_qp} |"
        )
    lines += ["", "| clip | spec | QP | bpp | PSNR | LPIPS | DISTS | VMAF | tLP |", "| --- " * 9 + "|"]
    for c in figures["clips"]:
        for name, points in c["points"].items():
            lines += [
                f"| {c['clip']} | {name} | {p['qp']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['lpips']:.4f} | "
                f"{p['dists']:.4f} | {p['vmaf']:.2f} | {p['tlp']:.4f} |"
                for p in points
            ]
    crop = figures.get("crop")
    if crop:
        lines += [
            "",
            f"Crop (`crop.png`): frame {crop['frame']}, window (x, y, w, h) {crop['window']}; diffvc "
            f"{crop['diffvc_bytes']} B, condlc {crop['condlc_bytes']} B, x265 QP {crop['x265_qp']} "
            f"{crop['x265_bytes']} B.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perceptual_stage", description=__doc__.split("\n")[0])
    parser.add_argument("--pack", default="", help="the model pack (default: the embedded one)")
    parser.add_argument("--out", type=Path, default=Path("out/perceptual-stage"))
    parser.add_argument("--no-crop", action="store_true", help="skip the crop figure")
    parser.add_argument(
        "--clips",
        nargs="+",
        choices=sorted(CLIPS),
        default=sorted(CLIPS),
        help="which evaluation clips (default both; one per process runs them side by side)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict = {
        "pack": args.pack or "default",
        "clips": [clip_figures(name, args.pack) for name in args.clips if CLIPS[name][0].is_file()],
    }
    if not args.no_crop:
        figures["crop"] = crop_figure(args.pack, args.out)
    write_figures(args.out, figures, markdown(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
