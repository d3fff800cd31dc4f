"""Hostile uploads: the corpus of `codec.hostile` through the command line, the app's handlers and the running app.

    python -m tools.hostile --out out/hostile            # `make hostile`; summary.json + a table on stdout

Each file must end in a clear message or a normal result (see `codec.hostile`): never a traceback, an internal
error, a crash or a hang. Resource limits are exercised on the way: the frame-size limit (8K accepted, a declared
16000x16000 refused before allocation), the frame-count limit (12,000 frames read whole), the per-job pixel budget,
the start-frame bound, the upload size (the server runs with DIFFVC_STUDIO_MAX_UPLOAD=1mb and gets a 2 MB file)
and the per-job time limit (a second server with DIFFVC_STUDIO_TIME_LIMIT=3). While the server works on the
corpus, another client asks it for the codec list every second: the app must keep serving it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codec.hostile import HostileFile, make_corpus
from tools.server import REPO, AppServer, internal_errors

CLI_TIMEOUT_S = 300
APP_QP = 40


@dataclass
class Outcome:
    """One file through one route. outcome: ok (a result), refused (a clear message), FAIL (anything else)."""

    route: str
    file: str
    expect: str
    outcome: str
    seconds: float
    message: str = ""
    peak_mb: float | None = None
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        allowed = {"refuse": {"refused"}, "accept": {"ok"}, "either": {"ok", "refused"}}[self.expect]
        self.passed = self.outcome in allowed


# --- the command line ---------------------------------------------------------------------------------------------


def run_cli(argv: list[str], timeout: float = CLI_TIMEOUT_S) -> tuple[str, float, str, float]:
    """`python -m codec ARGV` in a niced child: (outcome, seconds, last stderr line, peak RSS MiB of the child)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    began = time.monotonic()
    child = subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-m", "codec", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(child.stderr.read()), daemon=True)
    reader.start()
    status, usage = 0, None
    while time.monotonic() - began < timeout:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.1)
    else:
        child.kill()  # this child only
        _, status, usage = os.wait4(child.pid, 0)
        reader.join(5)
        return "FAIL", time.monotonic() - began, f"hang: killed after {timeout:.0f} s", usage.ru_maxrss / 1024
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    seconds = time.monotonic() - began
    text = b"".join(stderr).decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("[")]
    last = lines[-1] if lines else ""
    rc = child.returncode
    if rc == 0:
        outcome = "ok"
    elif rc == 2 and last.startswith("error:") and "Traceback" not in text:
        outcome = "refused"
    else:
        outcome, last = "FAIL", f"exit {rc}: {last}"
    return outcome, seconds, last[:300], usage.ru_maxrss / 1024


