"""Load: concurrent `gradio_client` sessions running comparisons against one `python app.py` on 127.0.0.1.

    python -m tools.load --out out/load                  # `make load`: 4 sessions x 3 rounds; summary.json

Every session uploads its own small clip (sessions 0 and 1 the same clip, as two users would) and runs `/compare`
(DiffVC with DIFFVC_STUDIO_PACK=random-tiny against x265 at matched bitrate), all sessions at once, once per round
with a new QP. Checked: every request finishes; each result belongs to its session's clip (the clip hash, size and
frame count the server reports equal what the client computes from its own file); the decoder's output equals the
encoder's reconstruction for every codec (`recon_match`); the same clip and settings give the same bitstream bytes
in two concurrent sessions and in a separate process (this one, through the library); no temporary work folder is
left behind; the server's memory (RSS) after the load against its baseline after one warm-up comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tools.server import AppServer, internal_errors

REQUEST_TIMEOUT_S = 900


@dataclass
class LoadConfig:
    sessions: int = 4
    rounds: int = 3
    frames: int = 3
    jobs: int = 2  # heavy jobs the server runs at once (DIFFVC_STUDIO_JOBS)
    qp: int = 32
    rss_tolerance_mb: float = 300.0
    library_check: bool = True  # re-encode one clip here, through the library, and compare the bytes
    warm_up: bool = True  # one comparison before the load, for the memory baseline (off: no memory check)


@dataclass
class LoadReport:
    config: dict
    requests: int = 0
    finished: int = 0
    failures: list[str] = field(default_factory=list)
    crossed: list[str] = field(default_factory=list)
    recon_mismatch: list[str] = field(default_factory=list)
    nondeterministic: list[str] = field(default_factory=list)
    library_match: bool | None = None
    leftover_work_dirs: int = 0
    uploads_kept: int = 0
    rss_start_mb: float = 0.0
    rss_baseline_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_after_round_mb: list[float] = field(default_factory=list)
    pairs_computed_apart: int = 0  # rounds where both sessions of the pair computed (neither came from the cache)
    round_seconds: list[float] = field(default_factory=list)
    request_seconds: list[float] = field(default_factory=list)
    internal_errors_in_log: int = 0  # "Something went wrong inside the app" in the server's log
    seconds: float = 0.0

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_baseline_mb

    def problems(self, tolerance_mb: float) -> list[str]:
        out = [*self.failures, *self.crossed, *self.recon_mismatch, *self.nondeterministic]
        if self.finished != self.requests:
            out.append(f"{self.requests - self.finished} of {self.requests} requests did not finish")
        if self.library_match is False:
            out.append("the library's bitstream differs from the server's")
        if self.internal_errors_in_log:
            out.append(f"{self.internal_errors_in_log} internal errors in the server's log")
        if self.leftover_work_dirs:
            out.append(f"{self.leftover_work_dirs} temporary work folders left")
        if self.rss_growth_mb > tolerance_mb:
            out.append(f"RSS grew {self.rss_growth_mb:.0f} MB over its baseline (tolerance {tolerance_mb:.0f} MB)")
        return out

    def to_json(self) -> dict:
        data = {k: v for k, v in self.__dict__.items()}
        data["rss_growth_mb"] = round(self.rss_growth_mb, 1)
        return data


def make_clips(folder: Path, sessions: int, frames: int) -> list[Path]:
    """One small mp4 per session; session 1 gets a copy of session 0's clip (the determinism pair)."""
    from codec.video import synthetic_clip, write_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(sessions):
        path = folder / f"session-{i}.mp4"
        if i == 1:
            shutil.copyfile(paths[0], path)
        else:
            write_video(synthetic_clip(frames=frames, height=48, width=64 + 16 * (i % 3), seed=i), path, crf=8)
        paths.append(path)
    return paths


def expected(path: Path, frames: int) -> dict:
    """What the server must report for this clip: the hash and size of the frames /compare reads from it."""
    from app.handlers import DEFAULT_MAX_SIDE
    from codec.eval.compare import load_clip

    video = load_clip(path, 0, frames, DEFAULT_MAX_SIDE)
    return {"clip_hash": video.content_hash(), "width": video.width, "height": video.height, "frames": video.num_frames}


class RssSampler:
    """The server's RSS every `every` seconds, in a thread; `peak` is the largest seen."""

    def __init__(self, server: AppServer, every: float = 0.5) -> None:
        self.server, self.every, self.peak = server, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.server.rss_mb())
            except OSError:
                return
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def one_request(url: str, clip: Path, qp: int, tdir: bool, frames: int) -> tuple[list[dict] | None, str, float]:
    """A fresh client (a new session) running /compare once: (rows or None, error, seconds)."""
    from gradio_client import Client, handle_file

    began = time.monotonic()
    try:
        client = Client(url, verbose=False)
        job = client.submit(handle_file(str(clip)), qp, tdir, frames, api_name="/compare")
        return job.result(timeout=REQUEST_TIMEOUT_S), "", time.monotonic() - began
    except Exception as e:  # noqa: BLE001 - any failure of the request is a finding
        return None, f"{type(e).__name__}: {e}"[:300], time.monotonic() - began


