"""Per-stage wall-clock timing of the codec (motion, latent, entropy, diffusion, vae), CUDA-aware."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch

from codec.scoped import scoped

STAGES = ("motion", "latent", "entropy", "diffusion", "vae")


class StageTimer:
    """Accumulates seconds per stage. On CUDA it synchronizes at stage boundaries only (not inside loops)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self._active: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block as `name`; a nested stage's time is moved out of its parent (no double counting)."""
        self._sync()
        start = time.perf_counter()
        self._active.append(name)
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            self._active.pop()
            self.seconds[name] += elapsed
            if self._active:
                self.seconds[self._active[-1]] -= elapsed

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def as_dict(self) -> dict[str, float]:
        return {name: float(self.seconds.get(name, 0.0)) for name in STAGES}


_ACTIVE: contextvars.ContextVar[StageTimer | None] = contextvars.ContextVar("active_stage_timer", default=None)


def active_timer(timer: StageTimer) -> contextlib.AbstractContextManager[StageTimer]:
    """Make `timer` the one that `timed` functions report to, for the duration of the block."""
    return scoped(_ACTIVE, timer)


def timed(stage: str, fn: Callable) -> Callable:
    """Wrap `fn` so that its calls count as `stage` on the active timer (if any): e.g. entropy coding calls
    deep inside the latent codecs are moved out of the 'latent' stage into 'entropy'."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        timer = _ACTIVE.get()
        if timer is None:
            return fn(*args, **kwargs)
        with timer.stage(stage):
            return fn(*args, **kwargs)

    return wrapper
