"""Shared fixtures: synthetic clips with motion, written to real files where a test needs a path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from codec.video import Video, synthetic_clip, write_video  # noqa: E402

moving_clip = synthetic_clip

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CLIP = REPO / "assets" / "clips" / "bigbuckbunny.mp4"


PHOTO_SCALES = ((8, 90.0), (3, 35.0))  # (1 / resolution, amplitude in grey levels) of a smooth texture's noise


def smooth_texture(
    height: int, width: int, seed: int, scales: tuple[tuple[int, float], ...] = PHOTO_SCALES
) -> np.ndarray:
    """uint8 [H, W, 3]: random noise at each scale's resolution (1/8 and 1/3 by default), upsampled bicubically and
    summed around grey: a photo-like smooth image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3), np.float32)
    for factor, amplitude in scales:
        small = rng.uniform(-1, 1, (height // factor + 2, width // factor + 2, 3)).astype(np.float32)
        out += amplitude * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(128 + out, 0, 255).astype(np.uint8)


def write_photos(
    folder: Path,
    count: int,
    size: tuple[int, int] = (180, 240),
    seed: int = 0,
    scales: tuple[tuple[int, float], ...] = PHOTO_SCALES,
) -> list[Path]:
    """`count` smooth textures of size (H, W) as PNG files photo00.png, ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:02d}.png"
        cv2.imwrite(str(path), smooth_texture(*size, seed=seed + i, scales=scales))
        paths.append(path)
    return paths


def perceptual_weights_prepared() -> bool:
    """Whether DISTS' and LPIPS' offline weights are prepared (`python -m codec.weights prepare`)."""
    from codec.weights import load_metric_weights

    return load_metric_weights() is not None


def as_if_trained(*modules, scale: float = 1e-2) -> None:
    """Perturb the weights that start at exactly zero (the skeleton's corrections, a flat prior): through a zero
    layer no gradient reaches the layers before it, which only holds at step 0 of training."""
    import torch

    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                if not bool(param.any()):
                    param.add_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture
def clip() -> Video:
    return moving_clip()


@pytest.fixture
def clip_file(tmp_path: Path) -> Path:
    """A 12-frame 64x48 H.264 mp4 on disk."""
    return write_video(moving_clip(frames=12), tmp_path / "clip.mp4", crf=4)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' tensors are small and the machine has 2 shared cores: thread hand-offs cost more than the work
    (and two-thread torch stalls when another process runs). Session-wide, before any model fixture is built."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
