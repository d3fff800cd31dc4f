"""Shared fixtures: synthetic clips with motion, written to real files where a test needs a path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from codec.video import Video, synthetic_clip, write_video  # noqa: E402

moving_clip = synthetic_clip

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CLIP = REPO / "assets" / "clips" / "bigbuckbunny.mp4"


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
