"""Per-frame progress of long codec runs, reported to whoever is listening (the app's progress bar), if anyone.

A context variable rather than a parameter of `VideoCodec.encode`/`decode`: the codec contract stays as it is,
codecs that report (DiffVC, whose frames take a second each on a CPU) call `report_frame`, and a listener set in one
thread or request never hears another's frames. A listener may raise (e.g. to stop a job): the exception leaves the
codec between two frames.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from codec.scoped import scoped

FrameListener = Callable[[str, int, int], None]  # (phase "encode" | "decode", frames done, frames in all)

_LISTENER: contextvars.ContextVar[FrameListener | None] = contextvars.ContextVar("frame_listener", default=None)


def frame_progress(listener: FrameListener) -> contextlib.AbstractContextManager[FrameListener]:
    """Send `report_frame` calls made inside the block (in this thread or task) to `listener`."""
    return scoped(_LISTENER, listener)


@contextlib.contextmanager
def frame_bar(description: str) -> Iterator[None]:
    """A progress bar on stderr (tqdm: frames done, rate, ETA) over the frames the codecs report in the block."""
    import sys

    from tqdm import tqdm

    bar = tqdm(desc=description, unit="frame", file=sys.stderr, leave=False)

    def listener(phase: str, done: int, total: int) -> None:
        if done == 1:
            bar.reset(total=total)
        bar.set_postfix_str(phase, refresh=False)
        bar.update(1)

    try:
        with frame_progress(listener):
            yield
    finally:
        bar.close()


@contextlib.contextmanager
def job_bar() -> Iterator[Callable[[int, int, str], None]]:
    """A progress bar on stderr (tqdm: jobs done, rate, ETA) and the `progress(done, total, label)` callback that
    moves it, as `codec.eval.evaluate` and `codec.eval.bench.run_bench` call theirs."""
    import sys

    from tqdm import tqdm

    with tqdm(total=0, file=sys.stderr, unit="job") as bar:

        def progress(done: int, total: int, label: str) -> None:
            bar.total = total
            bar.set_postfix_str(label[-60:])
            bar.update(done - bar.n)

        yield progress


def report_frame(phase: str, done: int, total: int) -> None:
    """Called by a codec after each frame; does nothing when nobody listens."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(phase, done, total)
