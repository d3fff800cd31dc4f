"""The diffusion stage of DiffVC: a U-Net guided by a ControlNet branch, prompted by the QP, sampled with TDIR.

DiffVC (Ma & Chen, "Diffusion-based Perceptual Neural Video Compression with Temporal Diffusion Information
Reuse", arXiv 2501.13528) refines each frame's reconstructed latent l^_t with a latent diffusion model:

* **Denoiser.** diffusers' `UNet2DConditionModel` (preset `full`: exactly Stable Diffusion 2.1-base's U-Net,
  Rombach et al. 2022 / Stability AI 2022; preset `tiny`: a small U-Net for CPUs), guided by a diffusers
  `ControlNetModel` (Zhang et al., "Adding Conditional Control to Text-to-Image Diffusion Models", 2023) that is a
  trainable copy of the U-Net's encoder. The ControlNet's condition is at latent resolution: [l^_t, C1], the
  reconstructed latent concatenated with the temporal context C1 (see docs/DESIGN.md section 3).
* **QPP.** The QP replaces SD's text prompt: `QPPrompt` turns it into cross-attention tokens for both networks.
  No text encoder.
* **Sampling.** DDIM (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021), eta = 0, started
  img2img-style from the seeded, noised reconstruction at strength s: z = sqrt(a_s) l^_t + sqrt(1 - a_s) eps.
* **TDIR.** For P-frames, the first K of the T_s steps skip both networks and derive the noise estimate from the
  previous frame's x0 prediction (motion-compensated by the caller): eps = (z_t - sqrt(a_t) x0) / sqrt(1 - a_t).

Latents here are whatever the latent space produces ([N, C, h, w], h = H / 8); nothing is clamped. Timesteps
t are integers in 0 .. num_train_timesteps - 1. QPs are integers in 0 .. qp_levels - 1, larger = stronger
compression. Which of the [S]/[I] choices (PAPER.md) each default reflects is said where it is set.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor, nn

from codec.errors import CodecError
from codec.scoped import scoped

ReuseSource = Literal["final", "step"]
REUSE_SOURCES: tuple[str, ...] = ("final", "step")
Anchor = Literal["none", "reconstruction", "reconstruction_x0"]
ANCHORS: tuple[str, ...] = ("none", "reconstruction", "reconstruction_x0")
_STREAM_FILTER_GAIN: contextvars.ContextVar[float] = contextvars.ContextVar("stream_filter_gain", default=0.0)


@contextlib.contextmanager
def stream_filter_gain(gain: float) -> Iterator[None]:
    """Inside the block the anchor filter restores by (1 + gain + the QP gain) (`reconstruction_anchor`; -1 without
    a QP gain: no filter), as `torch.autocast` sets a precision: `FrameCoder` wraps each frame's sampling in it, on
    both sides, with the gain of its stream's plan (`SamplingPlan.filter_level`, `codec.diffvc.STREAM_FILTER_GAINS`).
    Training never sets it."""
    if not -1.0 <= gain <= 4.0:
        raise ValueError(f"a stream's filter gain must be in [-1, 4], got {gain}")
    with scoped(_STREAM_FILTER_GAIN, float(gain)):
        yield


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QPPromptConfig:
    """Shape of the QP prompt: QP -> `num_tokens` cross-attention tokens of width `dim`.

    `dim` must equal the U-Net's `cross_attention_dim`. The sinusoidal code uses periods spaced geometrically from
    2 to 4 * qp_levels, so neighbouring QPs differ in the fine terms and the whole range is monotone in the coarse
    ones.
    """

    qp_levels: int = 64
    code_dim: int = 128
    hidden_dim: int = 256
    num_tokens: int = 4
    dim: int = 128

    def __post_init__(self) -> None:
        if self.code_dim % 2 or self.code_dim < 4:
            raise CodecError(f"QPPromptConfig.code_dim must be even and >= 4, got {self.code_dim}")
        if min(self.qp_levels, self.hidden_dim, self.num_tokens, self.dim) < 1:
            raise CodecError(f"QPPromptConfig fields must be positive: {self}")


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything that defines the diffusion stage; JSON-serialisable with `dataclasses.asdict`.

    U-Net fields follow diffusers' `UNet2DConditionModel` names. Beware diffusers' historical naming:
    `attention_head_dim` is the number of attention *heads* per level (SD 2.1: 5, 10, 20, 20 heads of 64 channels).
    The ControlNet is built from the U-Net (`ControlNetModel.from_unet`); its conditioning embedding is one 3x3
    convolution to `controlnet_embedding_channels` and a zero-initialised 3x3 convolution to the U-Net's first
    width, so the condition stays at latent resolution (each further entry of diffusers'
    `conditioning_embedding_out_channels` would halve it).

    Scheduler: SD 2.1's training schedule (scaled_linear 0.00085 .. 0.012 over 1000 steps, epsilon prediction,
    "leading" spacing with steps_offset 1), sampled with DDIM. One deliberate difference: `set_alpha_to_one` is
    True, so the last DDIM step lands on the x0 prediction itself. SD's own config (False) leaves
    sqrt(1 - a_0) = 2.9 % of the noise estimate in the output, which a codec would show as grain (most visibly in
    the tiny preset's PixelUnshuffle latent, where it is about 7 grey levels).

    Sampling: `steps` is the length of the full DDIM schedule, `strength` s the fraction of it used
    (T_s = round(steps * s) steps starting at the corresponding timestep, as in img2img), `tdir_ratio` is K / T_s.
    `reuse_source` says which x0 of the previous frame TDIR reuses ("final": its final denoised latent; "step":
    its x0 prediction at the same step index), `reuse_warp` whether the caller motion-compensates it. [I] The
    paper gives none of these numbers; the defaults are provisional until docs/RESULTS.md records a measurement.

    `anchor` ([I]; l^_t is the condition's first `latent_channels` channels):
    * "none": the networks predict eps, as SD does.
    * "reconstruction" (the first tiny pack): the networks predict a correction added to the noise that the
      reconstruction implies, eps = eps_from_x0(z_t, l^_t, a_t) + net(z_t, t, condition).
    * "reconstruction_x0" (the tiny preset): the networks predict the clean latent's difference from the
      reconstruction, x0 = l^_t + net(z_t, t, condition), and eps = eps_from_x0(z_t, x0, a_t). With set_alpha_to_one
      the last step's x0 is the output, so the output is l^_t plus the last evaluation's correction at full
      strength; "reconstruction" scales that correction by sqrt((1 - a_t) / a_t), 0.041 at t = 1, so perceptual
      fine-tuning could barely move it (docs/DESIGN-NOTES.md, "A diffusion stage that moves the picture").
    In both anchored forms the U-Net's output convolution starts at zero: an untrained stage returns l^_t exactly
    (diffvc = condlc), and training learns only what the codec lost instead of first learning to reproduce it.

    `anchor_filter` ([I], "reconstruction_x0" on a PixelUnshuffle latent): x0 = l^_t + A(l^_t) + net(...), A a
    learned linear 3x3 convolution of the reconstruction's latent (edges replicated in pixels), zero at random
    init. A linear restoration of the reconstruction (sharpening, deblocking) that every step's x0 carries and
    the networks' correction adds to; `codec.diffvc.latent.pixel_unshuffle_kernel` gives the latent form of a
    pixel-space filter to start it from (docs/DESIGN-NOTES.md, "A linear anchor"). `anchor_gain` ([I], with the
    filter): x0 = l^_t + (1 + g) A(l^_t) + net(...), g a linear map of the QP prompt's mean token, zero at init: how
    strongly to restore, by QP.
    """

    # Latent and condition (channels at latent resolution).
    latent_channels: int
    condition_channels: int
    # U-Net shape (diffusers UNet2DConditionModel).
    sample_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    attention_head_dim: int | tuple[int, ...]
    cross_attention_dim: int
    norm_num_groups: int
    use_linear_projection: bool
    qp_prompt: QPPromptConfig
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    upcast_attention: bool = False
    controlnet_embedding_channels: int = 256
    # Noise schedule (SD 2.1) and sampler.
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = True
    # Sampling defaults.
    steps: int = 50
    strength: float = 0.5
    tdir_ratio: float = 0.5
    reuse_source: ReuseSource = "final"
    reuse_warp: bool = True
    anchor: Anchor = "none"
    anchor_filter: bool = False
    anchor_gain: bool = False

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if not (len(self.down_block_types) == len(self.up_block_types) == levels):
            raise CodecError(f"block_out_channels, down_block_types and up_block_types differ in length: {self}")
        if isinstance(self.attention_head_dim, tuple) and len(self.attention_head_dim) != levels:
            raise CodecError(f"attention_head_dim needs one entry per level ({levels}): {self.attention_head_dim}")
        if self.qp_prompt.dim != self.cross_attention_dim:
            raise CodecError(f"qp_prompt.dim {self.qp_prompt.dim} != cross_attention_dim {self.cross_attention_dim}")
        if self.condition_channels < 1 or self.latent_channels < 1:
            raise CodecError("latent_channels and condition_channels must be positive")
        if self.prediction_type != "epsilon":
            raise CodecError(f"only epsilon prediction is supported (TDIR derives eps), got {self.prediction_type}")
        if self.steps < 1 or not 0.0 <= self.strength <= 1.0 or not 0.0 <= self.tdir_ratio <= 1.0:
            raise CodecError(f"need steps >= 1 and strength, tdir_ratio in [0, 1]: {self}")
        if self.reuse_source not in REUSE_SOURCES:
            raise CodecError(f"reuse_source must be one of {REUSE_SOURCES}, got {self.reuse_source!r}")
        if self.anchor not in ANCHORS:
            raise CodecError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")
        if self.anchor_filter and (self.anchor != "reconstruction_x0" or not self.unshuffle_factor):
            raise CodecError(
                "anchor_filter needs anchor reconstruction_x0 and a PixelUnshuffle latent (3 f^2 channels)"
            )
        if self.anchor_gain and not self.anchor_filter:
            raise CodecError("anchor_gain scales the anchor filter: it needs anchor_filter")

    @property
    def unshuffle_factor(self) -> int:
        return unshuffle_factor(self.latent_channels)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        """Inverse of `dataclasses.asdict` (after a JSON round trip, which turns tuples into lists)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CodecError(f"unknown DiffusionConfig field(s): {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        prompt = values["qp_prompt"]
        values["qp_prompt"] = prompt if isinstance(prompt, QPPromptConfig) else QPPromptConfig(**prompt)
        return cls(**values)

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `UNet2DConditionModel` (SD's fixed choices where this config has no field)."""
        return dict(
            sample_size=self.sample_size,
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            flip_sin_to_cos=True,
            freq_shift=0,
            down_block_types=self.down_block_types,
            mid_block_type=self.mid_block_type,
            up_block_types=self.up_block_types,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            downsample_padding=1,
            mid_block_scale_factor=1,
            act_fn="silu",
            norm_num_groups=self.norm_num_groups,
            norm_eps=1e-5,
            cross_attention_dim=self.cross_attention_dim,
            attention_head_dim=self.attention_head_dim,
            use_linear_projection=self.use_linear_projection,
            upcast_attention=self.upcast_attention,
        )

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of diffusers' `DDIMScheduler`."""
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            clip_sample=False,
            set_alpha_to_one=self.set_alpha_to_one,
            steps_offset=self.steps_offset,
            prediction_type=self.prediction_type,
            timestep_spacing=self.timestep_spacing,
        )


