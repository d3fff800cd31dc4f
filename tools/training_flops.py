"""FLOPs of one training step of each `full` stage at the GPU schedule of docs/TRAINING.md, and the hours they imply
on A100s and H100s at an assumed utilisation (issue [2.5], "Training at scale"). Nothing here runs on a GPU: the
hours are estimates, FLOPs divided by an assumed throughput, not measured step times.

    python -m tools.training_flops [--utilisation 0.3] [--gpus 8]

FLOPs are counted by `torch.utils.flop_counter` (matrix products, convolutions, attention; elementwise work is
left out) at the schedule's shapes:
* SD-2.1-base's U-Net and its ControlNet copy, and SD-2.1's VAE, on the meta device (their real sizes, shapes only:
  no memory, no arithmetic);
* the codec's own parts at the `full` widths (SpyNet, MV codec, temporal contexts, intra and inter latent codecs)
  and DISTS' VGG16 running on this CPU at 64x64, with a free latent space (an 8x8 average) in the VAE's place,
  scaled by the pixel ratio: they are convolutional throughout, so their FLOPs grow with the pixel count.
Gradient checkpointing adds one more forward pass of the checkpointed networks (U-Net, ControlNet, VAE) where
gradients flow through them. The cross-check at the end puts the paper's reported decoding speed (about 3.4 s per
480p frame on an A100-class GPU, second-hand: shared/docs/PAPER.md) on the same footing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from codec.diffvc.config import full_config
from codec.diffvc.diffusion import (
    DiffusionStage,
    full_diffusion_config,
    num_reuse_steps,
    num_sampling_steps,
    tiny_diffusion_config,
)
from codec.diffvc.latent import SD21_VAE_CONFIG, LatentSpace, LatentSpaceConfig
from codec.diffvc.model import DiffVCModel
from codec.train.stages import CodecStage, StageOptions

PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0}  # dense bf16 tensor-core peaks (SXM parts)
SMALL = 64  # the CPU-side counts run at 64x64 and are scaled by (crop / 64)^2
PAPER_DECODE_S = 3.4  # s per 832x480 frame on an A100-class GPU (VoRTeC's figure for DiffVC, shared/docs/PAPER.md)


@dataclass(frozen=True)
class Schedule:
    """One stage of the GPU schedule: steps, sequences per GPU and step, frames per sequence, square crop; for
    finetune the gradient steps through the sampler; whether gradient checkpointing is on."""

    stage: str
    steps: int
    batch: int
    frames: int
    crop: int = 256
    grad_steps: int = 1
    checkpointing: bool = True


SCHEDULE = (
    Schedule("flow", steps=20_000, batch=8, frames=4, checkpointing=False),
    Schedule("codec", steps=60_000, batch=4, frames=5),
    Schedule("diffusion", steps=30_000, batch=4, frames=3),
    Schedule("finetune", steps=5_000, batch=2, frames=3),
)


def counted(run: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


class AveragedLatent(LatentSpace):
    """A free stand-in for the VAE (4 channels at 1/8: an 8x8 average), so the codec's own FLOPs count alone."""

    def __init__(self) -> None:
        super().__init__()
        self.config = LatentSpaceConfig(kind="sd_vae")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return F.pad(F.avg_pool2d(frames * 2 - 1, 8), (0, 0, 0, 0, 0, 1))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((F.interpolate(latents[:, :3], scale_factor=8) + 1) / 2).clamp(0, 1)


