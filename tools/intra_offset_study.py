"""The I-frame QP offset's trade-off (issue [2.1]): bits against x265, GOP drift and the still clip, per offset.

    python -m tools.intra_offset_study [--spec condlc] [--offsets -16 -12 -8 -4 0]

For each offset, `spec` with `intra_qp_offset` set to it, through `tools.coding_efficiency`'s own measurements
(`clip_figures` on both evaluation clips, `still_figures`): bits relative to x265 at equal PSNR, the PSNR drop and
bytes ratio from the first 8 to the last 8 P-frames of the 32-frame GOP at QP 8 and 32, and on a still clip the
largest P-frame over the I-frame. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys

from tools.coding_efficiency import clip_figures, still_figures


def offset_row(spec: str, offset: int) -> str:
    """One markdown row: the figures of `spec` with its I-frame `offset` QPs from the P-frames'."""
    cells = [str(offset)]
    for clip in ("bbb", "carphone"):
        figures = clip_figures(clip, f"{spec}:intra_qp_offset={offset}")
        drops = " / ".join(f"{d['first_psnr'] - d['last_psnr']:.2f}" for d in figures["drift"])
        ratios = " / ".join(f"{d['last_bytes'] / d['first_bytes']:.2f}" for d in figures["drift"])
        cells += [f"{figures['bits_vs_x265']:.3f}x", f"{drops} dB", ratios]
    still = {s["qp"]: s["p_over_i"] for s in still_figures(f"{spec}:intra_qp_offset={offset}")}
    cells.append(f"{100 * still[8]:.2f} / {100 * still[32]:.2f} %")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.intra_offset_study", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="condlc")
    parser.add_argument("--offsets", type=int, nargs="+", default=[-16, -12, -8, -4, 0])
    args = parser.parse_args(argv)
    print(
        "| I-frame offset | BBB bits vs x265 | BBB drop QP 8 / 32 | BBB bytes ratio | carphone bits vs x265 "
        "| carphone drop | carphone bytes ratio | still clip: largest P / I at QP 8 / 32 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for offset in args.offsets:
        print(offset_row(args.spec, offset), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
