"""The four training stages of DiffVC, chained through model packs: flow -> codec -> diffusion -> finetune.

Each stage is an `nn.Module` wrapping the whole `DiffVCModel`: it says which parts train (the rest is frozen and,
for the coding parts, kept in evaluation mode) and its `forward(batch, step)` returns the loss of one batch and
the values to log. `codec.train.loop.run_stage` runs any of them (accelerate, checkpoints, log, packs).

Batches are dicts from the data pipeline (`codec.train.data`), collated to
``{"frames": float32 [N, T, 3, H, W] in [0, 1], "flow": float32 [N, T - 1, 2, H, W] (synthetic clips only)}``,
where ``warp(frames[:, i], flow[:, i]) ~= frames[:, i + 1]`` (pixels; codec/diffvc/warp.py's convention). H and W
must be multiples of 64 (the motion codec's hyperprior works at 1/64).

Stages (docs/DESIGN.md section 3):

* `flow` (`FlowStage`): SpyNet on ground-truth flow, end-point error (Ranjan & Black 2017). Only for configs whose
  encoder-side estimator is SpyNet; the tiny preset uses OpenCV's DIS (nothing to train). DIS's error on the same
  pairs is logged beside it, the measurement DESIGN.md asks for before SpyNet may replace DIS.
* `codec` (`CodecStage`): motion codec, temporal context, intra and contextual latent codecs, trained jointly over
  T-frame sequences exactly as `FrameCoder` chains them (frame 0 intra, then P-frames against the previous
  *reconstructed* frame), rate + lambda(QP) * distortion with DCVC-DC's frame weights (`rd_lambda`, `frame_weight`).
* `diffusion` (`DiffusionTrainingStage`): the frozen codec (evaluation mode: rounding, as the decoder) gives l^_t and
  C1 per frame; the U-Net, ControlNet and QP prompt learn to predict the noise of the *original* latent, conditioned
  on [l^_t, C1] (`DiffusionStage.noise_prediction_loss`, timesteps limited to those sampling visits).
* `finetune` (`FinetuneStage`): few-step fine-tuning through the DDIM sampler with gradients on (`TDIRSampler`),
  DISTS (and/or LPIPS) + a small MSE between the decoded frame and the original.
* `distill` (`DistillStage`): the same sampling, the loss the MSE to an unsharp mask of the codec's reconstruction:
  a cheap teacher (no VGG) that starts the stage where the perceptual metrics reward it, before `finetune`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from codec.diffvc.config import DiffVCConfig
from codec.diffvc.diffusion import (
    SD21_UNET_SHAPE,
    DiffusionStage,
    SamplingRequest,
    TDIRReuse,
    TDIRSampler,
    full_diffusion_config,
    noise_seed,
    num_reuse_steps,
    num_sampling_steps,
    tiny_diffusion_config,
)
from codec.diffvc.entropy import TRAINING_QUANTIZATIONS, FactorizedPrior, GaussianConditional, use_training_quantization
from codec.diffvc.hevc_intra import encode_intra
from codec.diffvc.latent import pixel_unshuffle_kernel, unsharp_mask
from codec.diffvc.latent_codec import prior_output
from codec.diffvc.model import DiffVCModel, code_p_frame, diffusion_condition, reused_x0
from codec.diffvc.motion import DISFlow, endpoint_error
from codec.diffvc.qp import (
    LAMBDA_AT_QP_MAX,
    LAMBDA_AT_QP_MIN,
    QP_MAX,
    QP_MIN,
    QPScales,
    flatten_log_scales,
    rd_lambda,
)
from codec.errors import CodecError
from codec.video import frames_to_tensor, tensor_to_frames

__all__ = [
    "CodecStage",
    "CodedFrame",
    "DiffusionTrainingStage",
    "DistillStage",
    "FinetuneStage",
    "FlowStage",
    "STAGES",
    "StageDefaults",
    "StageOptions",
    "TrainingStage",
    "code_sequence",
    "frame_weight",
    "item_bits",
    "make_stage",
    "rd_lambda",
    "uses_spynet",
    "with_spynet",
]

# --------------------------------------------------------------------------------------------------------------
# Rate-distortion trade-off
# --------------------------------------------------------------------------------------------------------------

RATE_LR_SCALE = 20.0  # learning-rate factor of the rate-control parameters (`TrainingStage.parameter_groups`)
GAIN_LR_SCALE = 100.0  # and of the anchor filter's QP gain
P_FRAME_WEIGHTS = (0.5, 1.2, 0.5, 0.9)  # DCVC-DC's hierarchical quality weights, cycling over the P-frames
I_FRAME_WEIGHT = 1.0


def frame_weight(index: int, weights: Sequence[float] = P_FRAME_WEIGHTS) -> float:
    """Distortion weight of frame `index` of a training sequence: 1.0 for the I-frame (index 0), then DCVC-DC's
    hierarchical weights 0.5, 1.2, 0.5, 0.9 cycling over the P-frames (Li et al., CVPR 2023, section 3.4)."""
    return I_FRAME_WEIGHT if index == 0 else float(weights[(index - 1) % len(weights)])


def item_bits(likelihoods: dict[str, Tensor]) -> Tensor:
    """Estimated bits per batch item, sum over every tensor of sum(-log2 p): float32 [N], differentiable."""
    terms = [(-torch.log2(p.float())).flatten(1).sum(1) for p in likelihoods.values()]
    return torch.stack(terms).sum(0)


def psnr_db(mse: Tensor) -> Tensor:
    """PSNR in dB of MSEs of [0, 1] signals (any shape), capped at 100 dB."""
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


# --------------------------------------------------------------------------------------------------------------
# The conditional latent codec over a sequence (condlc: the diffusion stage off in the loop)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CodedFrame:
    """One frame of `code_sequence`, batched over N sequences.

    latent: the original latent l_t [N, C, h, w] (h = H / 8); latent_hat: its reconstruction l^_t;
    c1: the temporal context C1 [N, c1, h, w] (None for the I-frame); recon: LatentSpace.decode(l^_t) [N, 3, H, W]
    in [0, 1], the frame the next one references; bits / motion_bits: estimated bits per item [N] (bits includes
    the motion); flow_hat: the decoded flow [N, 2, H, W] of a P-frame (pixels), what TDIR warps with.
    """

    frame_type: str
    latent: Tensor
    latent_hat: Tensor
    c1: Tensor | None
    recon: Tensor
    bits: Tensor
    motion_bits: Tensor
    flow_hat: Tensor | None = None

    def condition(self, context_channels: int) -> Tensor:
        """The diffusion stage's condition [l^_t, C1] (zeros for C1 on an I-frame): [N, C + c1, h, w]."""
        return diffusion_condition(self.latent_hat, self.c1, context_channels)


