"""What a fixed sharpening of the codec's frames buys on the perceptual metrics (issue [2.2]).

    python -m tools.unsharp_ceiling [--spec condlc] [--amounts 0.25 0.5 0.75 1.0] [--qps 8 24 40 56]

For each evaluation clip (Big Buck Bunny 256x144 and carphone, 32 frames, intra period 32): the spec's frames at
each QP, then the same frames through `codec.diffvc.latent.unsharp_mask` at each amount (rounded to 8 bits, as a
decoder would show them), with LPIPS and DISTS against the source. Prints the per-QP values and the BD-rate of
each amount against the frames as coded, at the same rates (a postfilter spends no bits). This is the teacher of
the `distill` training stage and the ceiling it is measured against.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from codec.diffvc.latent import unsharp_mask
from codec.eval.report import bd_rate
from codec.metrics import compute_metrics
from codec.registry import get_codec
from codec.video import Video, frames_to_tensor, read_video, tensor_to_frames
from tools.coding_efficiency import CLIPS, FRAMES

METRICS = ("lpips", "dists")


@dataclass(frozen=True)
class SharpenedPoint:
    """One QP's coded stream, its frames sharpened: the stream's rate and the metrics (a `report.RatePoint`)."""

    qp: int
    bpp: float
    metrics: dict[str, float]


def sharpened(video: Video, amount: float) -> Video:
    if amount == 0:
        return video
    with torch.no_grad():
        frames = tensor_to_frames(unsharp_mask(frames_to_tensor(video.frames), amount))
    return Video(frames, video.fps)


def clip_rows(name: str, spec: str, qps: list[int], amounts: list[float]) -> dict[float, list[SharpenedPoint]]:
    """amount -> one point per QP: bpp (of the coded stream) and the metrics of the sharpened frames."""
    path, size = CLIPS[name]
    video = read_video(path, frames=FRAMES, size=size)
    rows: dict[float, list[SharpenedPoint]] = {a: [] for a in [0.0, *amounts]}
    for qp in qps:
        encoded = get_codec(spec).encode(video, qp)
        bpp = 8 * len(encoded.bitstream) / (video.frames.shape[0] * video.width * video.height)
        for amount, out in rows.items():
            values = compute_metrics(video, sharpened(encoded.reconstruction, amount), list(METRICS))
            out.append(SharpenedPoint(qp, bpp, {m: float(values[m].mean()) for m in METRICS}))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.unsharp_ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="condlc")
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--qps", type=int, nargs="+", default=[8, 24, 40, 56])
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    args = parser.parse_args(argv)
    per_qp = " | ".join(f"DISTS / LPIPS at QP {q}" for q in args.qps)
    print(f"| clip | unsharp amount | {per_qp} | BD-rate DISTS | LPIPS |")
    print(f"| --- | --- | {' | '.join('---' for _ in args.qps)} | --- | --- |")
    for name in args.clips:
        rows = clip_rows(name, args.spec, args.qps, args.amounts)
        for amount, points in rows.items():
            cells = " | ".join(f"{p.metrics['dists']:.4f} / {p.metrics['lpips']:.4f}" for p in points)
            bd = [bd_rate(rows[0.0], points, m)[0] if amount else 0.0 for m in ("dists", "lpips")]
            print(f"| {name} | {amount:g} | {cells} | {bd[0]:+.1f} % | {bd[1]:+.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
