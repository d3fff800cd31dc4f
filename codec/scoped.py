"""A context variable set for the duration of a block: the one mechanism behind the settings that reach deep into a
run without being passed through every call (a stream's VAE tiling, dead zone and filter gain, the active stage
timer, the progress listener). Like `torch.autocast`, each holds in this thread or task only."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def scoped(var: contextvars.ContextVar[T], value: T) -> Iterator[T]:
    """`var` holds `value` inside the block and what it held before after it, however the block ends."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)