def run_load(config: LoadConfig, out: Path, log=print) -> LoadReport:
    report = LoadReport(config=dict(config.__dict__))
    began = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    clips = make_clips(out / "clips", config.sessions, config.frames)
    wanted = [expected(c, config.frames) for c in clips]
    warm = make_clips(out / "warm-up", 1, config.frames)[0]
    tdirs = [i % 4 != 3 for i in range(config.sessions)]  # session 3 runs TDIR off
    with AppServer(out / "server", env={"DIFFVC_STUDIO_JOBS": str(config.jobs)}) as server:
        report.rss_start_mb = round(server.rss_mb(), 1)
        if config.warm_up:
            rows, error, _ = one_request(server.url, warm, config.qp + 9, True, config.frames)
            if rows is None:
                report.failures.append(f"warm-up: {error}")
                return report
            time.sleep(2)
        report.rss_baseline_mb = round(server.rss_mb(), 1)
        log(f"server up: RSS {report.rss_start_mb:.0f} MB at start, {report.rss_baseline_mb:.0f} MB after warm-up")
        by_round: list[list[list[dict] | None]] = []
        with RssSampler(server) as sampler, ThreadPoolExecutor(config.sessions) as pool:
            for r in range(config.rounds):
                qp = config.qp + 4 * r
                round_began = time.monotonic()
                futures = [
                    pool.submit(one_request, server.url, clips[i], qp, tdirs[i], config.frames)
                    for i in range(config.sessions)
                ]
                results = [f.result() for f in futures]
                report.round_seconds.append(round(time.monotonic() - round_began, 1))
                report.requests += len(results)
                round_rows = []
                for i, (rows, error, seconds) in enumerate(results):
                    report.request_seconds.append(round(seconds, 1))
                    if rows is None:
                        report.failures.append(f"round {r} session {i}: {error}")
                    else:
                        report.finished += 1
                        _check_rows(report, rows, wanted[i], f"round {r} session {i}")
                    round_rows.append(rows)
                _check_pair(report, round_rows, r)
                by_round.append(round_rows)
                report.rss_after_round_mb.append(round(server.rss_mb(), 1))
                log(
                    f"round {r}: QP {qp}, {sum(x is not None for x in round_rows)}/{config.sessions} finished in "
                    f"{report.round_seconds[-1]:.0f} s; RSS {server.rss_mb():.0f} MB (peak {sampler.peak:.0f})"
                )
        report.rss_peak_mb = round(sampler.peak, 1)
        time.sleep(5 if config.warm_up else 0)
        report.rss_end_mb = round(server.rss_mb(), 1) if config.warm_up else report.rss_baseline_mb
        results_dir = server.data / "comparisons"
        report.leftover_work_dirs = len(list(results_dir.glob(".run-*")))
        report.uploads_kept = sum(1 for p in server.upload_dir.rglob("*") if p.is_file())
        report.internal_errors_in_log = internal_errors(server.log_text())
    if config.library_check and by_round and by_round[0][0]:
        report.library_match = _library_bytes(clips[0], config, tdirs[0]) == by_round[0][0][0]["sha256"]
    report.seconds = round(time.monotonic() - began, 1)
    return report


def _check_rows(report: LoadReport, rows: list[dict], want: dict, where: str) -> None:
    if [row["codec"] for row in rows] != ["diffvc", "x265"]:
        report.failures.append(f"{where}: codecs {[row['codec'] for row in rows]}")
    for row in rows:
        got = {k: row.get(k) for k in want}
        if got != want:
            report.crossed.append(f"{where}: {row['codec']} reports {got}, the session's clip is {want}")
        if row.get("recon_match") is not True:
            report.recon_mismatch.append(f"{where}: {row['codec']} decoder output != encoder reconstruction")
        if not row.get("sha256"):
            report.failures.append(f"{where}: {row['codec']} has no bitstream hash")


def _check_pair(report: LoadReport, round_rows: list, r: int) -> None:
    """Sessions 0 and 1 ran the same clip and settings at the same time: the same bytes, codec by codec."""
    if len(round_rows) < 2 or round_rows[0] is None or round_rows[1] is None:
        return
    if not (round_rows[0][0].get("cached") or round_rows[1][0].get("cached")):
        report.pairs_computed_apart += 1
    for a, b in zip(round_rows[0], round_rows[1]):
        if a["sha256"] != b["sha256"]:
            report.nondeterministic.append(f"round {r}: {a['codec']} bytes differ between sessions 0 and 1")


def _library_bytes(clip: Path, config: LoadConfig, tdir: bool) -> str:
    """sha256 of DiffVC's bitstream for the clip, encoded here through the library with the app's options."""
    import hashlib

    from app.handlers import DEFAULT_MAX_SIDE
    from codec.eval.compare import CompareSettings, load_clip
    from codec.registry import get_codec

    video = load_clip(clip, 0, config.frames, DEFAULT_MAX_SIDE)
    settings = CompareSettings(qp=config.qp, tdir=tdir, pack="random-tiny")
    encoded = get_codec("diffvc", **settings.diffvc_options()).encode(video, config.qp)
    return hashlib.sha256(encoded.bitstream).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.load", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rss-tolerance-mb", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not 1 <= args.sessions <= 16 or not 1 <= args.rounds <= 20 or not 1 <= args.frames <= 16:
        parser.error("bounded: 1..16 sessions, 1..20 rounds, 1..16 frames")
    config = LoadConfig(args.sessions, args.rounds, args.frames, args.jobs, rss_tolerance_mb=args.rss_tolerance_mb)
    report = run_load(config, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(report.to_json(), indent=1))
    problems = report.problems(config.rss_tolerance_mb)
    print(json.dumps({k: v for k, v in report.to_json().items() if k != "config"}, indent=1))
    print("\n".join(f"PROBLEM: {p}" for p in problems) or "all checks held")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
