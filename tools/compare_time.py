"""Where the app's default comparison spends its time, in one process, without a browser (issue [2.4]).

    python -m tools.compare_time [--threads N] [--lanes 1|2] [--frames 16] [--max-side 256] [--comparison-only]

Runs the Compare tab's handler (`CompareHandler.run`) at the app's defaults (the example clip, the embedded pack,
every metric) in a fresh results folder, after the app's preload, with the threads and lanes the app would choose
(or those given), and prints the total, each codec's share from the comparison's own progress messages and the
Timing tab's table; then each metric's time on 16 frames of the clip against a lightly changed copy, the reference
features already kept (as for every coding after the first).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from app.handlers import ClipRequest, CompareRequest, CompareView, SessionState, Studio, StudioConfig
from codec.metrics import compute_metrics, metric_names
from codec.video import Video, read_video

CLIP = Path(__file__).resolve().parents[1] / "assets" / "clips" / "bigbuckbunny.mp4"


def comparison_time(
    frames: int, max_side: int, threads: int | None = None, lanes: int | None = None
) -> tuple[float, list[tuple[float, str]], CompareView]:
    """(total seconds, [(seconds since the previous message, message)] of the 'done' and 'warm-up' messages, the
    view); `threads`, `lanes` as DIFFVC_STUDIO_THREADS and _LANES set them (None: as the app decides)."""
    folder = Path(tempfile.mkdtemp(prefix="compare-time-"))
    config = StudioConfig("", folder / "c", folder / "s", folder / "e", folder / "b.sqlite", CLIP, threads=threads)
    studio = Studio.open(replace(config, lanes=lanes))
    studio.preload()  # as app.py does before serving
    marks: list[tuple[float, str]] = []
    began = time.perf_counter()
    view = studio.compare.run(
        CompareRequest(ClipRequest(str(CLIP), 0, frames, max_side)),
        SessionState(),
        "timing",
        lambda fraction, desc="": marks.append((time.perf_counter(), desc)),
    )
    total = time.perf_counter() - began
    shares, last = [], began
    for at, what in marks:
        if "done" in what or "warm-up" in what:
            shares.append((at - last, what))
            last = at
    return total, shares, view


def metric_times(frames: int) -> dict[str, float]:
    """Seconds per metric for `frames` frames of the clip at 256x144, reference features warm."""
    video = read_video(CLIP, frames=frames, size=(256, 144))
    shifted = [Video(np.clip(video.frames.astype(int) + d, 0, 255).astype(np.uint8), video.fps) for d in (3, -3)]
    times = {}
    for name in metric_names():
        compute_metrics(video, shifted[0], [name])
        began = time.perf_counter()
        compute_metrics(video, shifted[1], [name])
        times[name] = time.perf_counter() - began
    compute_metrics(video, shifted[0], list(metric_names()))
    began = time.perf_counter()
    compute_metrics(video, shifted[1], list(metric_names()))
    times["all together"] = time.perf_counter() - began
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compare_time", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads per lane (default: as the app decides)")
    parser.add_argument("--lanes", type=int, choices=(1, 2), help="1: in turn, 2: metrics beside codings")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--comparison-only", action="store_true", help="skip the per-metric times")
    args = parser.parse_args(argv)
    total, shares, view = comparison_time(args.frames, args.max_side, args.threads, args.lanes)
    print(f"default comparison (threads {args.threads or 'auto'}, lanes {args.lanes or 'auto'}): {total:.1f} s")
    for seconds, what in shares:
        print(f"  {seconds:6.2f} s  {what}")
    print(view.timing.to_string(index=False))
    if not args.comparison_only:
        torch.set_num_threads(args.threads or 1)
        print(f"metrics, {args.frames} frames at 256x144 (seconds):")
        for name, seconds in metric_times(args.frames).items():
            print(f"  {name}: {seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
