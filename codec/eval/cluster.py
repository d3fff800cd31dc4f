"""Evaluation jobs on a Ray cluster (`--ray ADDRESS`, `--ray auto`, `--ray local`): the same jobs, rows and cache.

`RayRunner` is a `codec.eval.engine.JobRunner`: `evaluate` still reads and writes the cache on the driver, and
hands the runner only the jobs the cache does not hold. The clip goes into Ray's object store once per request;
each job is one task (one CPU, one torch thread) that builds its codec from the spec, warms it up as the local
runner does, measures, and returns the row. Rows equal the local run's (same bytes, same metrics); only the
timings and `created` differ, as between any two runs.

Workers must import this project: a local cluster (`local`, or one started with `ray start --head` here) gets the
repository on its Python path; on a remote cluster install it on every node (`pip install -e .` or the same
checkout), with the weights its metrics and packs need (`python -m codec.weights prepare`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from codec.errors import CodecError
from codec.eval.engine import EvalRequest, Job, run_job, warm_up
from codec.eval.rows import ResultRow

REPO = Path(__file__).resolve().parents[2]


class RayRunner:
    """Runs jobs as Ray tasks. address: "local" starts a cluster in this process (all CPUs unless `num_cpus`),
    "auto" joins the running one (`ray start`, or $RAY_ADDRESS), anything else is a cluster address
    ("ray://host:10001", "host:6379"). A Ray already initialised in this process is used as it is."""

    def __init__(self, address: str = "auto", num_cpus: int | None = None) -> None:
        self.address, self.num_cpus = address, num_cpus

    def connect(self) -> Any:
        try:
            import ray
        except ImportError:
            raise CodecError("--ray needs the ray package (pip install ray)") from None
        if not ray.is_initialized():
            local = self.address == "local"
            try:
                ray.init(
                    address=None if local else self.address,
                    num_cpus=self.num_cpus if local else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env={"env_vars": worker_environment()},
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise CodecError(f"cannot reach a Ray cluster at {self.address!r}: {str(e).splitlines()[0]}") from None
        return ray

    def run(self, request: EvalRequest, jobs: Sequence[tuple[int, Job]]) -> Iterator[tuple[int, ResultRow]]:
        if not jobs:
            return
        ray = self.connect()
        task = ray.remote(num_cpus=1)(_remote_job)
        settings = ray.put(request)
        pending = {task.remote(settings, job.spec, job.qp): index for index, job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                raise CodecError(f"a job failed on the cluster: {str(e.cause or e).splitlines()[0]}") from None
            yield index, row


def worker_environment() -> dict[str, str]:
    """What a worker process inherits: this repository on its path, one torch thread per task, and the project's
    settings (every DIFFVC_* variable: packs, weights cache, limits, codec plugins; HF_HUB_OFFLINE)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    kept = {k: v for k, v in os.environ.items() if k.startswith("DIFFVC_") or k == "HF_HUB_OFFLINE"}
    return {**kept, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _remote_job(request: EvalRequest, spec: str, qp: int) -> ResultRow:
    """One job on a worker: build the codec, warm it up, measure (`codec.eval.engine.run_job`)."""
    import torch

    from codec.registry import get_codec

    torch.set_num_threads(1)
    codec = get_codec(spec)
    if request.warmup:
        warm_up(codec, request.video, qp)
    return run_job(codec, request, Job(spec, qp, codec))
