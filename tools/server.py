"""`python app.py` in its own process on a free loopback port, with its own data and upload folders, and a reading
of its memory (RSS from /proc)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def internal_errors(log: str) -> int:
    """Errors the app reported as its own fault ("Something went wrong inside the app"), in a server log."""
    return sum(1 for line in log.splitlines() if "gradio.exceptions.Error" in line and "went wrong inside" in line)


class AppServer:
    """The app, served on 127.0.0.1 from a child process (niced: it shares the CPUs with other work).

    data: DIFFVC_STUDIO_DATA; its `gradio-tmp` sub-folder is GRADIO_TEMP_DIR (uploads land there). env: more
    variables (e.g. DIFFVC_STUDIO_MAX_UPLOAD). Use as a context manager; `stop` ends only this child.
    """

    def __init__(
        self,
        data: Path,
        env: dict[str, str] | None = None,
        pack: str = "random-tiny",
        nice: int = 19,
        start_timeout: float = 180.0,
    ) -> None:
        self.data = Path(data)
        self.upload_dir = self.data / "gradio-tmp"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DIFFVC_STUDIO_PACK": pack,
            "DIFFVC_STUDIO_DATA": str(self.data),
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_TEMP_DIR": str(self.upload_dir),
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            **(env or {}),
        }
        self.log_path = self.data / "server.log"
        self.nice = nice
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> AppServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        log = self.log_path.open("ab")
        command = [sys.executable, "app.py"]
        if self.nice:
            command = ["nice", "-n", str(self.nice), *command]
        self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"app.py did not serve {self.url} within {self.start_timeout:.0f} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mb(self) -> float:
        """Resident memory of the server process, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()  # this child only, by its handle
            self.process.wait(timeout=20)