def code_sequence(
    model: DiffVCModel, frames: Tensor, qp: Tensor, hevc_intra: bool = False, intra_qp_offset: int = 0
) -> list[CodedFrame]:
    """Run the condlc chain of `FrameCoder` over batched sequences: frame 0 intra, frames 1.. P-frames (the same
    `code_p_frame` the encoder runs, in its training form).

    hevc_intra: frame 0 is coded as the encoder's `intra=hevc` codes it (x265, no gradient; its real bits count),
    at QP + intra_qp_offset, so the P-frames learn from the references they will meet.

    frames: [N, T, 3, H, W] in [0, 1] (H, W multiples of 64); qp: int [N]. Each part follows its own mode: in
    training mode the entropy models add uniform noise (and gradients flow through the whole chain, references
    included), in evaluation mode they round, so the outputs equal what `compress`/`decompress` give. The flow is
    estimated (no gradient) between the current frame and the previous *reconstructed* one, as the encoder does.
    """
    n, t = frames.shape[:2]
    latents = model.latent_space.encode(frames.flatten(0, 1)).unflatten(0, (n, t))
    coded: list[CodedFrame] = []
    zero = frames.new_zeros(n)
    if hevc_intra:
        coded.append(hevc_intra_frame(model, frames[:, 0], latents[:, 0], qp + intra_qp_offset))  # not clamped
        feature, y_hat = None, None
    else:
        out = model.intra(latents[:, 0], (qp + intra_qp_offset).clamp(QP_MIN, QP_MAX))
        recon = model.latent_space.decode(out.latent_hat)
        coded.append(CodedFrame("I", latents[:, 0], out.latent_hat, None, recon, item_bits(out.likelihoods), zero))
        feature, y_hat = out.feature, None
    for i in range(1, t):
        p = code_p_frame(model, frames[:, i], latents[:, i], coded[-1].recon, feature, y_hat, qp, entropy_code=False)
        out = p.latent
        recon = model.latent_space.decode(out.latent_hat)
        motion_bits = item_bits(p.motion_likelihoods)
        coded.append(
            CodedFrame(
                "P",
                latents[:, i],
                out.latent_hat,
                p.contexts.c1,
                recon,
                item_bits(out.likelihoods) + motion_bits,
                motion_bits,
                p.flow_hat,
            )
        )
        feature, y_hat = out.feature, out.y_hat
    return coded


@torch.no_grad()
def hevc_intra_frame(model: DiffVCModel, frames: Tensor, latents: Tensor, qp: Tensor) -> CodedFrame:
    """Frame 0 of each sequence as an HEVC-intra I-frame (`codec.diffvc.hevc_intra`): [N, 3, H, W] in [0, 1]."""
    recons, bits = [], []
    for x, q in zip(frames, qp.tolist(), strict=True):
        data, recon = encode_intra(tensor_to_frames(x[None])[0], int(q))
        recons.append(recon)
        bits.append(8.0 * len(data))
    recon = frames_to_tensor(np.stack(recons), frames.device)
    latent_hat = model.latent_space.encode(recon)
    return CodedFrame(
        "I",
        latents,
        latent_hat,
        None,
        model.latent_space.decode(latent_hat),
        torch.tensor(bits, device=frames.device),
        frames.new_zeros(frames.shape[0]),
    )