def unshuffle_factor(latent_channels: int) -> int:
    """f when a latent of that many channels is a PixelUnshuffle(f) latent of RGB (3 f^2 channels, f >= 2), else 0."""
    f = math.isqrt(latent_channels // 3)
    return f if f >= 2 and 3 * f * f == latent_channels else 0


def _coarsest_attention_blocks(levels: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down/up block types with (self- and cross-) attention only at the coarsest level."""
    down = ("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",)
    up = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1)
    return down, up


def tiny_diffusion_config(
    latent_channels: int = 192,
    context_channels: int = 64,
    block_out_channels: tuple[int, ...] = (64, 128, 128),
    cross_attention_dim: int = 128,
    num_qp_tokens: int = 4,
    norm_num_groups: int = 32,
    head_channels: int = 32,
    controlnet_embedding_channels: int = 64,
    steps: int = 10,
    strength: float = 0.4,
    anchor: Anchor = "reconstruction_x0",
    anchor_filter: bool = True,
    anchor_gain: bool = True,
) -> DiffusionConfig:
    """A small U-Net + ControlNet for a 2-core CPU (the `tiny` preset; [I] sized here, not from the paper).

    Defaults: a 192-channel PixelUnshuffle(8) latent, widths (64, 128, 128) at 1/8, 1/16, 1/32 of the frame, one
    resnet per level, attention only at the coarsest level and in the mid block (self-attention at 32x32 latents
    made a step 5x slower on this CPU). 5.8 M U-Net, 2.7 M ControlNet and 0.15 M QP-prompt parameters; one
    U-Net + ControlNet evaluation takes about 21-25 ms for a 1x192x16x16 latent (a 128x128 frame) and 36-55 ms
    for 1x192x32x32 on the 2-core CPU of docs/DESIGN.md. Sampling: a 10-step schedule at strength 0.4, i.e.
    T_s = 4 denoising steps per frame. Anchored at the reconstruction and its learned linear filter, predicting
    x0's correction (`DiffusionConfig.anchor`, `anchor_filter` and its QP gain `anchor_gain`; the filter only where
    it applies: anchor reconstruction_x0 on a PixelUnshuffle latent of 3 f^2 channels).
    """
    anchor_filter = anchor_filter and anchor == "reconstruction_x0" and unshuffle_factor(latent_channels) > 0
    anchor_gain = anchor_gain and anchor_filter
    down, up = _coarsest_attention_blocks(len(block_out_channels))
    return DiffusionConfig(
        latent_channels=latent_channels,
        condition_channels=latent_channels + context_channels,
        sample_size=16,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=tuple(max(1, c // head_channels) for c in block_out_channels),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=norm_num_groups,
        use_linear_projection=True,
        qp_prompt=QPPromptConfig(
            code_dim=64, hidden_dim=2 * cross_attention_dim, num_tokens=num_qp_tokens, dim=cross_attention_dim
        ),
        controlnet_embedding_channels=controlnet_embedding_channels,
        steps=steps,
        strength=strength,
        anchor=anchor,
        anchor_filter=anchor_filter,
        anchor_gain=anchor_gain,
    )


SD21_UNET_SHAPE: dict[str, Any] = {  # stabilityai/stable-diffusion-2-1-base, unet/config.json (the shape fields)
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "upcast_attention": False,
}


def full_diffusion_config(context_channels: int = 64, unet: Mapping[str, Any] | None = None) -> DiffusionConfig:
    """The paper's scale: Stable Diffusion 2.1-base's U-Net (865,910,724 parameters) and a ControlNet copy of it
    (364.0 M), plus an 8.7 M-parameter QP prompt of 8 tokens.

    The U-Net fields are those of stabilityai/stable-diffusion-2-1-base `unet/config.json`, so that
    `DiffusionStage.load_sd_unet` can load its weights. unet: another SD-style U-Net's config (a base's
    `unet/config.json`, e.g. a scaled-down base for tests and CPU smoke runs): its shape fields (`SD21_UNET_SHAPE`'s
    keys; missing ones keep SD-2.1's) replace SD-2.1's and the QP prompt's width follows its cross-attention width;
    everything `unet_kwargs` fixes (SiLU, 4 latent channels, ...) is checked when the weights load. Sampling: [I]
    50-step schedule at strength 0.5 (T_s = 25, "tens of steps" [S]).
    """
    shape = dict(SD21_UNET_SHAPE)
    if unet is not None:
        listed = {k: unet[k] for k in SD21_UNET_SHAPE if k in unet}
        shape.update({k: tuple(v) if isinstance(v, list) else v for k, v in listed.items()})
    dim = shape["cross_attention_dim"]
    return DiffusionConfig(
        latent_channels=4,
        condition_channels=4 + context_channels,
        **shape,
        qp_prompt=QPPromptConfig(code_dim=256, hidden_dim=1024, num_tokens=8, dim=dim),
        controlnet_embedding_channels=256,
        steps=50,
        strength=0.5,
    )


# --------------------------------------------------------------------------------------------------------------
# QP prompting
# --------------------------------------------------------------------------------------------------------------


def sinusoidal_qp_code(qp: Tensor, code_dim: int, qp_levels: int) -> Tensor:
    """Sinusoidal code of integer QPs [N] -> float32 [N, code_dim] in [-1, 1] (sin half, then cos half).

    Periods are geometric from 2 to 4 * qp_levels QP units (the transformer position code of Vaswani et al. 2017,
    with periods fitted to the QP range instead of 2 pi .. 10000 * 2 pi).
    """
    half = code_dim // 2
    periods = torch.logspace(math.log10(2.0), math.log10(4.0 * qp_levels), half, device=qp.device)
    angles = qp.float()[:, None] * (2.0 * math.pi / periods)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class QPPrompt(nn.Module):
    """QPP: the QP as the cross-attention prompt of the U-Net and the ControlNet (replaces SD's text encoder).

    qp: integer tensor [N], 0 .. qp_levels - 1 (larger = stronger compression); values outside are clamped
    (checking them would cost a host sync). Returns tokens [N, num_tokens, dim]: sinusoidal code -> MLP ->
    `num_tokens` tokens, plus a learned position embedding per token, then a LayerNorm (CLIP's text encoder, whose
    place this takes, also ends in one).
    """

    def __init__(self, config: QPPromptConfig) -> None:
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(config.code_dim, config.hidden_dim),
            nn.SiLU(),
            nn.Linear(config.hidden_dim, config.num_tokens * config.dim),
        )
        self.position = nn.Parameter(torch.randn(config.num_tokens, config.dim) * 0.02)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, qp: Tensor) -> Tensor:
        cfg = self.config
        qp = qp.reshape(-1).clamp(0, cfg.qp_levels - 1)
        code = sinusoidal_qp_code(qp, cfg.code_dim, cfg.qp_levels).to(self.position.dtype)
        tokens = self.mlp(code).view(qp.shape[0], cfg.num_tokens, cfg.dim) + self.position
        return self.norm(tokens)


# --------------------------------------------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------------------------------------------


def controlnet_from_unet(unet: UNet2DConditionModel, config: DiffusionConfig) -> ControlNetModel:
    """A ControlNet (Zhang et al. 2023) copying `unet`'s encoder weights, conditioned at latent resolution."""
    return ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=(config.controlnet_embedding_channels,),
        conditioning_channels=config.condition_channels,
        load_weights_from_unet=True,
    )


class DiffusionStage(nn.Module):
    """U-Net + ControlNet + QP prompt of DiffVC, with the config of the DDIM scheduler that samples them.

    `predict_noise` is one evaluation of the denoiser; `noise_prediction_loss` is its training objective;
    `TDIRSampler` runs the sampling loop.
    """

    def __init__(
        self, config: DiffusionConfig, unet: UNet2DConditionModel, controlnet: ControlNetModel, qp_prompt: QPPrompt
    ) -> None:
        super().__init__()
        self.config = config
        self.unet = unet
        self.controlnet = controlnet
        self.qp_prompt = qp_prompt
        self.anchor_filter = None
        if config.anchor_filter:
            self.anchor_filter = nn.Conv2d(config.latent_channels, config.latent_channels, 3, padding=0, bias=False)
            nn.init.zeros_(self.anchor_filter.weight)
        self.anchor_gain = None
        if config.anchor_gain:
            self.anchor_gain = nn.Linear(config.cross_attention_dim, 1)
            nn.init.zeros_(self.anchor_gain.weight)
            nn.init.zeros_(self.anchor_gain.bias)
        # float32 whatever dtype the networks run in (not a buffer, which `.to(dtype)` would round); one copy per device
        self._alphas_cumprod = {"cpu": self.make_scheduler().alphas_cumprod.float()}

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> DiffusionStage:
        """Random initialisation (diffusers' defaults; the ControlNet copies the U-Net encoder, zero convs at 0;
        anchored at the reconstruction, the U-Net's output convolution starts at zero too)."""
        unet = UNet2DConditionModel(**config.unet_kwargs())
        if config.anchor != "none":
            nn.init.zeros_(unet.conv_out.weight)
            nn.init.zeros_(unet.conv_out.bias)
        return cls(config, unet, controlnet_from_unet(unet, config), QPPrompt(config.qp_prompt))

    def load_sd_unet(self, base: str | Path) -> DiffusionStage:
        """Load a Stable Diffusion U-Net (SD 2.1-base's for the `full` preset) and re-copy the ControlNet from it.

        base: a diffusers folder or a base name, found as `codec.diffvc.sd_base.find_base` finds it (no download
        when offline). Strict on the settings that change the computation (every field of `unet_kwargs` but the
        inert ones, `sd_base.INERT_UNET_KEYS`), tolerant of the rest. The QP prompt is kept. Returns self.
        """
        from codec.diffvc.sd_base import computation_mismatches, find_base, load_part

        folder = find_base(base)
        unet = load_part(folder, UNet2DConditionModel, "unet")
        mismatched = computation_mismatches(self.config.unet_kwargs(), dict(unet.config))
        if mismatched:
            raise CodecError(f"the U-Net in {folder} does not match this config (ours, theirs): {mismatched}")
        self.unet = unet.to(self.qp_prompt.position.device)
        self.controlnet = controlnet_from_unet(self.unet, self.config).to(self.unet.device)
        return self

    def make_scheduler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler (schedulers are stateful: `set_timesteps`)."""
        return DDIMScheduler(**self.config.scheduler_kwargs())

    def predict_noise(
        self, z_t: Tensor, t: Tensor | int, condition: Tensor, tokens: Tensor, conditioning_scale: float = 1.0
    ) -> Tensor:
        """One denoiser evaluation: the ControlNet's residuals feed the U-Net's skip connections and mid block.

        z_t: noisy latent [N, C, h, w]; t: timestep, scalar or [N] (int); condition: [N, condition_channels, h, w],
        i.e. [l^_t, C1]; tokens: QP prompt [N, num_tokens, cross_attention_dim]. Returns eps [N, C, h, w] in the
        networks' dtype, float32 when anchored (the anchor term is computed in float32). Inputs are cast to the
        networks' dtype (see `prepare_for_inference`). How the networks' output becomes eps: `DiffusionConfig.anchor`.
        """
        net = self._network_eps(z_t, t, condition, tokens, conditioning_scale)
        if self.config.anchor == "none":
            return net
        alpha_bar = self._alphas_on(z_t.device)[torch.as_tensor(t, device=z_t.device)].reshape(-1, 1, 1, 1)
        x0 = condition[:, : self.config.latent_channels].float()
        if self.config.anchor == "reconstruction_x0":
            x0 = self.reconstruction_anchor(x0, tokens) + net.float()
        eps = (z_t.float() - alpha_bar.sqrt() * x0) / (1.0 - alpha_bar).sqrt()
        return eps + net.float() if self.config.anchor == "reconstruction" else eps

    def reconstruction_anchor(self, latent_hat: Tensor, tokens: Tensor | None = None) -> Tensor:
        """l^ + (1 + g + s) A(l^) in float32 (`DiffusionConfig.anchor_filter`, `anchor_gain`; l^ itself without the
        filter, g = 0 without the gain or the QP prompt's tokens [N, num_tokens, dim]; s the stream's gain,
        `stream_filter_gain`, 0 outside one). The latent is padded by one block of pixels replicated at the frame's
        edges, so A sees the picture an image filter would, edges included."""
        if self.anchor_filter is None:
            return latent_hat
        stream_gain = _STREAM_FILTER_GAIN.get()
        f = self.config.unshuffle_factor
        padded = F.pixel_unshuffle(F.pad(F.pixel_shuffle(latent_hat, f), (f, f, f, f), mode="replicate"), f)
        restoration = F.conv2d(padded, self.anchor_filter.weight.float())
        if self.anchor_gain is not None and tokens is not None:
            gain = self.anchor_gain(tokens.to(self.anchor_gain.weight.dtype).mean(1)).float()  # [N, 1]
            restoration = restoration * (1.0 + stream_gain + gain)[:, :, None, None]
        elif stream_gain:
            restoration = restoration * (1.0 + stream_gain)
        return latent_hat + restoration

    def _alphas_on(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._alphas_cumprod:
            self._alphas_cumprod[key] = self._alphas_cumprod["cpu"].to(device)
        return self._alphas_cumprod[key]

    def _network_eps(
        self, z_t: Tensor, t: Tensor | int, condition: Tensor, tokens: Tensor, conditioning_scale: float
    ) -> Tensor:
        """ControlNet + U-Net, in the networks' dtype."""
        dtype = _parameter_dtype(self.unet)
        z_t, condition, tokens = z_t.to(dtype), condition.to(dtype), tokens.to(dtype)
        down_residuals, mid_residual = self.controlnet(
            z_t,
            t,
            encoder_hidden_states=tokens,
            controlnet_cond=condition,
            conditioning_scale=conditioning_scale,
            return_dict=False,
        )
        return self.unet(
            z_t,
            t,
            encoder_hidden_states=tokens,
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
            return_dict=False,
        )[0]

    def noise_prediction_loss(
        self,
        x0: Tensor,
        condition: Tensor,
        qp: Tensor,
        generator: torch.Generator | None = None,
        timestep_range: Literal["sampling", "full"] = "sampling",
        with_identity: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The epsilon-prediction objective (Ho et al. 2020): MSE between the drawn and the predicted noise.

        x0: clean latent [N, C, h, w] (the original frame's latent l_t); condition: [N, condition_channels, h, w];
        qp: int [N]. t is drawn uniformly from 0 .. t_start (the timesteps that sampling at the config's steps and
        strength visits, `timestep_range="sampling"`) or from the whole schedule ("full"). Noise and t come from
        `generator` (on its device) when given. Returns a float32 scalar, or with `with_identity` (loss, the loss of
        a stage that returns l^_t on the same draw).
        """
        t_max = self.config.num_train_timesteps - 1
        if timestep_range == "sampling":
            kept = sampling_timesteps(self.make_scheduler(), self.config.steps, self.config.strength)
            t_max = kept[0] if kept else 0
        draw_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, t_max + 1, (x0.shape[0],), generator=generator, device=draw_device).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=draw_device, dtype=torch.float32).to(x0.device)
        z_t = self.make_scheduler().add_noise(x0.float(), noise, t)
        eps = self.predict_noise(z_t, t, condition, self.qp_prompt(qp))
        loss = F.mse_loss(eps.float(), noise)
        return (loss, self._identity_loss(z_t, t, condition, noise)) if with_identity else loss

    @torch.no_grad()
    def _identity_loss(self, z_t: Tensor, t: Tensor, condition: Tensor, noise: Tensor) -> Tensor:
        """The noise-prediction loss of a stage that returns the reconstruction l^_t (an anchored stage at step 0,
        diffvc = condlc) on the same draw: the baseline a trained stage must beat."""
        alpha_bar = self._alphas_on(z_t.device)[t].reshape(-1, 1, 1, 1)
        latent_hat = condition[:, : self.config.latent_channels].float()
        return F.mse_loss((z_t.float() - alpha_bar.sqrt() * latent_hat) / (1.0 - alpha_bar).sqrt(), noise)


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


# --------------------------------------------------------------------------------------------------------------
# Sampling with TDIR
# --------------------------------------------------------------------------------------------------------------


def sampling_timesteps(scheduler: DDIMScheduler, steps: int, strength: float) -> list[int]:
    """The last T_s = round(steps * strength) timesteps of a `steps`-step DDIM schedule, descending.

    For SD's leading spacing with steps_offset 1, steps=50, strength=0.5: [481, 461, ..., 1]. Python ints, read
    from the scheduler's CPU tensor (no device sync).
    """
    scheduler.set_timesteps(steps)
    kept = num_sampling_steps(steps, strength)
    return [int(t) for t in scheduler.timesteps.tolist()[steps - kept :]] if kept else []


def num_sampling_steps(steps: int, strength: float) -> int:
    """T_s = round(steps * strength), at most `steps`: the denoising steps a frame runs."""
    return min(steps, round(steps * strength))


def num_reuse_steps(sampling_steps: int, tdir_ratio: float) -> int:
    """K = round(tdir_ratio * T_s): how many leading steps TDIR takes from the previous frame."""
    return min(sampling_steps, round(sampling_steps * tdir_ratio))


def noise_seed(seed: int, frame_index: int) -> int:
    """A 63-bit generator seed from (stream seed, frame index); the same on every platform and Python run.
    Packed unsigned: every seed the format allows (0 .. 2**64 - 1), the same bytes as signed below 2**63."""
    digest = hashlib.blake2b(struct.pack("<QQ", seed, frame_index), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_noise(shape: Sequence[int], seed: int, frame_index: int) -> Tensor:
    """Standard normal float32 noise drawn on the CPU from `noise_seed(seed, frame_index)`.

    Drawn on the CPU so that an encoder on a GPU and a decoder on a CPU see the same noise.
    """
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed, frame_index))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def eps_from_x0(z_t: Tensor, x0: Tensor, alpha_bar: float) -> Tensor:
    """The noise estimate implied by a clean-latent estimate: eps = (z_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""
    return (z_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1.0 - alpha_bar)


@dataclass(frozen=True, eq=False)
class TDIRReuse:
    """What a P-frame takes from the previous frame (TDIR): the first `steps` (K) sampling steps derive their noise
    estimate from `x0` instead of running the networks; K is clipped to T_s.

    x0: the previous frame's x0, already motion-compensated if wanted: one tensor [N, C, h, w] (reuse_source=
    "final") or a sequence of at least K tensors indexed by step (reuse_source="step": the previous frame's
    `x0_per_step`, same steps and strength).
    """

    steps: int
    x0: Tensor | Sequence[Tensor]


@dataclass(frozen=True, eq=False)
class SamplingRequest:
    """One frame's denoising, what `TDIRSampler.sample` takes.

    latent_hat: the reconstructed latent l^_t [N, C, h, w]; condition: [N, condition_channels, h, w] ([l^_t, C1]);
    qp: int [N], 0 .. qp_levels - 1. seed, frame_index: select the noise (same values -> same noise, on any device).
    steps, strength: the DDIM schedule length and the fraction of it run (None: the config's); T_s = round(steps *
    strength), and strength 0 returns latent_hat unchanged (float32) with no step run. reuse: TDIR's reuse of the
    previous frame's x0 (None: every step runs the networks).
    Training (the fine-tuning stage runs this same loop): noise, a standard normal [N, C, h, w] instead of the
    seeded draw; grad_steps, through how many of the *last* steps gradients flow when gradients are enabled (0, the
    default: none, as in coding; None: all; earlier steps run without a graph to bound memory).
    """

    latent_hat: Tensor
    condition: Tensor
    qp: Tensor
    seed: int
    frame_index: int
    steps: int | None = None
    strength: float | None = None
    reuse: TDIRReuse | None = None
    noise: Tensor | None = None
    grad_steps: int | None = 0


@dataclass
class SampleResult:
    """Output of `TDIRSampler.sample`.

    latent: denoised latent [N, C, h, w], float32. x0_per_step: the x0 prediction after each of the T_s steps
    (float32, same shape), what a following frame may reuse with reuse_source="step"; its last entry equals
    `latent` when set_alpha_to_one is True. unet_evals: how many denoiser (U-Net + ControlNet) evaluations ran.
    """

    latent: Tensor
    x0_per_step: list[Tensor] = field(default_factory=list)
    unet_evals: int = 0


@dataclass(frozen=True, eq=False)
class _DenoisingSteps:
    """The T_s steps one frame runs, everything the loop branches on fixed before it (Python numbers, no device
    sync): timesteps (descending) and their alpha bars, the x0 each of the first K steps reuses, and from which
    step on gradients flow (`tracked`: whether any does)."""

    timesteps: list[int]
    timesteps_on_device: Tensor
    alpha_bars: list[float]
    reused: list[Tensor]
    tracked: bool
    first_tracked: int
    device: torch.device

    @classmethod
    def plan(cls, request: SamplingRequest, scheduler: DDIMScheduler, timesteps: list[int]) -> _DenoisingSteps:
        device = request.latent_hat.device
        grad_steps = request.grad_steps
        return cls(
            timesteps=timesteps,
            timesteps_on_device=torch.tensor(timesteps, dtype=torch.long, device=device),
            alpha_bars=[float(scheduler.alphas_cumprod[t]) for t in timesteps],
            reused=_reuse_list(request.reuse, len(timesteps), request.latent_hat.shape),
            tracked=torch.is_grad_enabled() and grad_steps != 0,
            first_tracked=0 if grad_steps is None else len(timesteps) - grad_steps,
            device=device,
        )

    def reuses(self, i: int) -> bool:
        """Whether step i takes its x0 from the previous frame (TDIR) instead of the networks."""
        return i < len(self.reused)

    def tracks(self, i: int) -> bool:
        """Whether gradients flow through step i."""
        return self.tracked and i >= self.first_tracked


class TDIRSampler:
    """DDIM sampling (Song et al. 2021, eta = 0) with Temporal Diffusion Information Reuse (DiffVC).

    autocast_dtype: e.g. torch.bfloat16 on CUDA, to run the networks under autocast; the DDIM arithmetic and the
    result stay float32. The loop has no host synchronisation: no `.item()`, no branching on tensor values;
    everything the loop branches on (timesteps, alphas, K) is a Python number computed before it.
    """

    def __init__(self, stage: DiffusionStage, autocast_dtype: torch.dtype | None = None) -> None:
        self.stage = stage
        self.autocast_dtype = autocast_dtype

    def sample(self, request: SamplingRequest) -> SampleResult:
        """Denoise the reconstructed latent `request.latent_hat` (see `SamplingRequest`)."""
        steps, strength = self._schedule(request)
        scheduler = self.stage.make_scheduler()

        # 1. Timesteps: the last T_s of the DDIM schedule; K of them reuse the previous frame's x0.
        timesteps = sampling_timesteps(scheduler, steps, strength)
        if not timesteps:
            return SampleResult(request.latent_hat.float().clone(), [], 0)
        plan = _DenoisingSteps.plan(request, scheduler, timesteps)

        # 2. Start: the reconstruction noised to the first kept timestep with the (seed, frame) noise.
        z, tokens = self._start(request, plan)

        # 3. Denoise: reuse steps derive eps from the reused x0 (no network); the others run ControlNet + U-Net.
        x0_per_step: list[Tensor] = []
        for i, t in enumerate(timesteps):
            with torch.set_grad_enabled(plan.tracks(i)):
                eps = self._noise_estimate(z, i, plan, request.condition, tokens)
                # 4. DDIM step (eta = 0): move z to the previous timestep; keep the x0 prediction for the next frame.
                z, x0 = scheduler.step(eps, t, z, eta=0.0, return_dict=False)
            x0_per_step.append(x0)

        return SampleResult(z.float(), x0_per_step, len(timesteps) - len(plan.reused))

    def _schedule(self, request: SamplingRequest) -> tuple[int, float]:
        """(steps, strength): the request's, or the config's where it leaves them None; checked."""
        cfg = self.stage.config
        steps = cfg.steps if request.steps is None else request.steps
        strength = cfg.strength if request.strength is None else request.strength
        reuse_steps = request.reuse.steps if request.reuse is not None else 0
        if steps < 1 or not 0.0 <= strength <= 1.0 or reuse_steps < 0:
            raise CodecError(
                f"need steps >= 1, strength in [0, 1], reuse_steps >= 0; got {steps}, {strength}, {reuse_steps}"
            )
        return steps, strength

    def _start(self, request: SamplingRequest, plan: _DenoisingSteps) -> tuple[Tensor, Tensor]:
        """(z at the first kept timestep [N, C, h, w] float32, the QP's prompt tokens)."""
        noise = request.noise
        if noise is None:
            noise = seeded_noise(request.latent_hat.shape, request.seed, request.frame_index)
        alpha_bar = plan.alpha_bars[0]
        with torch.set_grad_enabled(plan.tracked):
            z = math.sqrt(alpha_bar) * request.latent_hat.float() + math.sqrt(1.0 - alpha_bar) * noise.to(plan.device)
            with self._autocast(plan.device):
                tokens = self.stage.qp_prompt(request.qp.to(plan.device))
        return z, tokens

    def _noise_estimate(self, z: Tensor, i: int, plan: _DenoisingSteps, condition: Tensor, tokens: Tensor) -> Tensor:
        """Step i's eps (float32): implied by the reused x0 on a TDIR step, else predicted by ControlNet + U-Net."""
        if plan.reuses(i):
            return eps_from_x0(z, plan.reused[i].to(plan.device, torch.float32), plan.alpha_bars[i])
        with self._autocast(plan.device):
            return self.stage.predict_noise(z, plan.timesteps_on_device[i], condition, tokens).float()

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def _reuse_list(reuse: TDIRReuse | None, sampling_steps: int, shape: torch.Size) -> list[Tensor]:
    """The x0 to reuse at each of the first K = min(reuse.steps, T_s) steps: the same tensor each time ("final") or
    one per step ("step")."""
    k = min(reuse.steps, sampling_steps) if reuse is not None else 0
    if k == 0:
        return []
    per_step = [reuse.x0] * k if isinstance(reuse.x0, Tensor) else list(reuse.x0)
    if len(per_step) < k:
        raise CodecError(f"TDIR needs {k} reused x0 predictions, got {len(per_step)}")
    for x0 in per_step[:k]:
        if x0.shape != shape:
            raise CodecError(f"reused x0 has shape {tuple(x0.shape)}, the latent {tuple(shape)}")
    return per_step[:k]


# --------------------------------------------------------------------------------------------------------------
# Inference fast path
# --------------------------------------------------------------------------------------------------------------


def prepare_for_inference(
    stage: DiffusionStage,
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    compile: bool = False,
) -> DiffusionStage:
    """Put the stage in inference form, in place: device and dtype, eval mode, no gradients, SDPA attention
    (`AttnProcessor2_0`, PyTorch's scaled_dot_product_attention: diffusers' default, set explicitly here),
    channels-last convolution weights, and optionally `torch.compile` of the U-Net and ControlNet (in place via
    `nn.Module.compile`, so state-dict keys are unchanged). Returns the stage.

    With dtype float16/bfloat16 the networks hold that dtype and `predict_noise` casts inputs to it; the sampler
    keeps its own arithmetic in float32 either way.
    """
    stage.to(device=device, dtype=dtype).eval().requires_grad_(False)
    for model in (stage.unet, stage.controlnet):
        model.set_attn_processor(AttnProcessor2_0())
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if compile:
            model.compile()
    return stage
