"""Shared fixtures: synthetic clips with motion, written to real files where a test needs a path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from codec.video import Video, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CLIP = REPO / "assets" / "clips" / "bigbuckbunny.mp4"


def moving_clip(frames: int = 8, height: int = 48, width: int = 64, seed: int = 0) -> Video:
    """A textured scene panning right and down by (2, 1) pixels per frame, plus a bright moving square."""
    rng = np.random.default_rng(seed)
    h_big, w_big = height + 2 * frames + 8, width + 2 * frames + 8
    yy, xx = np.mgrid[0:h_big, 0:w_big]
    scene = np.stack([
        128 + 60 * np.sin(xx / 5.0) + 30 * np.cos(yy / 3.0),
        128 + 50 * np.cos((xx + yy) / 7.0),
        128 + 40 * np.sin(yy / 4.0 + xx / 9.0),
    ], axis=-1) + rng.normal(0, 8, (h_big, w_big, 3))
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        frame = scene[t : t + height, 2 * t : 2 * t + width].copy()
        y0, x0 = (3 + t) % max(1, height - 8), (5 + 3 * t) % max(1, width - 8)
        frame[y0 : y0 + 8, x0 : x0 + 8] = 240
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return Video(out, Fraction(25))


@pytest.fixture
def clip() -> Video:
    return moving_clip()


@pytest.fixture
def clip_file(tmp_path: Path) -> Path:
    """A 12-frame 64x48 H.264 mp4 on disk."""
    return write_video(moving_clip(frames=12), tmp_path / "clip.mp4", crf=4)
