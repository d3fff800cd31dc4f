"""What computing the reference clip's deep features once saves (issue [2.4], item 1).

    python -m tools.metric_speed [--frames 16] [--codings 4] [--repeats 3]

The example clip (Big Buck Bunny 256x144) against `--codings` x265 encodes of it (QP 22, 27, 32, 37, ...), the way a
comparison or an RD sweep measures: LPIPS and DISTS of every coding, once with the reference features kept
(`codec.metrics.REFERENCE_FEATURES`, the default) and once with the cache disabled (every call runs VGG16 on the
reference again). Both in the same run, alternated, the best of `--repeats`; prints seconds and their ratio, and
checks that the values are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from codec.metrics import REFERENCE_FEATURES, compute_metrics
from codec.registry import get_codec
from codec.video import read_video

CLIP = Path(__file__).resolve().parents[1] / "assets" / "clips" / "bigbuckbunny.mp4"
METRICS = ("lpips", "dists")


def measure_all(reference, codings, cache_bytes: int) -> tuple[float, list[dict[str, np.ndarray]]]:
    """Seconds to measure every coding against the reference, with the feature cache holding `cache_bytes`."""
    REFERENCE_FEATURES.clear()
    kept = REFERENCE_FEATURES.max_bytes
    REFERENCE_FEATURES.max_bytes = cache_bytes
    try:
        start = time.perf_counter()
        values = [compute_metrics(reference, coded, METRICS) for coded in codings]
        return time.perf_counter() - start, values
    finally:
        REFERENCE_FEATURES.max_bytes = kept
        REFERENCE_FEATURES.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.metric_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--codings", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    reference = read_video(CLIP, frames=args.frames, size=(256, 144))
    x265 = get_codec("x265")
    codings = [x265.encode(reference, 22 + 5 * i).reconstruction for i in range(args.codings)]
    compute_metrics(reference, codings[0], METRICS)  # load the networks
    cached, uncached = [], []
    for _ in range(args.repeats):
        seconds, with_cache = measure_all(reference, codings, 2**40)
        cached.append(seconds)
        seconds, without = measure_all(reference, codings, 0)
        uncached.append(seconds)
    same = all(np.array_equal(a[m], b[m]) for a, b in zip(with_cache, without) for m in METRICS)
    print(f"| {args.codings} codings of {args.frames} frames, 256x144, LPIPS + DISTS | seconds |")
    print("| --- | --- |")
    print(f"| reference features computed for every coding | {min(uncached):.2f} |")
    print(f"| reference features once | {min(cached):.2f} |")
    print(f"| ratio | {min(cached) / min(uncached):.2f} |")
    print(f"\nvalues identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