# --------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageOptions:
    """Knobs of the stages (each reads its own). qp: a fixed QP for every batch (None: uniform in 0..63 per item).
    perceptual: the fine-tuning distortion ("dists", "lpips" or "dists+lpips"); mse_weight: its MSE term (RGB in
    [0, 1]); grad_steps: fine-tuning gradients through the last k sampler steps (None: all); unsharp: the amount of
    the distillation stage's unsharp-mask teacher (`unsharp_mask`); gradient_checkpointing: recompute the U-Net's,
    the ControlNet's and a VAE's activations in the backward pass (`DiffVCModel.enable_gradient_checkpointing`)
    instead of keeping them, for the full preset's memory."""

    qp: int | None = None
    lambda_at_qp0: float = LAMBDA_AT_QP_MIN
    lambda_at_qp63: float = LAMBDA_AT_QP_MAX
    p_frame_weights: tuple[float, ...] = P_FRAME_WEIGHTS
    perceptual: str = "dists"
    mse_weight: float = 1.0
    grad_steps: int | None = None
    intra: str = "learned"  # how frame 0 is coded: "learned" (trained too) or "hevc" (codec.diffvc.hevc_intra)
    intra_qp_offset: int = 0  # frame 0's QP offset, as the encoder's intra_qp_offset
    unsharp: float = 0.5
    gradient_checkpointing: bool = False
    quantization: str = "noise"  # what the codecs' decoders see in training (`entropy.TRAINING_QUANTIZATIONS`)

    def __post_init__(self) -> None:
        if self.qp is not None and not QP_MIN <= self.qp <= QP_MAX:
            raise CodecError(f"qp must be in {QP_MIN}..{QP_MAX}, got {self.qp}")
        if not set(self.perceptual.split("+")) <= {"dists", "lpips"}:
            raise CodecError(f"perceptual must be dists, lpips or dists+lpips, got {self.perceptual!r}")
        if self.grad_steps is not None and self.grad_steps < 1:
            raise CodecError(f"grad_steps must be >= 1, got {self.grad_steps}")
        if self.intra not in ("learned", "hevc") or abs(self.intra_qp_offset) > QP_MAX:
            raise CodecError(f"intra must be learned or hevc and |intra_qp_offset| <= {QP_MAX}")
        if not 0.0 < self.unsharp <= 4.0:
            raise CodecError(f"unsharp must be in (0, 4], got {self.unsharp}")
        if self.quantization not in TRAINING_QUANTIZATIONS:
            raise CodecError(f"quantization must be one of {', '.join(TRAINING_QUANTIZATIONS)}")


@dataclass(frozen=True)
class StageDefaults:
    """Command-line defaults of a stage, sized for the tiny preset on a 2-core CPU. `steps` fits a two-hour
    schedule at the s/iteration measured there with one torch thread: codec 3000 x 1.45 s (70 min), diffusion
    2000 x 0.9 s (30 min), finetune 300 x 4 s (20 min); flow (SpyNet, only with --force on tiny) 0.6 s."""

    batch: int
    lr_tiny: float
    lr_full: float
    steps: int

    def lr(self, preset: str) -> float:
        return self.lr_tiny if preset == "tiny" else self.lr_full


