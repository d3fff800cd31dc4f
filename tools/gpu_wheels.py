"""The wheels a lent GPU machine needs for tools/gpu_check.sh, downloaded into .whl/ (`make gpu-wheels`).

    python -m tools.gpu_wheels [--dest .whl] [--all] [--dry-run]

A lent GPU (nvidia-h200) has Python 3.12 with PyTorch and a long list of packages, and no network: what this
project needs beyond that travels as wheels in an ignored folder named in the device call's `carry`, installed there
with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`. This downloads, for CPython 3.12 on
manylinux x86_64, every package pinned in requirements.txt that the machine lacks (`DEVICE_HAS`), except those the
GPU checks never import (`NOT_NEEDED`, each with its reason; `--all` takes them too, to see what they would cost),
and checks that the wheels and the working tree that travels with them stay under the 64 MiB a call may carry.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # bytes a device call sends: the working tree and the carried paths together
# requirements.txt's packages that nvidia-h200's image already holds (/work/.library/device/KINDS.md, "Python
# packages already there", read 2026-11-17: torch 2.11, numpy 2.5, huggingface-hub 1.33, ...); theirs are used
DEVICE_HAS = frozenset(
    {
        "torch",
        "torchvision",
        "numpy",
        "safetensors",
        "accelerate",
        "pandas",
        "matplotlib",
        "tqdm",
        "pytest",
        "opencv-python-headless",
    }
)
# requirements.txt's packages that neither `pytest -m gpu` nor tools.gpu_figures imports
NOT_NEEDED = {
    "av": (
        "video files and the x265/x264/AV1 anchors (PyAV is optional: codec.video); its 34 MiB wheel is more than a "
        "call carries beside the 38 MiB working tree, so a lent GPU codes I-frames with the learned intra codec"
    ),
    "gradio": "the app (app/), not the library",
    "plotly": "the app's figures",
    "ray": "evaluation jobs on a cluster (codec.eval.cluster)",
    "playwright": "the app's browser test",
    "ruff": "lint, run where the code is written",
    "lpips": "a CPU test's cross-check of piq",
    "piq": "quality metrics (codec.metrics); the GPU checks time coding, not quality",
    "vmaf-torch": "the VMAF metric",
    "yuvio": "vmaf-torch's dependency",
    "bjontegaard": "BD-rates in reports",
}
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def pinned(requirements: str) -> dict[str, str]:
    """{name: version} of a requirements file's `name==version` lines (comments and blank lines skipped)."""
    out = {}
    for line in requirements.splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+)", line)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def plan(requirements: str, everything: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """(packages to download {name: version}, packages left out {name: why})."""
    wanted, left_out = {}, {}
    for name, version in pinned(requirements).items():
        if name in DEVICE_HAS:
            left_out[name] = "already on the GPU machine"
        elif name in NOT_NEEDED and not everything:
            left_out[name] = f"not needed: {NOT_NEEDED[name]}"
        else:
            wanted[name] = version
    return wanted, left_out


def download(name: str, version: str, dest: Path) -> None:
    """One wheel (no dependencies) for CPython 3.12 on manylinux x86_64, as the device README shows."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.12", "--implementation", "cp", *platforms, "-d", str(dest), f"{name}=={version}"],
        check=True,
    )  # fmt: skip


def tree_bytes() -> int:
    """Bytes of the working tree a device call sends: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    return sum((REPO / name).stat().st_size for name in listed.decode().split("\0") if name and (REPO / name).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_wheels", description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=REPO / ".whl")
    parser.add_argument("--all", action="store_true", help="also the packages the GPU checks do not need")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, download nothing")
    args = parser.parse_args(argv)
    wanted, left_out = plan((REPO / "requirements.txt").read_text(), args.all)
    print("download:", ", ".join(f"{k}=={v}" for k, v in wanted.items()))
    for name, why in left_out.items():
        print(f"left out: {name} ({why})")
    if args.dry_run:
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    for name, version in wanted.items():
        download(name, version, args.dest)
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    tree = tree_bytes()
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.1f} MiB  {wheel.name}")
    print(
        f"wheels {size / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {(size + tree) / 2**20:.1f} MiB "
        f"of the {CARRY_LIMIT / 2**20:.0f} MiB a device call carries"
    )
    if size + tree > CARRY_LIMIT:
        print("too large: leave out what the checks do not import (without --all), or untracked files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