@dataclass(frozen=True)
class Costs:
    """FLOPs per item at a 256x256 crop (a frame, a latent, a frame pair)."""

    denoiser_fwd: float  # U-Net + ControlNet, one evaluation
    denoiser_bwd: float
    vae_encode: float
    vae_decode: float
    vae_decode_bwd: float  # to the latent only (the VAE is frozen)
    dists_fwd: float  # both images' VGG16 features
    dists_bwd: float  # to the decoded frame only
    spynet_fwd: float  # one frame pair
    spynet_bwd: float

    @classmethod
    def count(cls, crop: int = 256) -> Costs:
        latent = crop // 8
        # 1. The denoiser at SD-2.1-base's size, on the meta device.
        config = full_diffusion_config()
        with torch.device("meta"):
            stage = DiffusionStage.from_config(config)
        z = torch.randn(1, 4, latent, latent, device="meta")
        condition = torch.randn(1, config.condition_channels, latent, latent, device="meta")
        tokens = torch.randn(1, config.qp_prompt.num_tokens, config.cross_attention_dim, device="meta")
        t = torch.tensor([500], device="meta")
        out: list[torch.Tensor] = []
        denoiser_fwd = counted(lambda: out.append(stage._network_eps(z, t, condition, tokens, 1.0)))
        denoiser_bwd = counted(lambda: out[0].float().square().mean().backward())
        # 2. SD-2.1's VAE, meta device.
        from diffusers import AutoencoderKL

        with torch.device("meta"):
            vae = AutoencoderKL(**SD21_VAE_CONFIG).requires_grad_(False)
        frame = torch.randn(1, 3, crop, crop, device="meta")
        vae_encode = counted(lambda: vae.encode(frame).latent_dist.mean)
        code = torch.randn(1, 4, latent, latent, device="meta", requires_grad=True)
        decoded: list[torch.Tensor] = []
        vae_decode = counted(lambda: decoded.append(vae.decode(code).sample))
        vae_decode_bwd = counted(lambda: decoded[0].square().mean().backward())
        # 3. DISTS and SpyNet on the CPU at 64x64, scaled.
        from codec.diffvc.motion import FlowEstimatorConfig, SpyNetFlow
        from codec.metrics import perceptual_model

        scale = (crop / SMALL) ** 2
        dists = perceptual_model("dists").requires_grad_(False)
        x = torch.rand(1, 3, SMALL, SMALL, requires_grad=True)
        y = torch.rand(1, 3, SMALL, SMALL)
        distance: list[torch.Tensor] = []
        dists_fwd = counted(lambda: distance.append(dists(x, y).mean()))
        dists_bwd = counted(lambda: distance[0].backward())
        spynet = SpyNetFlow(FlowEstimatorConfig.full())
        flows: list[torch.Tensor] = []
        spynet_fwd = counted(lambda: flows.append(spynet(x.detach(), y)))
        spynet_bwd = counted(lambda: flows[0].square().mean().backward())
        return cls(
            denoiser_fwd,
            denoiser_bwd,
            vae_encode,
            vae_decode,
            vae_decode_bwd,
            dists_fwd * scale,
            dists_bwd * scale,
            spynet_fwd * scale,
            spynet_bwd * scale,
        )


def codec_flops(frames: int, crop: int = 256, backward: bool = True) -> float:
    """The codec's own FLOPs over one `frames`-frame sequence (flow estimation, MV, contexts, latent codecs; no VAE),
    forward and, with `backward`, backward, counted at 64x64 on the CPU and scaled to `crop`."""
    config = full_config()
    small_diffusion = tiny_diffusion_config(
        latent_channels=4, context_channels=config.context.channels[0], block_out_channels=(32,), anchor="none",
        cross_attention_dim=32, norm_num_groups=8, head_channels=8,
    )  # fmt: skip
    model = DiffVCModel(replace(config, diffusion=small_diffusion, latent_space=LatentSpaceConfig()))
    model.latent_space = AveragedLatent()
    stage = CodecStage(model, StageOptions(qp=32))
    batch = {"frames": torch.rand(1, frames, 3, SMALL, SMALL, generator=torch.Generator().manual_seed(0))}
    values: list[dict[str, torch.Tensor]] = []
    with torch.set_grad_enabled(backward):
        flops = counted(lambda: values.append(stage(batch, 1)))
    if backward:
        flops += counted(lambda: values[0]["loss"].backward())
    return flops * (crop / SMALL) ** 2