class TrainingStage(nn.Module):
    """Base of the stages: the model, which of its parts train, and the loss of one batch.

    Subclasses set `name`, `trainable` (names of `DiffVCModel` parts), `log_columns` (what `forward` returns
    besides "loss", each a 0-dim tensor averaged between log lines) and implement `forward(batch, step)`.
    Frozen parts have requires_grad False and stay in evaluation mode whatever `train()` is called with.
    """

    name: ClassVar[str]
    trainable: ClassVar[tuple[str, ...]]
    log_columns: ClassVar[tuple[str, ...]]
    defaults: ClassVar[StageDefaults]

    def __init__(self, model: DiffVCModel, options: StageOptions | None = None, seed: int = 0, rank: int = 0) -> None:
        super().__init__()
        self.model = model
        self.options = options or StageOptions()
        self.seed, self.rank = seed, rank
        model.requires_grad_(False)
        for part in self.trainable:
            getattr(model, part).requires_grad_(True)
        if self.options.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        use_training_quantization(model, self.options.quantization)
        if not self.trainable_parameters():
            raise CodecError(f"stage {self.name}: the model has no trainable parameters in {self.trainable}")
        self.train()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def parameter_groups(self, lr: float) -> list[dict]:
        """Adam's parameter groups: the rate-control parameters (per-QP quantization scales, factorized priors: a
        few thousand numbers that set the step sizes and the hyper-latents' cost) learn RATE_LR_SCALE times faster
        than the networks (at the networks' rate they moved by about 1.35x in 600 steps, too slow to find the
        rates), the anchor filter's QP gain (129 numbers, a scale around 1) GAIN_LR_SCALE times. Each group keeps
        its `lr_scale`, so a resumed run can set a new base rate."""
        rate_ids = {
            id(p) for m in self.model.modules() if isinstance(m, (QPScales, FactorizedPrior)) for p in m.parameters()
        }
        gain = getattr(self.model.diffusion, "anchor_gain", None)
        gain_ids = {id(p) for p in (gain.parameters() if gain is not None else ())}
        params = self.trainable_parameters()
        groups = [
            {"params": [p for p in params if id(p) not in rate_ids | gain_ids], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in rate_ids], "lr_scale": RATE_LR_SCALE},
            {"params": [p for p in params if id(p) in gain_ids], "lr_scale": GAIN_LR_SCALE},
        ]
        groups = [g for g in groups if g["params"]]
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
        return groups

    def train(self, mode: bool = True) -> TrainingStage:
        super().train(mode)
        for name, part in self.model.named_children():
            if name not in self.trainable:
                part.eval()
        return self

    def generator(self, step: int) -> torch.Generator:
        """A CPU generator for this step's random draws (QPs, noise, timesteps): resuming repeats them exactly."""
        return torch.Generator().manual_seed(noise_seed(self.seed * 65_536 + self.rank, step))

    def code_sequence(self, frames: Tensor, qp: Tensor) -> list[CodedFrame]:
        """`code_sequence` with frame 0 coded as the options say (`intra`, `intra_qp_offset`)."""
        return code_sequence(self.model, frames, qp, self.options.intra == "hevc", self.options.intra_qp_offset)

    def draw_qp(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """int64 [n]: the fixed QP, or one uniform draw in 0..63 per sequence."""
        if self.options.qp is not None:
            return torch.full((n,), self.options.qp, dtype=torch.int64, device=device)
        return torch.randint(QP_MIN, QP_MAX + 1, (n,), generator=generator).to(device)

    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        raise NotImplementedError


def uses_spynet(config) -> bool:
    return config.flow == "spynet"


def with_spynet(model: DiffVCModel) -> DiffVCModel:
    """The same model with a (randomly initialized) SpyNet as its flow estimator: `train flow --force` on a DIS
    preset, to measure SpyNet against DIS. Every other weight is kept."""
    if uses_spynet(model.config):
        return model
    new = DiffVCModel(replace(model.config, flow="spynet"))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("flow_estimator.") for k in missing):
        raise CodecError(f"cannot switch to SpyNet: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return new


def with_flat_quantizer(model: DiffVCModel) -> DiffVCModel:
    """The same model with one quantization step per QP shared by every channel of the intra and contextual latent
    codecs (`qp_per_channel=False`), started by `codec.diffvc.qp.flatten_log_scales`. `train codec
    --flat-quantizer` on a pack trained with per-channel steps; every other weight is kept."""
    parts = {"intra": model.config.intra, "inter": model.config.inter}
    if not any(c.qp_per_channel for c in parts.values()):
        return model
    new = DiffVCModel(replace(model.config, **{k: replace(c, qp_per_channel=False) for k, c in parts.items()}))
    state = dict(model.state_dict())
    for name in parts:
        enc, dec = f"{name}.qp_scales.log_enc", f"{name}.qp_scales.log_dec"
        state[enc], state[dec] = flatten_log_scales(state[enc], state[dec])
    new.load_state_dict(state)
    new.update_entropy_models()
    return new


def with_frame_interpolation(model: DiffVCModel, mode: str) -> DiffVCModel:
    """The same model with its reference frame warped by `mode`'s interpolation
    (`TemporalContextConfig.frame_interpolation`): `train codec --frame-interpolation bicubic` on a pack trained
    with bilinear motion compensation. Every weight is kept."""
    if model.config.context.frame_interpolation == mode:
        return model
    new = DiffVCModel(replace(model.config, context=replace(model.config.context, frame_interpolation=mode)))
    new.load_state_dict(model.state_dict())
    return new


LAPLACE_FROM_GAUSSIAN = 0.55  # Laplace b per Gaussian scale: fewest bits on the training clip (docs/RESULTS.md)


def with_entropy_model(model: DiffVCModel, name: str) -> DiffVCModel:
    """The same model with the intra, contextual and motion codecs' y coded under `name`'s distribution
    (`LatentCodecConfig.entropy_model`, `MotionCodecConfig.entropy_model`): `train codec --entropy-model laplace`
    on a pack trained with Gaussians, or one whose motion codec still codes with one.
    From Gaussian to Laplace the predicted scales are multiplied by `LAPLACE_FROM_GAUSSIAN` (the prior's last
    convolution's scale rows), where a Gaussian pack's symbols cost the fewest bits, so training starts there; the
    coding tables are the new distribution's. Every other weight is kept."""
    parts = {"intra": model.config.intra, "inter": model.config.inter, "motion": model.config.motion}
    if all(c.entropy_model == name for c in parts.values()):
        return model
    new = DiffVCModel(replace(model.config, **{k: replace(c, entropy_model=name) for k, c in parts.items()}))
    buffers = ("scale_table", *GaussianConditional._TABLE_BUFFERS)  # the coder's: the new distribution's own
    tables = {f"{part}.gaussian.{buffer}" for part in parts for buffer in buffers}
    new.load_state_dict({k: v for k, v in model.state_dict().items() if k not in tables}, strict=False)
    factors = {("gaussian", "laplace"): LAPLACE_FROM_GAUSSIAN, ("laplace", "gaussian"): 1 / LAPLACE_FROM_GAUSSIAN}
    with torch.no_grad():
        for part, config in parts.items():
            last, factor = prior_output(getattr(new, part)), factors.get((config.entropy_model, name), 1.0)
            last.weight[last.out_channels // 2 :] *= factor
            last.bias[last.out_channels // 2 :] *= factor
    return new


def preset_diffusion(config: DiffVCConfig) -> DiffVCConfig:
    """The config with its diffusion stage replaced by the preset's current one (same latent and context; for `full`,
    the same U-Net shape: its base's)."""
    context = config.context.channels[0]
    if config.preset == "tiny":
        diffusion = tiny_diffusion_config(context_channels=context, latent_channels=config.latent_space.channels)
    else:
        shape = {k: getattr(config.diffusion, k) for k in SD21_UNET_SHAPE}
        diffusion = full_diffusion_config(context_channels=context, unet=shape)
    return replace(config, diffusion=diffusion)


def with_fresh_diffusion(model: DiffVCModel, unsharp_init: float = 0.0) -> DiffVCModel:
    """The same codec with a fresh diffusion stage at the preset's current configuration: `train diffusion|finetune
    --fresh-diffusion`, for a pack whose diffusion stage was trained with another parametrization. Every codec weight
    is kept. `tiny`: randomly initialised and anchored (it starts as the identity, diffvc = condlc); `unsharp_init`
    > 0 starts the anchor filter as an unsharp mask of that amount (`--unsharp-init`): then diffvc = that mask of
    condlc. `full`: the U-Net of the Stable Diffusion base the pack names (found as `find_base` finds it) and the
    ControlNet copied from it, as `train --sd-base` starts one; the QP prompt random."""
    base = model.config.latent_space.base_model
    if model.config.preset == "full" and base is None:
        raise CodecError("--fresh-diffusion on a full pack needs the Stable Diffusion base it names; it names none")
    new = DiffVCModel(preset_diffusion(model.config))
    if model.config.preset == "full":
        new.diffusion.load_sd_unet(base)
    if unsharp_init:
        stage = new.diffusion
        if stage.anchor_filter is None:
            raise CodecError("--unsharp-init needs a diffusion stage with an anchor filter (the tiny preset's)")
        kernel = pixel_unshuffle_kernel(lambda x: unsharp_mask(x, unsharp_init) - x, stage.config.unshuffle_factor)
        with torch.no_grad():
            stage.anchor_filter.weight.copy_(kernel)
    codec_state = {k: v for k, v in model.state_dict().items() if not k.startswith("diffusion.")}
    return _keeping(new, codec_state, new_prefix="diffusion.", what="the codec")


def with_anchor_gain(model: DiffVCModel) -> DiffVCModel:
    """The same model with a zero-initialised QP gain on its anchor filter (`DiffusionConfig.anchor_gain`): a stage
    trained without one keeps every weight and its output, and can learn how strongly to restore at each QP
    (`train finetune --anchor-gain`)."""
    diffusion = model.config.diffusion
    if not diffusion.anchor_filter:
        raise CodecError("--anchor-gain scales the anchor filter: the pack's diffusion stage has none")
    if diffusion.anchor_gain:
        return model
    new = DiffVCModel(replace(model.config, diffusion=replace(diffusion, anchor_gain=True)))
    return _keeping(new, model.state_dict(), new_prefix="diffusion.anchor_gain.", what="the stage")


def _prompt_means(stage: DiffusionStage) -> Tensor:
    """The mean token of the QP prompt at every QP level [qp_levels, dim]: what the anchor gain reads."""
    return stage.qp_prompt(torch.arange(stage.config.qp_prompt.qp_levels)).mean(1)


def anchor_gains(model: DiffVCModel) -> np.ndarray:
    """g(QP) of the stage's anchor filter at every QP level, float64 [qp_levels] (zeros for a stage without one)."""
    stage = model.diffusion
    if stage.anchor_gain is None:
        return np.zeros(stage.config.qp_prompt.qp_levels)
    with torch.no_grad():
        return stage.anchor_gain(_prompt_means(stage))[:, 0].double().numpy()


def calibrate_anchor_gain(model: DiffVCModel, gains: Mapping[int, float]) -> DiffVCModel:
    """The model with its anchor filter's QP gain set so that g(QP) follows `gains` (QP -> g, e.g. the trend of the
    best fixed gain that `tools.anchor_gain_scan` measures), linearly interpolated between the given QPs and held
    beyond them. The gain is linear in the mean of the QP prompt's tokens, so this is a least-squares fit (minimum
    norm) of that layer over every QP; adds the gain where the stage has none (`with_anchor_gain`). Every other
    weight is kept."""
    if not gains:
        raise CodecError("calibrating the anchor gain needs at least one QP's gain")
    model = with_anchor_gain(model)
    stage = model.diffusion
    levels = stage.config.qp_prompt.qp_levels
    qps = sorted(gains)
    targets = np.interp(np.arange(levels), qps, [float(gains[q]) for q in qps])
    with torch.no_grad():
        tokens = _prompt_means(stage).double()
        design = torch.cat((tokens, torch.ones(levels, 1, dtype=torch.float64)), dim=1)
        solution = torch.linalg.lstsq(design, torch.from_numpy(targets)[:, None], driver="gelsd").solution[:, 0]
        stage.anchor_gain.weight.copy_(solution[:-1][None, :].float())
        stage.anchor_gain.bias.copy_(solution[-1:].float())
    return model


def _keeping(new: DiffVCModel, state: dict[str, Tensor], new_prefix: str, what: str) -> DiffVCModel:
    """`new` with `state` loaded into it: only parameters under `new_prefix` may be left at their initial values,
    and `state` may hold nothing `new` lacks."""
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(new_prefix) for k in missing):
        raise CodecError(f"cannot keep {what}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return new


class FlowStage(TrainingStage):
    """SpyNet pretraining on ground-truth flow: mean end-point error over every consecutive pair of the clips,
    over the pixels the batch's "flow_valid" [N, T - 1, 1, H, W] marks (all pixels when it has none).

    Needs batches with "flow" (synthetic clips). Logs `epe_dis`, DIS's error on the same pairs (no gradient).
    """

    name = "flow"
    trainable = ("flow_estimator",)
    log_columns = ("epe_dis",)
    defaults = StageDefaults(batch=8, lr_tiny=5e-4, lr_full=1e-4, steps=3000)

    def __init__(self, model: DiffVCModel, options: StageOptions | None = None, seed: int = 0, rank: int = 0) -> None:
        if not uses_spynet(model.config):
            raise CodecError("the flow stage trains SpyNet; this model uses DIS (switch with `with_spynet`)")
        super().__init__(model, options, seed, rank)
        self.dis = DISFlow(model.config.dis)

    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        if "flow" not in batch:
            raise CodecError("the flow stage needs clips with ground-truth flow (synthetic motion clips)")
        frames, target = batch["frames"], batch["flow"]
        ref, cur = frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1)
        target = target.flatten(0, 1)
        valid = batch.get("flow_valid")
        mask = None if valid is None else valid.flatten(0, 1).to(target.dtype)
        loss = endpoint_error(self.model.flow_estimator(cur, ref), target, mask)
        with torch.no_grad():
            epe_dis = endpoint_error(self.dis(cur, ref), target, mask)
        return {"loss": loss, "epe_dis": epe_dis}


class CodecStage(TrainingStage):
    """Joint training of the motion codec, temporal context, intra and contextual latent codecs.

    Loss per sequence (DCVC-DC, Li et al. 2023): sum_t (R_t / (H W) + w_t * lambda(QP) * MSE_t) / sum_t w_t, with
    R_t the estimated bits of frame t (latent + motion), MSE_t that of the reconstruction LatentSpace.decode(l^_t)
    (the condlc output, RGB in [0, 1]), w_t from `frame_weight`, one QP per sequence drawn uniformly from 0..63
    (so every batch covers the whole rate range). The weights scale the distortion, as DCVC-DC's hierarchical
    quality does, so they set each position's trade-off rather than its share of the gradient; normalising by
    sum_t w_t keeps the loss comparable across T. Averaged over the batch.
    """

    name = "codec"
    trainable = ("motion", "context", "intra", "inter")
    log_columns = ("bpp", "bpp_motion", "psnr", "psnr_i", "psnr_p", "qp")
    defaults = StageDefaults(batch=8, lr_tiny=5e-4, lr_full=1e-4, steps=3000)

    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        frames = batch["frames"]
        n, t, _, h, w = frames.shape
        opts = self.options
        qp = self.draw_qp(n, self.generator(step), frames.device)
        lam = rd_lambda(qp, opts.lambda_at_qp0, opts.lambda_at_qp63)
        coded = self.code_sequence(frames, qp)
        pixels = h * w
        total = frames.new_zeros(n)
        mses, bits, motion_bits = [], [], []
        for i, f in enumerate(coded):
            mse = (f.recon.float() - frames[:, i]).square().flatten(1).mean(1)
            total = total + f.bits / pixels + frame_weight(i, opts.p_frame_weights) * lam * mse
            mses.append(mse.detach())
            bits.append(f.bits.detach())
            motion_bits.append(f.motion_bits.detach())
        weight_sum = sum(frame_weight(i, opts.p_frame_weights) for i in range(t))
        psnr = psnr_db(torch.stack(mses, 1))  # [N, T]
        return {
            "loss": (total / weight_sum).mean(),
            "bpp": torch.stack(bits).mean() / pixels,
            "bpp_motion": torch.stack(motion_bits[1:]).mean() / pixels if t > 1 else frames.new_zeros(()),
            "psnr": psnr.mean(),
            "psnr_i": psnr[:, 0].mean(),
            "psnr_p": psnr[:, 1:].mean() if t > 1 else psnr[:, 0].mean(),
            "qp": qp.float().mean(),
        }


class _OnFrozenCodec(TrainingStage):
    """Diffusion stages: the frozen codec (evaluation mode, no gradient) gives each frame's l^_t and C1.

    The references are the codec's own reconstructions, as the `diffvc` decoder's default `reference=codec` has
    them (the diffusion output is displayed, not referenced): training sees exactly the contexts coding makes.
    """

    trainable = ("diffusion",)

    def _code(self, frames: Tensor, qp: Tensor) -> list[CodedFrame]:
        with torch.no_grad():
            return self.code_sequence(frames, qp)

    def _coded(self, frames: Tensor, qp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(x0 latents, conditions, QPs, originals, codec reconstructions), frames flattened to N * T items."""
        coded = self._code(frames, qp)
        c1 = self.model.config.context.channels[0]
        x0 = torch.stack([f.latent for f in coded], 1).flatten(0, 1)
        condition = torch.stack([f.condition(c1) for f in coded], 1).flatten(0, 1)
        recon = torch.stack([f.recon for f in coded], 1).flatten(0, 1)
        qps = qp[:, None].expand(-1, frames.shape[1]).reshape(-1)
        return x0, condition, qps, frames.flatten(0, 1), recon


class DiffusionTrainingStage(_OnFrozenCodec):
    """U-Net + ControlNet + QP prompt on the noise-prediction loss, x0 = the original latent l_t, condition
    [l^_t, C1] from the frozen codec, timesteps drawn from those that sampling at the config's steps and strength
    visits. All N * T frames of the batch are one denoiser batch; one QP per sequence, uniform in 0..63."""

    name = "diffusion"
    log_columns = ("loss_codec", "psnr_codec", "qp")
    defaults = StageDefaults(batch=4, lr_tiny=2e-4, lr_full=1e-5, steps=2000)

    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        frames = batch["frames"]
        generator = self.generator(step)
        qp = self.draw_qp(frames.shape[0], generator, frames.device)
        x0, condition, qps, originals, recon = self._coded(frames, qp)
        loss, baseline = self.model.diffusion.noise_prediction_loss(
            x0, condition, qps, generator=generator, timestep_range="sampling", with_identity=True
        )
        mse = (recon.float() - originals).square().flatten(1).mean(1)
        return {
            "loss": loss,
            "loss_codec": baseline,
            "psnr_codec": psnr_db(mse).mean(),
            "qp": qp.float().mean(),
        }


class FinetuneStage(_OnFrozenCodec):
    """Fine-tuning of the diffusion stage exactly as the decoder samples: over each T-frame sequence in order,
    the config's steps and strength, TDIR on (in every P-frame, as `FrameCoder` reuses: the previous frame's final
    x0, the I-frame's too, warped by the decoded flow, at the config's `tdir_ratio`), loss = perceptual(decoded,
    original) + mse_weight * MSE, averaged over every frame.

    The perceptual distance is DISTS (Ding et al. 2020) and/or LPIPS-VGG (Zhang et al. 2018) from
    `codec.metrics.perceptual_model` (frozen, not part of the model). `perceptual_codec` logs the same distance of
    the codec's own reconstruction on the same frames (condlc), the baseline the stage must beat. Noise is drawn
    per step (not the stream's seeded noise), the reused x0 is detached (gradients stay within a frame).
    """

    name = "finetune"
    log_columns = ("perceptual", "perceptual_codec", "psnr", "psnr_codec", "qp")
    defaults = StageDefaults(batch=2, lr_tiny=1e-4, lr_full=1e-5, steps=3000)

    def __init__(self, model: DiffVCModel, options: StageOptions | None = None, seed: int = 0, rank: int = 0) -> None:
        super().__init__(model, options, seed, rank)
        self._perceptual: dict[str, nn.Module] = {}  # a plain dict: not registered, not saved, not trained

    def perceptual_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean over the batch of the sum of the chosen perceptual distances; x, y [N, 3, H, W] in [0, 1]."""
        from codec.metrics import perceptual_model

        total = x.new_zeros(())
        for name in self.options.perceptual.split("+"):
            if name not in self._perceptual:
                self._perceptual[name] = perceptual_model(name, str(x.device)).requires_grad_(False)
            total = total + self._perceptual[name](x.float(), y.float()).mean()
        return total

    def sample_sequence(
        self, coded: list[CodedFrame], qp: Tensor, noise: Callable[[int, torch.Size], Tensor]
    ) -> list[Tensor]:
        """The diffusion stage's output latent of each coded frame, sampled in order with TDIR, as `FrameCoder`
        samples; noise(i, shape): frame i's starting noise (the decoder's is `seeded_noise(shape, seed, i)`)."""
        cfg = self.model.diffusion.config
        sampler = TDIRSampler(self.model.diffusion)
        reuse_steps = num_reuse_steps(num_sampling_steps(cfg.steps, cfg.strength), cfg.tdir_ratio)
        c1 = self.model.config.context.channels[0]
        latents: list[Tensor] = []
        for i, f in enumerate(coded):
            reuse = None
            if f.frame_type == "P" and i >= 1:
                flow = f.flow_hat if cfg.reuse_warp else None
                reuse = TDIRReuse(reuse_steps, reused_x0(latents[-1].detach(), flow, f.latent_hat.shape[-2:]))
            request = SamplingRequest(
                f.latent_hat,
                f.condition(c1),
                qp,
                seed=0,
                frame_index=0,
                reuse=reuse,
                noise=noise(i, f.latent_hat.shape).to(f.latent_hat.device),
                grad_steps=self.options.grad_steps,
            )
            latents.append(sampler.sample(request).latent)
        return latents

    def sampled(self, batch: dict[str, Tensor], step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(QPs [N], decoded frames, originals, codec reconstructions), frames [N * T, 3, H, W] frame-major: the
        batch coded by the frozen codec and sampled with gradients (`sample_sequence`), noise drawn per step."""
        frames = batch["frames"]
        generator = self.generator(step)
        qp = self.draw_qp(frames.shape[0], generator, frames.device)
        coded = self._code(frames, qp)
        latents = self.sample_sequence(
            coded, qp, lambda i, shape: torch.randn(shape, generator=generator, dtype=torch.float32)
        )
        decoded = self.model.latent_space.decode(torch.cat(latents)).float()
        originals = frames.transpose(0, 1).flatten(0, 1)  # frame-major, as torch.cat(latents)
        recon = torch.cat([f.recon for f in coded]).float()
        return qp, decoded, originals, recon

    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        qp, decoded, originals, recon = self.sampled(batch, step)
        mse = (decoded - originals).square().flatten(1).mean(1)
        perceptual = self.perceptual_loss(decoded, originals)
        loss = perceptual + self.options.mse_weight * mse.mean()
        with torch.no_grad():
            perceptual_codec = self.perceptual_loss(recon, originals)
        return {
            "loss": loss,
            "perceptual": perceptual.detach(),
            "perceptual_codec": perceptual_codec,
            **_fidelity_logs(qp, decoded, originals, recon),
        }


class DistillStage(FinetuneStage):
    """The fine-tuning stage's sampling with a cheap teacher: loss = MSE between the decoded frame and an unsharp
    mask of the codec's reconstruction (`unsharp_mask`, amount `StageOptions.unsharp`), RGB in [0, 1].

    Why (docs/RESULTS.md, "A diffusion stage that earns its place"): a fixed unsharp mask of amount 0.5 on condlc's
    frames measures DISTS BD-rate -19.7 % and LPIPS -4.5 % on Big Buck Bunny, but the perceptual fine-tuning, at
    the learning rates where it does not drift, reached a tenth of that in 500 steps of 10 s (VGG16 forward and
    backward). This stage teaches the correction with no VGG at a higher rate, so `finetune` starts from it.
    `distill_codec` is the distance of the reconstruction itself to the teacher (the untrained stage's loss).
    """

    name = "distill"
    log_columns = ("distill", "distill_codec", "psnr", "psnr_codec", "qp")
    defaults = StageDefaults(batch=4, lr_tiny=2e-4, lr_full=1e-5, steps=2000)

    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        qp, decoded, originals, recon = self.sampled(batch, step)
        target = unsharp_mask(recon, self.options.unsharp).clamp(0.0, 1.0)
        loss = (decoded - target).square().mean()
        return {
            "loss": loss,
            "distill": loss.detach(),
            "distill_codec": (recon - target).square().mean(),
            **_fidelity_logs(qp, decoded, originals, recon),
        }


def _fidelity_logs(qp: Tensor, decoded: Tensor, originals: Tensor, recon: Tensor) -> dict[str, Tensor]:
    """What the sampling stages log beside their loss: PSNR of the stage's frames and of the codec's, and the QP."""

    def psnr(x: Tensor) -> Tensor:
        return psnr_db((x.detach() - originals).square().flatten(1).mean(1)).mean()

    return {"psnr": psnr(decoded), "psnr_codec": psnr(recon), "qp": qp.float().mean()}


STAGES: dict[str, type[TrainingStage]] = {
    cls.name: cls for cls in (FlowStage, CodecStage, DiffusionTrainingStage, FinetuneStage, DistillStage)
}


def make_stage(
    name: str, model: DiffVCModel, options: StageOptions | None = None, seed: int = 0, rank: int = 0
) -> TrainingStage:
    if name not in STAGES:
        raise CodecError(f"unknown training stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name](model, options, seed, rank)
