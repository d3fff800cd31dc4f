"""`python -m codec speed`: DiffVC's time per frame, per stage, with TDIR on and off, after a warm-up.

Runs the registered `diffvc` codec (a pack, or a random-init preset) on a synthetic clip of the given size:
encode and decode are timed apart; the stage split (motion, latent, entropy, diffusion, vae) comes from the
encoder's stage timer (the encoder runs the whole decoder in its loop). U-Net evaluations per second = U-Net
evaluations / diffusion seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from codec.diffvc.timing import STAGES
from codec.registry import get_codec
from codec.video import synthetic_clip


@dataclass
class SpeedRow:
    label: str
    frames: int
    encode_s: float
    decode_s: float
    stages: dict[str, float]
    unet_evals: int

    def per_frame(self) -> dict[str, float]:
        return {
            "encode": self.encode_s / self.frames,
            "decode": self.decode_s / self.frames,
            **{s: self.stages.get(s, 0.0) / self.frames for s in STAGES},
        }

    @property
    def unet_evals_per_s(self) -> float:
        return self.unet_evals / self.stages["diffusion"] if self.stages.get("diffusion") else 0.0


def measure_speed(
    pack: str, size: tuple[int, int], frames: int, device: str, qp: int = 32, extra: str = ""
) -> list[SpeedRow]:
    """Time TDIR on (ratio from the pack) and off on one synthetic clip; warm-up run first for each."""
    video = synthetic_clip(frames=frames, height=size[1], width=size[0], seed=1)
    warm = synthetic_clip(frames=3, height=size[1], width=size[0], seed=2)
    rows = []
    for label, tdir in (("TDIR on", "on"), ("TDIR off", "off")):
        codec = get_codec(f"diffvc:pack={pack}:device={device}:tdir={tdir}:intra_period=-1{extra}")
        codec.decode(codec.encode(warm, qp).bitstream)
        encoded = codec.encode(video, qp)
        start = time.perf_counter()
        codec.decode(encoded.bitstream)
        decode_s = time.perf_counter() - start
        rows.append(
            SpeedRow(
                label,
                frames,
                encoded.timings["encode"],
                decode_s,
                {s: encoded.timings[s] for s in STAGES},
                encoded.stats["unet_evals"],
            )
        )
    return rows


def format_rows(rows: list[SpeedRow], header: str) -> str:
    cols = ["encode", "decode", *STAGES]
    lines = [header, f"{'':10s}" + "".join(f"{c:>11s}" for c in cols) + f"{'U-Net evals':>13s}{'evals/s':>9s}"]
    for row in rows:
        per = row.per_frame()
        lines.append(
            f"{row.label:10s}"
            + "".join(f"{per[c]:11.4f}" for c in cols)
            + f"{row.unet_evals:13d}{row.unet_evals_per_s:9.1f}"
        )
    lines.append("(seconds per frame; stages from the encoder, which runs the decoder in its loop)")
    return "\n".join(lines)


def device_description(device: str) -> str:
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads)"
