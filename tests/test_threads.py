"""The heavy jobs' torch threads: the cores idle when a job starts (codec/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from codec.threads import JobCores, busy_cores_elsewhere, cores_for_job, job_cores, threads_for_job


@pytest.mark.parametrize(
    ("cores", "busy", "jobs", "expected"),
    [
        (2, 0.0, 1, 2),  # alone on the machine: every core
        (2, 0.2, 1, 2),  # a little background noise does not take a core
        (2, 1.0, 1, 1),  # a training run on one core: the other one
        (2, 2.0, 1, 1),  # a busy machine still gets its job done, on one thread
        (8, 1.0, 2, 3),  # seven idle cores, shared by two jobs
        (2, None, 1, 1),  # unknown load: leave a core to the rest, as the old fixed default did
        (1, None, 1, 1),
    ],
)
def test_threads_for_job_takes_the_idle_cores(cores, busy, jobs, expected):
    assert threads_for_job(cores, busy, jobs) == expected


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc")
def test_another_process_spinning_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores_elsewhere(0.5) >= 0.6  # the spinner holds most of a core
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc")
def test_this_process_own_work_is_not_counted():
    baseline = busy_cores_elsewhere(0.3)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        own = busy_cores_elsewhere(0.5)
    finally:
        stop.set()
        spinner.join()
    assert own < baseline + 0.5, (baseline, own)


@pytest.mark.parametrize(
    ("cores", "busy", "jobs", "expected"),
    [
        (2, 0.0, 1, JobCores(2, 1)),  # alone: every step on both cores
        (2, 0.35, 1, JobCores(1, 2)),  # a browser beside it: one coding and the previous one's metrics at once
        (2, 0.6, 1, JobCores(1, 2)),
        (2, 0.8, 1, JobCores(1, 1)),  # 1.2 cores idle: a second lane would mostly take another process's core
        (2, 1.0, 1, JobCores(1, 1)),  # a training run on one core: everything in turn on the other
        (2, None, 1, JobCores(1, 1)),
        (16, 0.0, 1, JobCores(16, 1)),
        (16, 0.0, 4, JobCores(4, 1)),
        (3, 1.0, 2, JobCores(1, 1)),  # one idle core each: one lane
    ],
)
def test_a_job_runs_two_lanes_where_only_part_of_a_second_core_is_idle(cores, busy, jobs, expected):
    assert cores_for_job(cores, busy, jobs) == expected


def test_job_cores_sets_the_count_for_the_job_and_restores_it():
    before = torch.get_num_threads()
    with job_cores(fixed=3) as cores:
        assert cores == JobCores(3, 1) and torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with job_cores() as cores:
        assert 1 <= cores.threads * cores.lanes <= (os.cpu_count() or 1) and torch.get_num_threads() == cores.threads
    assert torch.get_num_threads() == before
