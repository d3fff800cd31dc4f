"""`python -m codec speed`: DiffVC's time per frame, per stage, with TDIR on and off, after a warm-up.

Runs the registered `diffvc` codec (a pack, or a random-init preset) on a synthetic clip of the given size:
encode and decode are timed apart; the stage split (motion, latent, entropy, diffusion, vae) comes from the
encoder's stage timer (the encoder runs the whole decoder in its loop). U-Net evaluations per second = U-Net
evaluations / diffusion seconds. On CUDA each row also has the peak memory of its encode and of its decode
(`torch.cuda.max_memory_allocated`, the model's weights included); on the CPU there is no such counter (None,
shown as n/a). Every row checks that the decoder reproduced the encoder's frames (`exact`). Without PyAV the
I-frames are the learned intra codec's (`available_intra`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from codec.diffvc.timing import STAGES
from codec.registry import get_codec
from codec.video import synthetic_clip

GIB = 2**30


@dataclass
class SpeedRow:
    """One configuration's timings over `frames` frames; seconds are totals (per_frame() divides).

    warmup_s: the warm-up clip's encode + decode (first-call costs: kernels loaded, cuDNN's choices, torch.compile);
    peak_*_bytes: CUDA's peak allocated memory during the encode / the decode (None on the CPU); allocated_bytes:
    memory held after the warm-up (the model's weights, chiefly); exact: decoded frames == the encoder's
    reconstruction; steps / sampling_steps / tdir_k / vae_tiled: what the stream ran (the full schedule's length,
    the denoising steps T_s of a frame, the K of them TDIR reuses, the VAE in tiles)."""

    label: str
    frames: int
    encode_s: float
    decode_s: float
    stages: dict[str, float]
    unet_evals: int
    warmup_s: float = 0.0
    peak_encode_bytes: int | None = None
    peak_decode_bytes: int | None = None
    allocated_bytes: int | None = None
    exact: bool = True
    steps: int = 0
    sampling_steps: int = 0
    tdir_k: int = 0
    vae_tiled: bool = False

    def per_frame(self) -> dict[str, float]:
        return {
            "encode": self.encode_s / self.frames,
            "decode": self.decode_s / self.frames,
            **{s: self.stages.get(s, 0.0) / self.frames for s in STAGES},
        }

    @property
    def unet_evals_per_s(self) -> float:
        return self.unet_evals / self.stages["diffusion"] if self.stages.get("diffusion") else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "per_frame": self.per_frame(), "unet_evals_per_s": self.unet_evals_per_s}


def available_intra() -> str:
    """DiffVC's default I-frame coder, HEVC-intra through x265, where PyAV is installed; else the learned intra codec
    (a lent GPU machine has no PyAV: tools/gpu_wheels.py)."""
    from codec.baselines.ffmpeg import X265

    return "hevc" if X265.unavailable_reason() is None else "learned"


def measure_speed(
    pack: str,
    size: tuple[int, int],
    frames: int,
    device: str,
    qp: int = 32,
    extra: str = "",
    tdir: tuple[str, ...] = ("on", "off"),
    warmup_frames: int = 3,
) -> list[SpeedRow]:
    """Time each TDIR setting (on: the pack's ratio) on one synthetic clip of `size` (width, height), each after a
    warm-up on a `warmup_frames`-frame clip of the same size; `extra`: more codec options (":steps=4:compile=on").
    Every P-frame is coded (`skip=false`): a skipped frame costs next to nothing and would flatter the figures."""
    from codec.diffvc.codec import pick_device
    from codec.diffvc.diffusion import num_sampling_steps

    cuda = pick_device(device).type == "cuda"
    video = synthetic_clip(frames=frames, height=size[1], width=size[0], seed=1)
    warm = synthetic_clip(frames=warmup_frames, height=size[1], width=size[0], seed=2)
    rows = []
    for setting in tdir:
        codec = get_codec(f"diffvc:pack={pack}:device={device}:tdir={setting}:intra_period=-1:skip=false{extra}")
        start = time.perf_counter()
        codec.decode(codec.encode(warm, qp).bitstream)
        warmup_s = time.perf_counter() - start
        allocated = torch.cuda.memory_allocated() if cuda else None
        _reset_peak(cuda)
        encoded = codec.encode(video, qp)
        peak_encode = _peak(cuda)
        _reset_peak(cuda)
        start = time.perf_counter()
        decoded = codec.decode(encoded.bitstream)
        decode_s = time.perf_counter() - start
        rows.append(
            SpeedRow(
                f"TDIR {setting}",
                frames,
                encoded.timings["encode"],
                decode_s,
                {s: encoded.timings[s] for s in STAGES},
                encoded.stats["unet_evals"],
                warmup_s,
                peak_encode,
                _peak(cuda),
                allocated,
                bool(np.array_equal(decoded.frames, encoded.reconstruction.frames)),
                encoded.params["steps"],
                num_sampling_steps(encoded.params["steps"], encoded.params["strength"]),
                encoded.params["tdir_k"],
                bool(encoded.params.get("vae_tiled")),
            )
        )
    return rows


def diffusion_time_ratio(rows: list[SpeedRow]) -> float | None:
    """TDIR on's diffusion seconds over TDIR off's, from one measurement's rows (None without both)."""
    by_label = {r.label: r for r in rows}
    on, off = by_label.get("TDIR on"), by_label.get("TDIR off")
    if on is None or off is None or not off.stages.get("diffusion"):
        return None
    return on.stages.get("diffusion", 0.0) / off.stages["diffusion"]


def _reset_peak(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(cuda: bool) -> int | None:
    if not cuda:
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def gib(value: int | None) -> str:
    """Bytes as GiB with two decimals; n/a for None (no memory counter on the CPU)."""
    return "n/a" if value is None else f"{value / GIB:.2f}"


def format_rows(rows: list[SpeedRow], header: str) -> str:
    cols = ["encode", "decode", *STAGES]
    lines = [
        header,
        f"{'':10s}"
        + "".join(f"{c:>11s}" for c in cols)
        + f"{'U-Net evals':>13s}{'evals/s':>9s}{'peak enc GiB':>14s}{'peak dec GiB':>14s}{'exact':>7s}",
    ]
    for row in rows:
        per = row.per_frame()
        lines.append(
            f"{row.label:10s}"
            + "".join(f"{per[c]:11.4f}" for c in cols)
            + f"{row.unet_evals:13d}{row.unet_evals_per_s:9.1f}"
            + f"{gib(row.peak_encode_bytes):>14s}{gib(row.peak_decode_bytes):>14s}{'yes' if row.exact else 'NO':>7s}"
        )
    lines.append(
        "(seconds per frame; stages from the encoder, which runs the decoder in its loop; peak memory: CUDA's "
        "allocator, weights included, n/a on the CPU)"
    )
    if rows:
        first = rows[0]
        lines.append(
            f"{first.steps}-step schedule, T_s = {first.sampling_steps} denoising steps per frame, TDIR K = "
            f"{', '.join(str(r.tdir_k) for r in rows)}; VAE in tiles: {'yes' if first.vae_tiled else 'no'}"
        )
    return "\n".join(lines)


def device_description(device: str) -> str:
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads)"
