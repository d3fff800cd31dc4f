"""Which strength of the diffusion stage's anchor filter each QP wants (issue [2.2], QPP).

    python -m tools.anchor_gain_scan CLIP [--size 256x108] [--frames 16] [--qps 8 24 40 56] [--gains -1 -0.5 0 0.5 1 2]

The tiny stage's output is x0 = l^ + (1 + g) A(l^) + net(...), A its learned linear filter (`DiffusionConfig`,
`anchor_filter`, `anchor_gain`). This codes CLIP with the embedded pack's DiffVC at each QP with the gain g fixed
to each value (the QP prompt then changes nothing in it) and prints PSNR, LPIPS, DISTS and the fine-tuning
objective's LPIPS + DISTS per g. With `reference=codec` the rate is the same for every g. If the best g moved with
the QP, a QP-conditioned gain (`--anchor-gain`) would have something to learn from the prompt.
"""

from __future__ import annotations

import argparse
import sys

import torch

from codec.diffvc.codec import load_model
from codec.metrics import compute_metrics
from codec.registry import get_codec
from codec.train.stages import with_anchor_gain
from codec.video import read_video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.anchor_gain_scan", description=__doc__.split("\n")[0])
    parser.add_argument("clip")
    parser.add_argument("--size", default="256x108")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--qps", type=int, nargs="+", default=[8, 24, 40, 56])
    parser.add_argument("--gains", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    video = read_video(args.clip, frames=args.frames, size=(width, height))
    base, info = load_model("", "cpu")
    model = with_anchor_gain(base).eval()
    codec = get_codec("diffvc")
    codec._model = lambda: (model, info, torch.device("cpu"))  # the embedded pack with its gain set below
    print("| QP | g | PSNR | LPIPS | DISTS | LPIPS + DISTS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for qp in args.qps:
        for gain in args.gains:
            with torch.no_grad():
                model.diffusion.anchor_gain.bias.fill_(gain)
            m = compute_metrics(video, codec.encode(video, qp).reconstruction, ["psnr", "lpips", "dists"])
            lpips, dists = m["lpips"].mean(), m["dists"].mean()
            print(f"| {qp} | {gain:+.2f} | {m['psnr'].mean():.2f} | {lpips:.4f} | {dists:.4f} | {lpips + dists:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