def step_flops(s: Schedule, costs: Costs) -> dict[str, float]:
    """FLOPs of one step on one GPU, by part."""
    gc = 1 if s.checkpointing else 0
    frames = s.batch * s.frames
    if s.stage == "flow":
        return {"spynet": s.batch * (s.frames - 1) * (costs.spynet_fwd + costs.spynet_bwd)}
    coding = {"vae encode": frames * costs.vae_encode, "vae decode": frames * costs.vae_decode}
    if s.stage == "codec":
        return {
            **coding,
            "vae decode (backward)": frames * (costs.vae_decode_bwd + gc * costs.vae_decode),
            "codec": s.batch * codec_flops(s.frames, s.crop),
        }
    coding["codec (frozen)"] = s.batch * codec_flops(s.frames, s.crop, backward=False)
    if s.stage == "diffusion":
        return {**coding, "denoiser": frames * ((1 + gc) * costs.denoiser_fwd + costs.denoiser_bwd)}
    # finetune: every frame sampled (T_s steps; TDIR skips K of them from the third frame on), gradients through the
    # last `grad_steps`, the decoded frame through the VAE and DISTS, DISTS of the codec's frame logged beside it
    steps = num_sampling_steps(50, 0.5)
    evals = s.batch * sum(steps - (num_reuse_steps(steps, 0.5) if i >= 2 else 0) for i in range(s.frames))
    tracked = frames * s.grad_steps
    return {
        **coding,
        "denoiser": (evals + gc * tracked) * costs.denoiser_fwd + tracked * costs.denoiser_bwd,
        "vae decode (sampled)": frames * ((1 + gc) * costs.vae_decode + costs.vae_decode_bwd),
        "dists": frames * (2 * costs.dists_fwd + costs.dists_bwd),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utilisation", type=float, default=0.3, help="achieved fraction of the bf16 peak")
    parser.add_argument("--gpus", type=int, default=8, help="data-parallel GPUs (hours are wall-clock)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    costs = Costs.count()
    print(f"per 256x256 item, TFLOP: {', '.join(f'{k} {v / 1e12:.3f}' for k, v in vars(costs).items())}")
    print(f"\nstage | steps | per GPU and step | TFLOP per step | A100 / H100 hours on {args.gpus} GPUs at "
          f"{args.utilisation:.0%} of the bf16 peak")  # fmt: skip
    for s in SCHEDULE:
        parts = step_flops(s, costs)
        total = sum(parts.values())
        hours = {
            gpu: s.steps * total / (peak * 1e12 * args.utilisation) / 3600 for gpu, peak in PEAK_BF16_TFLOPS.items()
        }
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items())
        print(
            f"{s.stage} | {s.steps} | {s.batch} x {s.frames} frames of {s.crop} | {total / 1e12:.2f} ({shares}) | "
            f"{hours['A100']:.1f} / {hours['H100']:.1f}"
        )
    # The paper's decoding speed on the same footing: one 832x480 frame = T_s denoiser evaluations + a VAE decode.
    scale = (832 * 480) / (256 * 256)  # convolutions; the attention's share grows faster, so this is a lower bound
    frame = num_sampling_steps(50, 0.5) * costs.denoiser_fwd * scale + costs.vae_decode * scale
    print(
        f"\ncross-check: one 480p frame of sampling is >= {frame / 1e12:.0f} TFLOP; decoded in {PAPER_DECODE_S} s "
        f"(the paper's A100-class figure) that is {frame / PAPER_DECODE_S / 1e12:.0f} TFLOP/s, "
        f"{frame / PAPER_DECODE_S / 1e12 / PEAK_BF16_TFLOPS['A100']:.0%} of an A100's bf16 peak"
    )


if __name__ == "__main__":
    main()