def cli_cases(files: list[HostileFile], scratch: Path) -> list[tuple[str, HostileFile, list[str], str]]:
    """(route, file, argv, expect): encode and eval of 2 frames of every file, plus the limit cases."""
    cases = []
    full_res = {"8k.mp4": "refuse"}  # the CLI reads full-size frames: 8K is over its 4096 limit without --size
    for f in files:
        out = scratch / f.path.stem
        expect = full_res.get(f.name, f.expect)
        cases.append(
            (
                "cli encode",
                f,
                ["encode", str(f.path), "-o", str(out) + ".hevc", "--codec", "x265", "--qp", "40", "--frames", "2"],
                expect,
            )
        )
        cases.append(
            (
                "cli eval",
                f,
                [
                    "eval",
                    str(f.path),
                    "--codecs",
                    "x265",
                    "--qps",
                    "40",
                    "--frames",
                    "2",
                    "--metrics",
                    "psnr",
                    "--out",
                    str(out),
                    "--cache",
                    str(scratch / "cache"),
                ],
                expect,
            )
        )
    by_name = {f.name: f for f in files}
    if "8k.mp4" in by_name:  # ... and takes it resized
        f = by_name["8k.mp4"]
        cases.append(
            (
                "cli encode --size 640x360",
                f,
                [
                    "encode",
                    str(f.path),
                    "-o",
                    str(scratch / "8k.hevc"),
                    "--codec",
                    "x265",
                    "--qp",
                    "40",
                    "--frames",
                    "2",
                    "--size",
                    "640x360",
                ],
                "accept",
            )
        )
    if "many-frames.mp4" in by_name:  # every frame: more than the 10,000-frame limit
        f = by_name["many-frames.mp4"]
        cases.append(
            (
                "cli encode, all frames",
                f,
                ["encode", str(f.path), "-o", str(scratch / "all.hevc"), "--codec", "x265", "--qp", "40"],
                "refuse",
            )
        )
    if "big-h264-sps.mp4" in by_name:  # a resize must not let a huge declared frame through
        f = by_name["big-h264-sps.mp4"]
        cases.append(
            (
                "cli encode --size 64x64",
                f,
                [
                    "encode",
                    str(f.path),
                    "-o",
                    str(scratch / "big.hevc"),
                    "--codec",
                    "x265",
                    "--qp",
                    "40",
                    "--frames",
                    "2",
                    "--size",
                    "64x64",
                ],
                "refuse",
            )
        )
    return cases


def check_cli(files: list[HostileFile], scratch: Path, log=print) -> list[Outcome]:
    outcomes = []
    for route, f, argv, expect in cli_cases(files, scratch):
        result, seconds, message, peak = run_cli(argv)
        outcomes.append(Outcome(route, f.name, expect, result, seconds, message, peak))
        log(_line(outcomes[-1]))
    return outcomes


# --- the handlers -------------------------------------------------------------------------------------------------


def check_handlers(files: list[HostileFile], data: Path, log=print) -> list[Outcome]:
    """Every file through `CompareHandler.run` (what the Compare button runs), plus the app's own limits."""
    from app.feedback import error_message
    from app.handlers import ClipRequest, CompareRequest, SessionState, Studio, StudioConfig

    def studio(**extra) -> Studio:
        return Studio.open(
            StudioConfig(
                pack="random-tiny",
                results_dir=data / "comparisons",
                sessions_dir=data / "sessions",
                eval_cache=data / "eval-cache",
                db_path=data / "blind.sqlite",
                example_clip=REPO / "assets/clips/bigbuckbunny.mp4",
                **extra,
            )
        )

    def attempt(route: str, s: Studio, f: HostileFile, clip: ClipRequest, expect: str, must: str = "") -> None:
        began = time.monotonic()
        request = CompareRequest(clip, qp=APP_QP, anchors=("x265",), tdir_contrast=False, metrics=("psnr",))
        try:
            view = s.compare.run(request, SessionState(), "hostile")
            outcome, message = "ok", view.status.splitlines()[0]
        except Exception as e:  # noqa: BLE001 - the page turns every exception into this one line
            message = error_message(e)
            clean = message.startswith("**Cannot run this:**") and str(f.path.parent) not in message
            outcome = "refused" if clean and must in message else "FAIL"
        outcomes.append(Outcome(route, f.name, expect, outcome, time.monotonic() - began, message[:300]))
        log(_line(outcomes[-1]))

    outcomes: list[Outcome] = []
    plain = studio()
    for f in files:
        attempt("handlers", plain, f, ClipRequest(str(f.path), 0, 2, 64), f.expect)
    by_name = {f.name: f for f in files}
    if "8k.mp4" in by_name:  # 96 frames at 1280 px: over the per-job pixel budget, refused before decoding
        attempt(
            "handlers, 96 frames at 1280 px",
            plain,
            by_name["8k.mp4"],
            ClipRequest(str(by_name["8k.mp4"].path), 0, 96, 1280),
            "refuse",
            must="budget",
        )
    if "many-frames.mp4" in by_name:
        f = by_name["many-frames.mp4"]
        attempt("handlers, start 9990", plain, f, ClipRequest(str(f.path), 9990, 2, 64), "accept")
        attempt("handlers, start 11990", plain, f, ClipRequest(str(f.path), 11990, 2, 64), "refuse", must="limit")
    example = HostileFile("bigbuckbunny.mp4", REPO / "assets/clips/bigbuckbunny.mp4", "the example clip", "refuse")
    attempt(
        "handlers, time limit 0.5 s",
        studio(time_limit_s=0.5),
        example,
        ClipRequest(str(example.path), 0, 8, 128),
        "refuse",
        must="time limit",
    )
    return outcomes


