"""Which strength of the diffusion stage's anchor filter each QP wants (issue [2.2], QPP).

    python -m tools.anchor_gain_scan CLIP [CLIP ...] [--size 256x108] [--frames 16] [--qps 8 24 40 56]
        [--gains -1 -0.5 0 0.5 1] [--calibrate OUT [--from-scan SCAN.md]]
    python -m tools.anchor_gain_scan --synthetic 6 --data DATA_DIR --size 256x256 ...

The tiny stage's output is x0 = l^ + (1 + g) A(l^) + net(...), A its learned linear filter (`DiffusionConfig`,
`anchor_filter`, `anchor_gain`). This codes each clip with the pack's DiffVC (`--pack`, default the embedded one)
at each QP and shows its frames with the gain g fixed to each value (the stream filter levels,
`STREAM_FILTER_GAINS`, which add to a QP gain the pack's stage has: one coding per QP, the stage run at every gain,
`FrameCoder.also_show`), and prints LPIPS, DISTS and the fine-tuning objective's LPIPS + DISTS
per g, and the best g per QP (refined by a parabola). With `reference=codec` the rate is the same for every g.
`--synthetic N` scans N clips of the training photos instead (DATA_DIR/photos, the held-out ones excepted: whole
frames of photos 2-4x downscaled, a slow camera, up to two patches), as footage downscaled for coding looks.

With --calibrate OUT it then writes the pack to the folder OUT with the gain set to follow the best g's
trend over the QPs (`qp_trend`: each clip's best g less its own mean, averaged over the clips whose best is inside
the scanned gains; the content's share is left to the encoder's per-stream level, `filter=auto`), by
`codec.train.stages.calibrate_anchor_gain`, and its README saying so; --from-scan takes the objective from a scan
this tool printed before (its table, saved) instead of measuring again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from codec.diffvc import STREAM_FILTER_GAINS
from codec.diffvc.codec import load_model
from codec.diffvc.pack import write_pack
from codec.metrics import compute_metrics
from codec.registry import get_codec
from codec.train.stages import anchor_gains, calibrate_anchor_gain
from codec.video import Video, read_video

SYNTHETIC_SEED = 100


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


def qp_trend(best: dict[str, dict[int, float]], lowest: float, highest: float) -> dict[int, float]:
    """QP -> the mean over clips of each clip's best gain less that clip's mean best gain (zero mean over the QPs):
    how the best gain moves with the QP, the content's level taken out. A clip whose best gain is at one end of the
    scanned range at every QP (its optimum not measured: e.g. a smooth clip that wants the stage off) is left out."""
    measured = [gains for gains in best.values() if not all(g in (lowest, highest) for g in gains.values())]
    if not measured:
        raise ValueError("no clip's best gain lies inside the scanned range at any QP")
    qps = sorted(set.intersection(*(set(gains) for gains in measured)))
    relative = [[gains[q] - np.mean([gains[p] for p in qps]) for q in qps] for gains in measured]
    return {q: float(v) for q, v in zip(qps, np.mean(relative, axis=0), strict=True)}


def synthetic_clips(data_dir: Path, count: int, width: int, frames: int) -> dict[str, Video]:
    """`count` whole-frame clips of the training photos (`SyntheticMotionClips`, seed SYNTHETIC_SEED)."""
    from codec.train.data import MotionRanges, SyntheticMotionClips, list_photos, split_photos

    photos = split_photos(list_photos(data_dir / "photos"))[0]
    motion = MotionRanges(scale_range=(2.0, 4.0), max_pan=3.0, max_patches=2)
    clips = SyntheticMotionClips(photos, frames, width, SYNTHETIC_SEED, max(count, 1), motion)
    out = {}
    for i in range(count):
        rgb = (clips[i]["frames"].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        out[f"synthetic-{i}"] = Video(rgb, Fraction(25))
    return out


def scan(name: str, video: Video, pack: str, qps: list[int], gains: list[float]) -> dict[int, dict[float, float]]:
    """QP -> {g: LPIPS + DISTS of the P-frames} for `video` coded with `pack`'s DiffVC, printing a table row per
    (QP, g) and the best g."""
    codec = get_codec(f"diffvc:pack={pack}" if pack else "diffvc")
    levels = [STREAM_FILTER_GAINS.index(g) for g in gains]
    plan = replace(codec.sampling_plan(codec._model()[0]), filter_level=levels[0])
    source = Video(video.frames[1:], video.fps)
    table = {}
    for qp in qps:
        codings = codec._encode_levels(video, qp, plan, levels[1:])
        objective = {}
        for gain, coding in zip(gains, codings, strict=True):
            m = compute_metrics(source, Video(coding.reconstruction.frames[1:], video.fps), ["lpips", "dists"])
            lpips, dists = float(m["lpips"].mean()), float(m["dists"].mean())
            objective[gain] = lpips + dists
            print(f"| {name} | {qp} | {gain:+.2f} | {lpips:.4f} | {dists:.4f} | {lpips + dists:.4f} |", flush=True)
        print(f"| {name} | {qp} | best {best_gain(objective):+.3f} | | | |", flush=True)
        table[qp] = objective
    return table


def read_scan(path: Path) -> dict[str, dict[int, dict[float, float]]]:
    """clip -> QP -> {g: LPIPS + DISTS} from the table this tool prints (its "best" rows skipped)."""
    table: dict[str, dict[int, dict[float, float]]] = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].isdigit() and not cells[2].startswith("best"):
            table.setdefault(cells[0], {}).setdefault(int(cells[1]), {})[float(cells[2])] = float(cells[5])
    return table


def write_calibrated_pack(
    out: Path, pack: str, table: dict[str, dict[int, dict[float, float]]], footage: str, command: str
) -> None:
    """`pack` with its anchor gain following the scan's `qp_trend`, written to `out`, its README the base's plus
    how the gain was set (`command`)."""
    base, info = load_model(pack, "cpu")
    best = {clip: {qp: best_gain(obj) for qp, obj in per_qp.items()} for clip, per_qp in table.items()}
    scanned = sorted({g for per_qp in table.values() for obj in per_qp.values() for g in obj})
    current = anchor_gains(base)  # the scanned levels added to the pack's own gain, so the trend adds to it too
    trend = {qp: float(current[qp]) + g for qp, g in qp_trend(best, scanned[0], scanned[-1]).items()}
    model = calibrate_anchor_gain(base, trend)
    gains = ", ".join(f"QP {qp}: {g:+.3f}" for qp, g in sorted(trend.items()))
    readme = (info.path / "README.md").read_text().rstrip() + (
        "\n\n## The anchor filter's QP gain\n\nThe stage's anchor filter restores by (1 + g(QP)), g read from the QP "
        "prompt's tokens by one linear layer (`DiffusionConfig.anchor_gain`). It was set, not trained: on "
        f"{footage} the stage was coded at each QP with the filter's gain fixed to each of {scanned[0]:+g} ... "
        f"{scanned[-1]:+g}, the best gain per clip and QP read off LPIPS + DISTS, each clip's own mean taken out (the "
        "content's share, which `filter=auto` picks per stream), and the layer fitted by least squares to the "
        f"average trend (added to the base pack's own gain, if any), linear between those QPs and held beyond: "
        f"{gains}. Every other weight is the base pack's ({info.sha256[:16]}).\n\n```sh\n{command}\n```\n"
    )
    written = write_pack(out, model.config.to_dict(), model.trainable_state(), readme)
    print(f"calibrated pack: {written.path} ({written.sha256[:16]}); g(QP): {gains}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.anchor_gain_scan", description=__doc__.split("\n")[0])
    parser.add_argument("clips", nargs="*")
    parser.add_argument("--pack", default="", help="the model pack to scan and calibrate (default: the embedded one)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="scan N clips of the training photos")
    parser.add_argument("--data", type=Path, default=Path("/work/data"), help="with --synthetic: the data folder")
    parser.add_argument("--size", default="256x108", help="WxH of the clips; synthetic clips are W x W")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--qps", type=int, nargs="+", default=[8, 24, 40, 56])
    parser.add_argument("--gains", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    parser.add_argument("--calibrate", type=Path, metavar="OUT", help="write the calibrated pack to the folder OUT")
    parser.add_argument("--from-scan", type=Path, metavar="SCAN", help="with --calibrate: a saved scan's table")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    named = [Path(c).name for c in args.clips] + [f"{args.synthetic} synthetic clips"] * bool(args.synthetic)
    footage = f"{', '.join(named)} at {args.size}, {args.frames} frames"
    command = "python -m tools.anchor_gain_scan " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_scan:
        if not args.calibrate:
            parser.error("--from-scan needs --calibrate")
        write_calibrated_pack(args.calibrate, args.pack, read_scan(args.from_scan), footage, command)
        return 0
    unknown = [g for g in args.gains if g not in STREAM_FILTER_GAINS]
    if unknown:
        parser.error(f"--gains must be stream filter gains ({', '.join(f'{g:g}' for g in STREAM_FILTER_GAINS)})")
    videos = {Path(c).name: read_video(c, frames=args.frames, size=(width, height)) for c in args.clips}
    if args.synthetic:
        videos.update(synthetic_clips(args.data, args.synthetic, width, args.frames))
    if not videos:
        parser.error("give clips or --synthetic N")
    print("| clip | QP | g | LPIPS | DISTS | LPIPS + DISTS |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    table = {name: scan(name, video, args.pack, args.qps, sorted(args.gains)) for name, video in videos.items()}
    if args.calibrate:
        write_calibrated_pack(args.calibrate, args.pack, table, footage, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
