"""The GPU path measured (issue [2.5], item 4): every GPU figure of docs/RESULTS.md's [2.5] in one run.

    python -m tools.gpu_figures --out DIR [--device cuda] [--full-pack random-full] [--budget-s 300] [--quick]

Jobs, in this order (the most wanted first), each one's rows written to DIR/gpu_figures.json and
DIR/gpu_figures.md as soon as it ends, so a run stopped by its time limit keeps every job it finished:

1. `full` at 832x480: seconds per frame (encode, decode, the encoder's stages), U-Net evaluations per second,
   peak GPU memory of the encode and of the decode, TDIR on and off; bf16 autocast, SDPA, channels-last (the CUDA
   path of `codec.diffvc.codec.load_model`);
2. `full` at 1920x1080, the same (the encoder tiles the VAE above 720p: `FLAG_VAE_TILED`);
3. the VAE alone at 1920x1080 (1088 rows coded): one frame encoded and decoded whole and in tiles
   (`codec.diffvc.latent.VAE_TILING`), seconds and peak memory: what tiling saves and costs;
4. `tiny` (the embedded pack) at 832x480 and 1920x1080, TDIR on and off;
5. `full` at 832x480 with `compile=on` (torch.compile of the U-Net and ControlNet; compiling is in the warm-up).

Every coding row says whether the decoder reproduced the encoder's frames. The full pack defaults to
`random-full`: SD-2.1-base's shapes with random weights (no SD weights or trained pack on a lent GPU; the time
does not depend on the weights). A job that starts with less of `--budget-s` left than it needs is skipped, and
listed as not measured with its reason; a job that fails (out of memory, a compile error) is listed with its error.

`--quick` runs the same jobs at small sizes with few frames and no compile (on the CPU in seconds with a small
`--full-pack`: tests/test_gpu_figures.py), its VAE job in 32-pixel tiles so that tiling happens at that size.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codec.diffvc.latent import VAE_TILING, TileGrid
from codec.speed import GIB, SpeedRow, available_intra, gib, measure_speed

REPO = Path(__file__).resolve().parents[1]
# The paper's speed, second-hand (shared/docs/PAPER.md: VoRTeC's A100/A800 figures), in seconds per decoded frame
PAPER_DECODE_S = {(832, 480): 1 / 0.29, (1920, 1080): 1 / 0.02}
QUICK_TILES = TileGrid(tile=4, overlap=1)


@dataclass(frozen=True)
class Job:
    """One measurement: `kind` codec (measure_speed over TDIR settings) or vae (the latent space alone)."""

    name: str
    kind: str
    preset: str
    size: tuple[int, int]
    frames: int = 0
    warmup: int = 3
    tdir: tuple[str, ...] = ("on", "off")
    compile: bool = False
    needs_s: float = 20.0  # about the least time it takes on an H200: skipped when less of the budget is left


def plan(quick: bool) -> list[Job]:
    """The jobs of a run, most wanted first (module docstring)."""
    if quick:
        small, wide = (96, 64), (128, 64)
        return [
            Job("full-480p", "codec", "full", small, frames=3, warmup=1, needs_s=0),
            Job("full-1080p", "codec", "full", wide, frames=3, warmup=1, needs_s=0),
            Job("vae-1080p", "vae", "full", small, needs_s=0),
            Job("tiny-480p", "codec", "tiny", small, frames=3, warmup=1, needs_s=0),
            Job("tiny-1080p", "codec", "tiny", wide, frames=3, warmup=1, needs_s=0),
        ]
    return [
        Job("full-480p", "codec", "full", (832, 480), frames=6, needs_s=30),
        Job("full-1080p", "codec", "full", (1920, 1080), frames=3, warmup=2, needs_s=60),
        Job("vae-1080p", "vae", "full", (1920, 1080), needs_s=15),
        Job("tiny-480p", "codec", "tiny", (832, 480), frames=8, needs_s=15),
        Job("tiny-1080p", "codec", "tiny", (1920, 1080), frames=4, needs_s=15),
        Job("full-480p-compiled", "codec", "full", (832, 480), frames=6, compile=True, needs_s=150),
    ]


@dataclass
class Figures:
    """What a run has measured so far, and why the rest was not; written out after every job."""

    out: Path
    environment: dict
    packs: dict[str, str]
    codec_rows: list[dict] = field(default_factory=list)
    vae_rows: list[dict] = field(default_factory=list)
    not_measured: list[dict] = field(default_factory=list)

    def unmeasured(self, job: str, reason: str) -> None:
        self.not_measured = [n for n in self.not_measured if n["job"] != job] + [{"job": job, "reason": reason}]
        self.write()

    def measured(self, job: str) -> None:
        self.not_measured = [n for n in self.not_measured if n["job"] != job]
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {
            "environment": self.environment,
            "packs": self.packs,
            "codec": self.codec_rows,
            "vae": self.vae_rows,
            "not_measured": self.not_measured,
        }
        (self.out / "gpu_figures.json").write_text(json.dumps(data, indent=1) + "\n")
        (self.out / "gpu_figures.md").write_text(self.markdown())

    def markdown(self) -> str:
        env = self.environment
        lines = [
            "# GPU figures (`python -m tools.gpu_figures`)",
            "",
            f"Device: {env['device_name']}; torch {env['torch']} (built for CUDA {env['cuda']}), diffusers "
            f"{env['diffusers']}, "
            f"Python {env['python']}; source {env['source_sha256'][:12]}; {env['mode']}.",
            "",
            *(f"* `{preset}` pack: {what}" for preset, what in self.packs.items()),
            "* I-frames: "
            + (
                "HEVC-intra through x265 (DiffVC's default)"
                if env["intra"] == "hevc"
                else "the learned intra codec (no PyAV here, so no x265); one I-frame per clip, the rest P-frames"
            ),
            "",
            "## DiffVC, seconds per frame",
            "",
            "Encode and decode over the whole clip after a warm-up clip; stages from the encoder (which runs the "
            "decoder in its loop); held: GPU memory allocated after the warm-up (the weights, chiefly); peak: "
            "`torch.cuda.max_memory_allocated` during the encode / the decode, the weights included (n/a on a CPU); "
            "T_s (K): denoising steps per frame (of them reused by TDIR); paper / ours: the paper's decoding time per "
            "frame (3.4 s at 832x480, 50 s at 1920x1080, A100-class, second-hand) over ours.",
            "",
            "| preset | size | compile | TDIR | T_s (K) | encode | decode | motion | latent | entropy | diffusion "
            "| vae | U-Net evals/s | held GiB | peak enc GiB | peak dec GiB | VAE tiled | exact | warm-up s "
            "| paper / ours |",
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: | --- | --- | ---: | ---: |",
        ]
        for r in self.codec_rows:
            per = r["per_frame"]
            ratio = f"{r['paper_ratio']:.1f}x" if r.get("paper_ratio") else "-"
            lines.append(
                f"| {r['preset']} | {r['size']} | {'on' if r['compile'] else 'off'} | {r['label'].split()[-1]} "
                f"| {r['sampling_steps']} ({r['tdir_k']}) | "
                + " | ".join(
                    f"{per[k]:.3f}" for k in ("encode", "decode", "motion", "latent", "entropy", "diffusion", "vae")
                )
                + f" | {r['unet_evals_per_s']:.1f} | {gib(r['allocated_bytes'])} | {gib(r['peak_encode_bytes'])} "
                f"| {gib(r['peak_decode_bytes'])} "
                f"| {'yes' if r['vae_tiled'] else 'no'} | {'yes' if r['exact'] else '**NO**'} | {r['warmup_s']:.1f} "
                f"| {ratio} |"
            )
        lines += [
            "",
            "## The VAE alone, one frame",
            "",
            "| size (coded) | mode | tiles | encode s | decode s | peak enc GiB | peak dec GiB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.vae_rows:
            if "error" in r:
                lines.append(f"| {r['size']} | {r['mode']} | {r.get('tiles', '-')} | {r['error']} | | | |")
                continue
            lines.append(
                f"| {r['size']} | {r['mode']} | {r['tiles']} | {r['encode_s']:.3f} | {r['decode_s']:.3f} "
                f"| {gib(r['peak_encode_bytes'])} | {gib(r['peak_decode_bytes'])} |"
            )
        lines += ["", "## Not measured", ""]
        lines += [f"* {n['job']}: {n['reason']}" for n in self.not_measured] or ["(everything was measured)"]
        return "\n".join(lines) + "\n"


def environment(device: str, quick: bool) -> dict:
    import diffusers

    cuda = device.startswith("cuda")
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)",
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "source_sha256": source_hash(),
        "mode": "quick (small sizes, few frames)" if quick else "full sizes",
        "intra": available_intra(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def source_hash() -> str:
    """sha256 of the library's and tools' Python sources (a lent GPU gets the tree without its git history)."""
    h = hashlib.sha256()
    for path in sorted([*(REPO / "codec").rglob("*.py"), *(REPO / "tools").rglob("*.py")]):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def describe_pack(pack: str) -> str:
    if pack.startswith("random-"):
        return (
            f"{pack}: random-init weights at the preset's shapes (SD-2.1-base's for full); the time does not depend "
            "on the weights"
        )
    from codec.diffvc.pack import pack_info, resolve_pack
    from codec.errors import CodecError

    try:
        folder = resolve_pack(pack or None)
    except CodecError as e:
        return f"{pack}: {e}"
    if folder is None:
        return "none installed"
    return f"{folder.name} ({'the installed default, ' if not pack else ''}sha256 {pack_info(folder).sha256[:16]})"


def run_codec_job(job: Job, pack: str, device: str) -> list[dict]:
    extra = f":intra={available_intra()}" + (":compile=on" if job.compile else "")
    rows: list[SpeedRow] = measure_speed(
        pack, job.size, job.frames, device, extra=extra, tdir=job.tdir, warmup_frames=job.warmup
    )
    out = []
    for row in rows:
        record = {"job": job.name, "preset": job.preset, "size": f"{job.size[0]}x{job.size[1]}", **row.to_dict()}
        record["compile"] = job.compile
        paper = PAPER_DECODE_S.get(job.size)
        record["paper_ratio"] = paper / row.per_frame()["decode"] if paper and row.decode_s > 0 else None
        out.append(record)
    return out


def run_vae_job(job: Job, pack: str, device: str, grid: TileGrid) -> list[dict]:
    """One frame of `job.size` (padded as the codec pads it) through the pack's VAE, whole and in `grid`'s tiles."""
    from codec.diffvc.codec import load_model, pick_device
    from codec.diffvc.config import PAD_MULTIPLE
    from codec.diffvc.latent import vae_tiling

    dev = pick_device(device)
    space = load_model(pack, str(dev), False)[0].latent_space
    if not space.tileable:
        raise ValueError(f"pack {pack!r} has no VAE to tile")
    h, w = (-(-v // PAD_MULTIPLE) * PAD_MULTIPLE for v in (job.size[1], job.size[0]))
    frames = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    cuda = dev.type == "cuda"
    rows = []
    for mode, tiles in (("whole", None), ("tiled", grid)):
        count = 1 if tiles is None else len(tiles.starts(h // 8)) * len(tiles.starts(w // 8))
        row = {"size": f"{job.size[0]}x{job.size[1]} ({w}x{h})", "mode": mode, "tiles": count}
        try:
            with torch.no_grad(), vae_tiling(tiles):
                space.decode(space.encode(frames))  # warm-up
                row["encode_s"], row["peak_encode_bytes"], latent = _timed(cuda, space.encode, frames)
                row["decode_s"], row["peak_decode_bytes"], _ = _timed(cuda, space.decode, latent)
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory ({str(e).splitlines()[0][:100]})"
            _release()
        rows.append(row)
    return rows


def _timed(cuda: bool, fn, arg):
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn(arg)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() if cuda else None, result


def _release() -> None:
    """Drop every loaded model, so that the next job's peak memory holds its own weights only."""
    from codec.diffvc.codec import load_model

    load_model.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Run the plan; 0 when every coding decoded exactly and no job failed (jobs skipped for time are not
    failures), 1 otherwise, 2 when the device is missing."""
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_figures", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_figures.json and gpu_figures.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--full-pack", default="random-full", help="the full preset's pack (default: random init)")
    parser.add_argument("--tiny-pack", default="", help="the tiny preset's pack (default: the installed one)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="seconds after which no job is started")
    parser.add_argument("--quick", action="store_true", help="small sizes, few frames, no compile (a CPU check)")
    parser.add_argument("--jobs", nargs="+", metavar="NAME", help="run only these jobs (default: all)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    start = time.perf_counter()
    packs = {"full": args.full_pack, "tiny": args.tiny_pack}
    figures = Figures(args.out, environment(args.device, args.quick), {k: describe_pack(v) for k, v in packs.items()})
    figures.write()
    failed, loaded = False, None
    for job in plan(args.quick):
        if args.jobs and job.name not in args.jobs:
            continue
        left = args.budget_s - (time.perf_counter() - start)
        if left < job.needs_s:
            figures.unmeasured(job.name, f"time budget ({left:.0f} s left, needs ~{job.needs_s:.0f} s)")
            continue
        if loaded != (packs[job.preset], job.compile):  # one model in memory at a time
            _release()
            loaded = (packs[job.preset], job.compile)
        print(f"[{time.perf_counter() - start:6.1f} s] {job.name} ...", flush=True)
        figures.unmeasured(job.name, "started, and stopped by the time limit before it ended")  # until it ends
        try:
            if job.kind == "vae":
                grid = QUICK_TILES if args.quick else VAE_TILING
                figures.vae_rows += run_vae_job(job, packs[job.preset], args.device, grid)
            else:
                rows = run_codec_job(job, packs[job.preset], args.device)
                figures.codec_rows += rows
                for r in rows:
                    print(f"    {r['label']}: {r['per_frame']['decode']:.3f} s per decoded frame, peak decode "
                          f"{gib(r['peak_decode_bytes'])} GiB, exact {r['exact']}", flush=True)  # fmt: skip
        except Exception as e:  # out of memory, a compile error: recorded, and the next job runs
            failed, loaded = True, None
            figures.unmeasured(job.name, f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
            _release()
        else:
            figures.measured(job.name)
    print(f"[{time.perf_counter() - start:6.1f} s] done", flush=True)
    print(figures.markdown())
    return 1 if failed or not all(r["exact"] for r in figures.codec_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