# --- the running app ----------------------------------------------------------------------------------------------


class Poller:
    """Another user: asks the server for its codec list every `every` seconds; records latencies and failures."""

    def __init__(self, url: str, every: float = 1.0) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.every = every
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                rows = self.client.predict(api_name="/codec_rows")
                if not rows["data"]:
                    self.failures.append("empty codec list")
            except Exception as e:  # noqa: BLE001
                self.failures.append(f"{type(e).__name__}: {e}"[:200])
            self.latencies.append(time.monotonic() - began)
            self._stop.wait(self.every)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        return {
            "requests": len(lat),
            "failures": len(self.failures),
            "first_failures": self.failures[:3],
            "median_s": round(lat[len(lat) // 2], 3) if lat else None,
            "max_s": round(lat[-1], 3) if lat else None,
        }


def api_attempt(client, path: Path, frames: int = 2) -> tuple[str, str]:
    """(outcome, message) of `/compare` on one file."""
    from gradio_client import handle_file

    try:
        rows = client.predict(handle_file(str(path)), APP_QP, False, frames, api_name="/compare")
    except Exception as e:  # noqa: BLE001 - gradio_client raises AppError / ValueError / httpx errors
        text = str(e)
        refused = (
            "Cannot run this" in text
            or "exceeds the maximum" in text.lower()
            or "too large" in text.lower()
            or "413" in text
        )
        leaked = "Traceback" in text or "/tmp/" in text
        return ("refused" if refused and not leaked else "FAIL"), text.replace("\n", " ")[:300]
    if not isinstance(rows, list) or not rows or any(not r.get("bytes") for r in rows):
        return "FAIL", f"bad rows: {str(rows)[:200]}"
    return "ok", f"{len(rows)} rows, {rows[0]['width']}x{rows[0]['height']}, {rows[0]['frames']} frames"


def check_server(files: list[HostileFile], data: Path, log=print) -> tuple[list[Outcome], dict]:
    """The corpus through `/compare` of a real `python app.py` (uploads capped at 1 MB), another user polling."""
    import httpx
    from gradio_client import Client

    outcomes: list[Outcome] = []
    extra: dict = {}
    oversize = data / "oversize.mp4"
    oversize.parent.mkdir(parents=True, exist_ok=True)
    oversize.write_bytes(os.urandom(2 * 1024 * 1024))
    uploads = files
    with AppServer(data / "server", env={"DIFFVC_STUDIO_MAX_UPLOAD": "1mb", "DIFFVC_STUDIO_JOBS": "1"}) as server:
        client = Client(server.url, verbose=False)
        extra["rss_start_mb"] = round(server.rss_mb(), 1)
        with Poller(server.url) as poller:
            for f in uploads:
                began = time.monotonic()
                outcome, message = api_attempt(client, f.path)
                outcomes.append(
                    Outcome(
                        "app /compare",
                        f.name,
                        f.expect,
                        outcome,
                        time.monotonic() - began,
                        message,
                        round(server.rss_mb(), 1),
                    )
                )
                log(_line(outcomes[-1]))
            began = time.monotonic()  # past gradio_client's own size check: the server must refuse it too
            response = httpx.post(
                server.url + "/gradio_api/upload",
                timeout=60,
                files={"files": ("oversize.mp4", oversize.read_bytes(), "video/mp4")},
            )
            outcomes.append(
                Outcome(
                    "app upload (raw POST), 1 MB limit",
                    "oversize.mp4 (2 MiB)",
                    "refuse",
                    "refused" if response.status_code == 413 else "FAIL",
                    time.monotonic() - began,
                    f"HTTP {response.status_code}: {response.text[:150]}",
                )
            )
            log(_line(outcomes[-1]))
        extra["poller"] = poller.summary()
        extra["alive_after"] = server.alive()
        extra["rss_end_mb"] = round(server.rss_mb(), 1)
        extra["internal_errors_in_log"] = internal_errors(server.log_text())
    log(f"other user during the corpus: {extra['poller']}")
    with AppServer(data / "server-limit", env={"DIFFVC_STUDIO_TIME_LIMIT": "3"}) as server:  # per-job time limit
        client = Client(server.url, verbose=False)
        example = REPO / "assets/clips/bigbuckbunny.mp4"
        with Poller(server.url) as poller:
            began = time.monotonic()
            outcome, message = api_attempt(client, example, frames=16)
            seconds = time.monotonic() - began
        if outcome == "refused" and "time limit" not in message:
            outcome = "FAIL"
        outcomes.append(
            Outcome("app /compare, time limit 3 s", "bigbuckbunny.mp4 (16 frames)", "refuse", outcome, seconds, message)
        )
        log(_line(outcomes[-1]))
        extra["time_limit"] = {
            "limit_s": 3,
            "job_s": round(seconds, 1),
            "poller": poller.summary(),
            "alive_after": server.alive(),
        }
    return outcomes, extra


# --- report ------------------------------------------------------------------------------------------------------


def _line(o: Outcome) -> str:
    mark = "pass" if o.passed else "FAIL"
    peak = f" {o.peak_mb:.0f} MB" if o.peak_mb else ""
    return (
        f"[{mark}] {o.route:32s} {o.file:28s} expect {o.expect:6s} -> {o.outcome:7s} {o.seconds:6.1f} s{peak}  "
        f"{o.message[:110]}"
    )


def table(outcomes: list[Outcome]) -> str:
    rows = ["| route | file | expected | outcome | s | message |", "| --- | --- | --- | --- | --: | --- |"]
    for o in outcomes:
        message = o.message.replace("|", "\\|").replace("**", "")[:120]
        rows.append(
            f"| {o.route} | {o.file} | {o.expect} | {o.outcome}{'' if o.passed else ' (FAIL)'} | "
            f"{o.seconds:.1f} | {message} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/hostile"))
    parser.add_argument(
        "--routes", nargs="+", choices=["cli", "handlers", "server"], default=["cli", "handlers", "server"]
    )
    args = parser.parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    began = time.monotonic()
    files = make_corpus(args.out / "corpus")
    print(f"corpus: {len(files)} files in {args.out / 'corpus'}")
    outcomes: list[Outcome] = []
    extra: dict = {}
    if "cli" in args.routes:
        outcomes += check_cli(files, args.out / "cli")
    if "handlers" in args.routes:
        outcomes += check_handlers(files, args.out / "handlers")
    if "server" in args.routes:
        server_outcomes, extra = check_server(files, args.out / "app")
        outcomes += server_outcomes
    failed = [o for o in outcomes if not o.passed]
    summary = {
        "files": [asdict(f) | {"path": str(f.path), "bytes": f.path.stat().st_size} for f in files],
        "outcomes": [asdict(o) for o in outcomes],
        "server": extra,
        "failed": len(failed),
        "total": len(outcomes),
        "seconds": round(time.monotonic() - began, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(table(outcomes))
    print(
        f"\n{len(outcomes) - len(failed)}/{len(outcomes)} passed in {summary['seconds']:.0f} s; "
        f"wrote {args.out / 'summary.json'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
