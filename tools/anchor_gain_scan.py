"""Which strength of the diffusion stage's anchor filter each QP wants (issue [2.2], QPP).

    python -m tools.anchor_gain_scan CLIP [--size 256x108] [--frames 16] [--qps 8 24 40 56] [--gains -1 -0.5 0 0.5 1 2]
        [--calibrate OUT [--from-scan SCAN.md]]

The tiny stage's output is x0 = l^ + (1 + g) A(l^) + net(...), A its learned linear filter (`DiffusionConfig`,
`anchor_filter`, `anchor_gain`). This codes CLIP with the embedded pack's DiffVC at each QP with the gain g fixed
to each value (the QP prompt then changes nothing in it) and prints PSNR, LPIPS, DISTS and the fine-tuning
objective's LPIPS + DISTS per g. With `reference=codec` the rate is the same for every g. If the best g moved with
the QP, a QP-conditioned gain (`--anchor-gain`) would have something to learn from the prompt.

With --calibrate OUT it then writes the embedded pack to the folder OUT with the gain set to follow, QP by QP, the
best g measured (the objective's minimum, refined by a parabola through the best gain and its neighbours;
`codec.train.stages.calibrate_anchor_gain`), and its README saying so; --from-scan takes the gains from a scan
this tool printed before (its table, saved) instead of measuring again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from codec.diffvc.codec import load_model
from codec.diffvc.pack import write_pack
from codec.metrics import compute_metrics
from codec.registry import get_codec
from codec.train.stages import calibrate_anchor_gain, with_anchor_gain
from codec.video import read_video


def best_gain(objective: dict[float, float]) -> float:
    """The gain at the minimum of `objective` (gain -> LPIPS + DISTS), refined by the vertex of the parabola through
    the best scanned gain and its two neighbours (kept between them); the best scanned gain at either end."""
    gains = sorted(objective)
    i = min(range(len(gains)), key=lambda k: objective[gains[k]])
    if i in (0, len(gains) - 1):
        return gains[i]
    (a, fa), (b, fb), (c, fc) = ((g, objective[g]) for g in gains[i - 1 : i + 2])
    denominator = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    if denominator == 0:
        return b
    vertex = b - 0.5 * ((b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)) / denominator
    return min(max(vertex, a), c)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.anchor_gain_scan", description=__doc__.split("\n")[0])
    parser.add_argument("clip")
    parser.add_argument("--size", default="256x108")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--qps", type=int, nargs="+", default=[8, 24, 40, 56])
    parser.add_argument("--gains", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--calibrate", type=Path, metavar="OUT", help="write the calibrated pack to the folder OUT")
    parser.add_argument("--from-scan", type=Path, metavar="SCAN", help="with --calibrate: a saved scan's table")
    args = parser.parse_args(argv)
    if args.from_scan:
        if not args.calibrate:
            parser.error("--from-scan needs --calibrate")
        base, info = load_model("", "cpu")
        best = {qp: best_gain(objective) for qp, objective in read_scan(args.from_scan).items()}
        write_calibrated_pack(args.calibrate, base, info.path, best, f"{Path(args.clip).name} at {args.size}")
        return 0
    width, height = (int(v) for v in args.size.split("x"))
    video = read_video(args.clip, frames=args.frames, size=(width, height))
    base, info = load_model("", "cpu")
    model = with_anchor_gain(base).eval()
    codec = get_codec("diffvc")
    codec._model = lambda: (model, info, torch.device("cpu"))  # the embedded pack with its gain set below
    print("| QP | g | PSNR | LPIPS | DISTS | LPIPS + DISTS |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    best = {}
    for qp in args.qps:
        objective = {}
        for gain in args.gains:
            with torch.no_grad():
                model.diffusion.anchor_gain.weight.zero_()
                model.diffusion.anchor_gain.bias.fill_(gain)
            m = compute_metrics(video, codec.encode(video, qp).reconstruction, ["psnr", "lpips", "dists"])
            lpips, dists = m["lpips"].mean(), m["dists"].mean()
            objective[gain] = float(lpips + dists)
            print(f"| {qp} | {gain:+.2f} | {m['psnr'].mean():.2f} | {lpips:.4f} | {dists:.4f} | {lpips + dists:.4f} |")
        best[qp] = best_gain(objective)
        print(f"| {qp} | best {best[qp]:+.3f} | | | | |", flush=True)
    if args.calibrate:
        write_calibrated_pack(args.calibrate, base, info.path, best, f"{Path(args.clip).name} at {args.size}")
    return 0


def read_scan(path: Path) -> dict[int, dict[float, float]]:
    """QP -> {g: LPIPS + DISTS} from the table this tool prints (its "best" rows skipped)."""
    table: dict[int, dict[float, float]] = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit() and not cells[1].startswith("best"):
            table.setdefault(int(cells[0]), {})[float(cells[1])] = float(cells[5])
    return table


def write_calibrated_pack(out: Path, base, base_folder: Path, best: dict[int, float], footage: str) -> None:
    """`base` with its anchor gain following `best` (QP -> g) written as a pack to `out`, its README the base's
    plus how the gain was set."""
    model = calibrate_anchor_gain(base, best)
    gains = ", ".join(f"QP {qp}: {g:+.3f}" for qp, g in sorted(best.items()))
    readme = (base_folder / "README.md").read_text().rstrip() + (
        f"\n\n## The anchor filter's QP gain\n\nSet by `python -m tools.anchor_gain_scan ... --calibrate` from the "
        f"best fixed gain measured at each QP on {footage} (LPIPS + DISTS), interpolated between them: {gains}.\n"
    )
    info = write_pack(out, model.config.to_dict(), model.trainable_state(), readme)
    print(f"calibrated pack: {info.path} ({info.sha256[:16]})")


if __name__ == "__main__":
    sys.exit(main())
