"""How many torch threads a heavy job gets: the cores nobody else is using, measured when the job starts.

On this project's 2-core machine (docs/RESULTS.md, "Metrics people trust, fast"):
* alone, the default comparison takes 24.5-25.5 s on two threads (`tools.compare_time --lanes 1`);
* beside another busy process, two threads stall: a DiffVC encode took 61 s on two threads, 9 s on one. PyTorch's
  intra-op threads wait for each other at every operator, and one of them keeps losing its core.

So a fixed count is wrong one way or the other. `job_cores` reads the CPU time the other processes used over a
short window (Linux: /proc/stat minus this process's own share from /proc/self/stat) and gives the job the idle
cores, at least one, shared between the heavy jobs that may run at once. Where /proc is missing it leaves one core
to the rest of the machine (cores - 1), the previous fixed default.

Intra-op threads need whole idle cores; a partly busy second core still serves an independent piece of work. A
comparison has two kinds: coding one codec and measuring the previous one. So a job with two or more idle cores
runs its steps in turn on all their threads (on a quiet 2-core machine the default comparison takes 24.5-25.5 s
that way, 32.7 s as two one-thread lanes: VGG16 and the codecs use a second thread well); a job left one whole
core and at least `TWO_LANES_IDLE` idle (a browser beside the app uses 0.3-0.5 of a core) runs two lanes of one
thread, the comparison scoring a coding on a second thread while the next codec codes (`codec.eval.compare`; in
the browser test 33.8-36.3 s against 39.8 s in turn).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JobCores", "busy_cores_elsewhere", "cores_for_job", "job_cores", "threads_for_job"]

PROBE_S = 0.25  # how long the other processes' CPU use is watched before a job starts
BUSY_MARGIN = 0.3  # a core counts as taken when another process used more than this share of it
log = logging.getLogger(__name__)
TWO_LANES_IDLE = 1.25  # idle cores per job from which a one-thread job runs two lanes (a browser uses 0.3-0.5)


def _machine_busy_ticks() -> int:
    """Busy clock ticks of the whole machine since boot: /proc/stat's first line less idle and iowait."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def _own_ticks() -> int:
    """Clock ticks this process (all its threads) ran: utime + stime of /proc/self/stat."""
    after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(after_name[11]) + int(after_name[12])  # fields 14 and 15 of proc(5), counted from the state (3)


def busy_cores_elsewhere(window_s: float = PROBE_S) -> float | None:
    """Cores' worth of CPU the *other* processes used over the next `window_s` seconds (e.g. 1.0: one core busy);
    None where /proc is not there to tell."""
    try:
        machine, own = _machine_busy_ticks(), _own_ticks()
        time.sleep(window_s)
        machine, own = _machine_busy_ticks() - machine, _own_ticks() - own
    except (OSError, ValueError, IndexError):
        return None
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, (machine - own) / ticks_per_s / window_s)


def threads_for_job(cores: int, busy_elsewhere: float | None, jobs: int = 1) -> int:
    """Torch threads for one of `jobs` heavy jobs on `cores` cores of which `busy_elsewhere` are in use by other
    processes (None: unknown, then one core is left free); at least 1."""
    if busy_elsewhere is None:
        free = cores - 1
    else:
        free = cores - math.ceil(max(0.0, busy_elsewhere - BUSY_MARGIN))
    return max(1, free // max(1, jobs))


@dataclass(frozen=True)
class JobCores:
    """How a heavy job uses the cores: `lanes` kinds of work at once (2: a comparison measures one coding while the
    next codec codes; 1: in turn), each on `threads` torch threads (the count is the process's, shared by both)."""

    threads: int
    lanes: int = 1


def cores_for_job(cores: int, busy_elsewhere: float | None, jobs: int = 1) -> JobCores:
    """One of `jobs` heavy jobs' share of `cores` cores of which `busy_elsewhere` are in use by other processes
    (None: unknown): the idle cores' threads (`threads_for_job`) in one lane where there are two or more, else
    two lanes of one thread where `TWO_LANES_IDLE` cores are idle, else one lane of one thread."""
    threads = threads_for_job(cores, busy_elsewhere, jobs)
    if threads >= 2:
        return JobCores(threads, 1)
    idle = (cores - 1 if busy_elsewhere is None else cores - busy_elsewhere) / max(1, jobs)
    return JobCores(1, 2 if idle >= TWO_LANES_IDLE else 1)


@contextmanager
def job_cores(fixed: int | None = None, jobs: int = 1, lanes: int | None = None) -> Iterator[JobCores]:
    """Run a heavy job on `fixed` torch threads, or (None) on the cores idle when it starts (`cores_for_job`), in
    `lanes` lanes (None: one with `fixed` threads, else as measured; given, the measured threads split between
    them); sets the process's torch threads for the job and restores the previous count afterwards."""
    import torch

    previous = torch.get_num_threads()
    busy = None
    if fixed:
        cores = JobCores(fixed, lanes or 1)
    else:
        busy = busy_cores_elsewhere()
        cores = cores_for_job(os.cpu_count() or 1, busy, jobs)
        if lanes:
            cores = JobCores(max(1, cores.threads * cores.lanes // lanes), lanes)
    log.info("heavy job: %d thread(s) in %d lane(s); other processes busy: %s cores", cores.threads, cores.lanes, busy)
    torch.set_num_threads(cores.threads)
    try:
        yield cores
    finally:
        torch.set_num_threads(previous)
