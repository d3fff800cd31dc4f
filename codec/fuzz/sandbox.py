"""Run one call in a forked child under a time limit and a memory bound, and say how it ended.

The fuzzer's workers load the decoders once, then fork a child per damaged stream: the child inherits the loaded
models for free (copy-on-write), and whatever the decode does (hang in C code, segfault, exhaust memory) ends
with the child, never with the worker. The worker

* kills the child (SIGKILL) once `time_limit_s` has passed: status "timeout";
* reads the child's peak resident memory from `wait4` (`ru_maxrss`) and reports its growth over what the child
  starts with (the worker's anonymous resident memory): `memory_mb`;
* caps the child's address space (RLIMIT_AS) at the worker's virtual size plus `memory_cap_mb`, so a runaway
  allocation fails inside the child instead of taking the machine down;
* reports a child that dies by a signal, or exits without a result, as status "crash".

POSIX only (fork, wait4); Linux for the address-space cap and resident sizes (/proc/self/statm).
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import select
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from codec.errors import CodecError

__all__ = ["SandboxResult", "process_memory", "run_sandboxed"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed call ended.

    status: "returned" (value holds what the call returned), "raised" (error_type/error_message; codec_error
    says whether it is a codec.errors.CodecError), "timeout" or "crash" (signal: the signal that ended the child,
    or None when it exited without reporting). seconds: wall time of the call (of the child, for timeout/crash).
    memory_mb: peak resident memory of the child above what it started with, in MiB (memory the worker had already
    touched and freed can be reused without counting). peak_rss_mb: the child's peak resident
    size, in MiB (the loaded models and libraries included).
    """

    status: str
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    codec_error: bool = False
    seconds: float = 0.0
    memory_mb: float = 0.0
    peak_rss_mb: float = 0.0
    signal: int | None = None
    traceback: str = ""


def process_memory() -> tuple[int, int, int]:
    """(virtual size, resident size, resident anonymous memory) of this process in bytes; zeros where /proc is
    missing. A forked child starts with the anonymous part resident (file pages fault in again as it uses them), so
    that is the baseline of its growth."""
    try:
        with open("/proc/self/statm") as f:
            vm, rss = (int(v) * _PAGE for v in f.read().split()[:2])
        with open("/proc/self/status") as f:
            anon = next((int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:")), rss)
        return vm, rss, anon
    except (OSError, ValueError):
        return 0, 0, 0


def _child(
    fn: Callable[[], Any], write_fd: int, memory_cap_mb: float, quiet: bool, stacks: Any, dump_after_s: float
) -> None:
    """Runs in the forked child: limits, the call, one JSON line to the pipe, then _exit (no cleanup handlers).
    Shortly before the time limit, faulthandler writes every thread's Python stack to `stacks`."""
    try:
        faulthandler.disable()  # a crash is reported by its signal, not printed by a handler inherited from the worker
        faulthandler.dump_traceback_later(dump_after_s, file=stacks)
        if quiet:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        vm = process_memory()[0]
        if vm and memory_cap_mb > 0:
            cap = vm + int(memory_cap_mb * 2**20)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        start = time.perf_counter()
        try:
            report = {"status": "returned", "value": fn()}
        except BaseException as e:  # noqa: BLE001 - whatever escapes is what the sandbox reports
            report = {
                "status": "raised",
                "error_type": f"{type(e).__module__}.{type(e).__qualname__}",
                "error_message": str(e)[:2000],
                "codec_error": isinstance(e, CodecError),
                "traceback": "".join(traceback.format_exception(e))[-4000:],
            }
        report["seconds"] = time.perf_counter() - start
        payload = json.dumps(report, default=repr).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(0)


def _process_state(pid: int) -> str:
    """The kernel's view of a process and its threads (state, wait channel): what a hung child is waiting on."""
    lines = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task")):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip() or "-"
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                lines.append(f"thread {tid} ({f.read().strip()}): state {state}, waiting in {wchan}")
            try:
                with open(f"/proc/{pid}/task/{tid}/stack") as f:
                    lines.append(f.read().strip())
            except OSError:
                pass
    except OSError:
        pass
    return "\n".join(lines)


def run_sandboxed(
    fn: Callable[[], Any], time_limit_s: float, memory_cap_mb: float = 0, quiet: bool = True
) -> SandboxResult:
    """Call `fn()` in a forked child; its return value must be JSON-serialisable (others become their repr).

    time_limit_s: wall-clock limit, after which the child is killed. memory_cap_mb: address space allowed beyond
    the current process's (0 = no cap). quiet: send the child's stdout and stderr to /dev/null. After a timeout,
    `traceback` holds the state of the child's threads and their Python stacks half a second before the kill.
    """
    rss_before = process_memory()[2]
    read_fd, write_fd = os.pipe()
    stacks = tempfile.TemporaryFile()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(read_fd)
        _child(fn, write_fd, memory_cap_mb, quiet, stacks, max(0.1, time_limit_s - 0.5))
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = start + time_limit_s
    timed_out = False
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        status = rusage = None
        while not timed_out:  # the child exits right after writing; give it until the deadline to do so
            waited, status, rusage = os.wait4(pid, os.WNOHANG)
            if waited:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                break
            time.sleep(0.001)
        if timed_out:
            state = _process_state(pid)
            os.kill(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            stacks.seek(0)
            where = state + "\n" + stacks.read().decode(errors="replace")[-4000:]
    finally:
        os.close(read_fd)
        stacks.close()
    seconds = time.perf_counter() - start
    peak = rusage.ru_maxrss * 1024 if rusage else 0  # Linux reports KiB
    memory = {"memory_mb": max(0.0, (peak - rss_before) / 2**20), "peak_rss_mb": peak / 2**20}
    if timed_out:
        return SandboxResult("timeout", seconds=seconds, signal=signal.SIGKILL, traceback=where, **memory)
    if os.WIFSIGNALED(status) or not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return SandboxResult("crash", seconds=seconds, signal=sig, **memory)
    try:
        report = json.loads(b"".join(chunks))
    except ValueError:
        return SandboxResult("crash", seconds=seconds, **memory)
    return SandboxResult(**report, **memory)
