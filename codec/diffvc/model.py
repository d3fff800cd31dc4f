"""The DiffVC model: every part in one module, and the per-frame coding steps shared by encoder and decoder.

Per P-frame (DESIGN.md section 3; Ma & Chen 2025, with DCVC-DC's conditional coding):
  1. motion     flow = estimator(x_t, x^_{t-1}) (encoder only); MV codec -> decoded flow f^
  2. context    C1, C2, C3 = TemporalContext(x^_{t-1}, DPB feature, f^)
  3. latent     l_t = LatentSpace.encode(x_t); y = Enc(l_t, C1..3) ... -> l^_t, DPB feature, y^
  4. diffusion  z = sqrt(a_s) l^_t + sqrt(1 - a_s) eps; T_s DDIM steps guided by [l^_t, C1] and the QP prompt,
                the first K of them (TDIR) reusing the previous frame's x0, warped by f^
  5. vae        x^_t = LatentSpace.decode(z_0): the output and the next frame's reference
I-frames: the intra latent codec, then steps 4-5 with zeros for C1 and no reuse. A skipped P-frame (no strings;
the encoder's `prefers_skip`) runs none of them: the last frame is shown again and the DPB kept.
Every step after the entropy decoding is a function of decoded data only, and the encoder runs it exactly as
the decoder does (`FrameCoder._finish`), so both hold the same DPB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from codec.diffvc import STAGE_OFF_LEVEL, STREAM_FILTER_GAINS
from codec.diffvc.config import DiffVCConfig
from codec.diffvc.context import Contexts, TemporalContext, add_prediction
from codec.diffvc.diffusion import DiffusionStage, SamplingRequest, TDIRReuse, TDIRSampler, stream_filter_gain
from codec.diffvc.dpb import DecodedPictureBuffer
from codec.diffvc.entropy import FactorizedPrior, GaussianConditional, SegmentReader, uniform_bits
from codec.diffvc.hevc_intra import decode_intra, encode_intra
from codec.diffvc.latent import build_latent_space
from codec.diffvc.latent_codec import (
    ContextualLatentCodec,
    HyperpriorCodec,
    IntraLatentCodec,
    LatentCodingOutput,
    estimated_bits,
)
from codec.diffvc.motion import DISFlow, MotionCodec, SpyNetFlow
from codec.diffvc.pack import PackInfo, deserialize, in_memory_info, read_pack, serialize
from codec.diffvc.qp import rd_lambda
from codec.diffvc.timing import StageTimer, timed
from codec.diffvc.warp import resize_flow, warp
from codec.errors import BitstreamError, CodecError
from codec.video import frames_to_tensor, tensor_to_frames


class DiffVCModel(nn.Module):
    """All parts of DiffVC. Build with `DiffVCModel(config)`, `.random(config, seed)` or `.from_pack(folder)`."""

    def __init__(self, config: DiffVCConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_space = build_latent_space(config.latent_space)
        self.flow_estimator = SpyNetFlow(config.spynet) if config.flow == "spynet" else DISFlow(config.dis)
        self.motion = MotionCodec(config.motion)
        self.context = TemporalContext(config.context)
        self.intra = IntraLatentCodec(config.intra)
        self.inter = ContextualLatentCodec(config.inter)
        self.diffusion = DiffusionStage.from_config(config.diffusion)

    def temporal_contexts(self, reference: Tensor, feature: Tensor | None, flow_hat: Tensor) -> Contexts:
        """Contexts C1..C3 of a P-frame from the DPB's reference frame [N, 3, H, W], its feature and the decoded flow;
        for a codec that codes the residual (the tiny preset's block transform) also the prediction: the latent of
        the reference warped with the decoded flow [N, C, H/8, W/8]. Encoder, decoder and training all call this."""
        contexts = self.context(reference, feature, flow_hat)
        if self.inter.config.codes_residual:
            add_prediction(
                contexts, reference, flow_hat, self.latent_space.encode, self.config.context.frame_interpolation
            )
        return contexts

    def coding_parts(self) -> list[nn.Module]:
        return [self.motion, self.intra, self.inter]

    def update_entropy_models(self) -> None:
        """Compute the entropy coders' tables from the current weights (after training or loading)."""
        for part in self.coding_parts():
            part.update()

    def has_coding_tables(self) -> bool:
        """Whether every entropy model holds its coding tables (`update_entropy_models` fills them)."""
        return all(m.has_tables for m in self.modules() if isinstance(m, (FactorizedPrior, GaussianConditional)))

    def enable_gradient_checkpointing(self) -> list[str]:
        """Activation checkpointing (diffusers' `enable_gradient_checkpointing`, non-reentrant) in the parts whose
        activations fill a training step's memory: the U-Net and the ControlNet (per resnet and attention block),
        and a VAE latent space (per encoder and decoder block; the codec and fine-tuning stages backpropagate
        through its decoder). Their blocks are recomputed in the backward pass: the same loss and gradients for
        about a third more compute. The codec's own parts work at 1/8 of the frame with at most 192 channels
        (the motion codec's first layers at 1/2 and 1/4; 3 % of a codec-stage step's FLOPs at 256x256 against the
        VAE decoder's 84 %, `tools.training_flops`) and are left as they are. Returns the parts' names."""
        parts = {"diffusion.unet": self.diffusion.unet, "diffusion.controlnet": self.diffusion.controlnet}
        vae = getattr(self.latent_space, "vae", None)
        if vae is not None:
            parts["latent_space.vae"] = vae
        for part in parts.values():
            part.enable_gradient_checkpointing()
        return list(parts)

    def trainable_state(self) -> dict[str, Tensor]:
        """The state that a pack stores: everything but a frozen pretrained VAE (loaded from its own folder)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("latent_space.vae.")}

    @classmethod
    def random(cls, config: DiffVCConfig, seed: int = 0, name: str = "random") -> tuple[DiffVCModel, PackInfo]:
        """Random init, with weights rounded exactly as a saved pack would hold them (so saving is lossless)."""
        torch.manual_seed(seed)
        model = cls(config)
        model.update_entropy_models()
        config_dict = config.to_dict()
        _, weight_bytes = serialize(config_dict, model.trainable_state())
        model.load_state_dict(deserialize(weight_bytes), strict=False)
        return model.eval(), in_memory_info(name, config_dict, model.trainable_state())

    @classmethod
    def from_pack(cls, folder: Path) -> tuple[DiffVCModel, PackInfo]:
        config_dict, state, info = read_pack(folder)
        try:
            config = DiffVCConfig.from_dict(config_dict)
        except ValueError as e:
            raise CodecError(f"model pack {folder}: {e}") from None
        model = cls(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("latent_space.vae.")]
        if missing or unexpected:
            raise CodecError(
                f"model pack {folder} does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return model.eval(), info


def diffusion_condition(latent_hat: Tensor, c1: Tensor | None, context_channels: int) -> Tensor:
    """The guidance of the diffusion stage, [l^_t, C1]: [N, C + c1, h, w]; zeros stand for C1 on an I-frame."""
    if c1 is None:
        c1 = latent_hat.new_zeros((latent_hat.shape[0], context_channels, *latent_hat.shape[-2:]))
    return torch.cat([latent_hat, c1], dim=1)


def instrument_entropy_timing(model: DiffVCModel) -> None:
    """Count the entropy coding (symbols out, the ANS string, symbols back) as the 'entropy' stage of the active
    timer."""
    for module in model.modules():
        if getattr(module, "_timed", False):
            continue
        if isinstance(module, (FactorizedPrior, GaussianConditional)):
            module.segment = timed("entropy", module.segment)
            module.read = timed("entropy", module.read)
            module._timed = True
        elif isinstance(module, HyperpriorCodec):
            module.entropy_encode = timed("entropy", module.entropy_encode)
            module._timed = True


@dataclass
class PFrameCoding:
    """Steps 1-3 of one P-frame (module docstring), batched over N items.

    strings: [the frame's one entropy-coded string]: a flag (the frame has motion), then the MV codec's z and y if
    it has, then the latent codec's z and y (empty in training form); flow_hat: the decoded flow [N, 2, H, W] in
    pixels; contexts: C1..C3 (and the prediction) built from it; latent: the contextual codec's output;
    motion_likelihoods: the MV codec's {"y", "z"} likelihoods ({} for a zero-motion frame); cost: its J at the
    frame's lambda (`rd_cost`), measured once by the encoder for its decisions (None in training form).
    """

    strings: list[bytes]
    flow_hat: Tensor
    contexts: Contexts
    latent: LatentCodingOutput
    motion_likelihoods: dict[str, Tensor]
    cost: float | None = None

    def estimated_bits(self) -> float:
        """sum(-log2 p) over the MV codec's and the latent codec's symbols, and the string's uniform bits (its motion
        flag and end marker, `uniform_bits`): the rate the likelihoods promise."""
        learned = float(estimated_bits(self.motion_likelihoods)) + float(self.latent.estimated_bits())
        return learned + uniform_bits(self.strings, flags=1 if self.strings else 0)  # one motion flag


def latent_valid_hw(model: DiffVCModel, picture_hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """The picture's area in the latent (the rest of a padded frame's latent is padding), or None."""
    if picture_hw is None:
        return None
    factor = model.latent_space.factor
    return (-(-picture_hw[0] // factor), -(-picture_hw[1] // factor))


def code_p_frame(
    model: DiffVCModel,
    x: Tensor,
    latent: Tensor,
    reference: Tensor,
    feature: Tensor | None,
    prev_y_hat: Tensor | None,
    qp: int | Tensor,
    entropy_code: bool,
    timer: StageTimer | None = None,
    picture_hw: tuple[int, int] | None = None,
) -> PFrameCoding:
    """Motion, contexts and conditional latent coding of a P-frame: THE chain the encoder and training both run.

    x: the frame [N, 3, H, W] in [0, 1]; latent: its latent [N, C, H/8, W/8]; reference, feature, prev_y_hat: from
    the decoded-picture buffer (the previous reconstruction [N, 3, H, W], its DPB feature, the last P-frame's y^).
    entropy_code=True: `compress` (real strings, rounding; what the encoder does, and what `decompress` rebuilds),
    and the frame is also coded with zero motion and no MV symbols, kept when its rate-distortion cost is lower
    (`prefers_zero_motion`); picture_hw: the picture's size when x is padded (padding is not coded). False: the
    codecs' `forward` (training form: noise in training mode, rounding in evaluation mode, where it equals the
    coded result). The flow is estimated without gradient, on the reference as the decoder has it.
    """
    timer = timer or StageTimer()
    valid = latent_valid_hw(model, picture_hw)
    with timer.stage("motion"):
        with torch.no_grad():
            flow = model.flow_estimator(x, reference.detach())
        if entropy_code:
            mv_segments, motion = model.motion.segments(flow, qp, picture_hw)
        else:
            mv_segments, motion = [], model.motion(flow, qp)
        flow_hat = motion.hat
    with timer.stage("latent"):
        contexts = model.temporal_contexts(reference, feature, flow_hat)
        if not entropy_code:
            out = model.inter(latent, contexts, prev_y_hat, qp)
            return PFrameCoding([], flow_hat, contexts, out, motion.likelihoods)
        y_segments, out = model.inter.segments(latent, contexts, prev_y_hat, qp, valid)
        string = model.inter.entropy_encode(mv_segments + y_segments, flags=(True,))
        coded = PFrameCoding([string], flow_hat, contexts, out, motion.likelihoods)
        zero_flow = torch.zeros_like(flow_hat)
        zero_contexts = model.temporal_contexts(reference, feature, zero_flow)
        zero_segments, zero_out = model.inter.segments(latent, zero_contexts, prev_y_hat, qp, valid)
        zero_string = model.inter.entropy_encode(zero_segments, flags=(False,))
        still = PFrameCoding([zero_string], zero_flow, zero_contexts, zero_out, {})
        lam, decode = frame_lambda(qp), model.latent_space.decode
        coded.cost, still.cost = (rd_cost(x, c, lam, picture_hw, decode) for c in (coded, still))
    return still if prefers_zero_motion(coded, still) else coded


def prefers_zero_motion(moving: PFrameCoding, still: PFrameCoding) -> bool:
    """The encoder's mode decision: True when the frame coded with zero motion (no MV symbols) costs no more than
    with its coded motion, in J = bits + lambda(QP) * pixels * MSE, the trade-off the codec was trained on
    (`codec.diffvc.qp.rd_lambda`; their `cost`, `rd_cost`)."""
    return still.cost <= moving.cost


def prefers_skip(
    x: Tensor, reference: Tensor, coded: PFrameCoding, qp: int, picture_hw: tuple[int, int] | None
) -> bool:
    """The encoder's skip decision: True when repeating the reference picture (no strings, no bits) costs less than
    the P-frame as coded (its `cost`), in the same J as `prefers_zero_motion`. A picture that has not changed is
    skipped, as HEVC's skipped blocks are; a coded frame that buys its bits' worth of quality (a refinement of a
    coarse reference) is kept."""
    return distortion_cost(x, reference, frame_lambda(qp), picture_hw) < coded.cost


def frame_lambda(qp: int | Tensor) -> float:
    """The lambda of a frame's mode decisions: the one the codec was trained at for its QP (`rd_lambda`)."""
    return float(rd_lambda(torch.as_tensor(qp).reshape(-1)[:1]).item())


def rd_cost(
    x: Tensor,
    coding: PFrameCoding,
    lam: float,
    picture_hw: tuple[int, int] | None,
    decode: Callable[[Tensor], Tensor],
) -> float:
    """bits + lam * pixels * MSE of one coded P-frame: its real bytes, its decoded picture's error."""
    bits = 8 * sum(len(s) for s in coding.strings)
    return bits + distortion_cost(x, decode(coding.latent.latent_hat), lam, picture_hw)


def distortion_cost(x: Tensor, picture: Tensor, lam: float, picture_hw: tuple[int, int] | None) -> float:
    """lam * pixels * MSE of a picture [N, 3, H, W] against the frame x, both in [0, 1], over the picture's area
    (a padded frame's padding left out): the distortion term of the codec stage's training loss, measured as
    training measures it (an earlier form measured the tiny preset's latent, 2x - 1, whose MSE is 4x the
    pictures': it weighed distortion 4x, the lambda of a QP 18 finer)."""
    error = picture.float() - x.float()
    if picture_hw is not None:
        error = error[..., : picture_hw[0], : picture_hw[1]]
    pixels = error.shape[-2] * error.shape[-1]
    return lam * pixels * error.square().mean().item()


@dataclass(frozen=True)
class SamplingPlan:
    """What the diffusion stage runs for this stream (from the header): all zeros = diffusion off (condlc)."""

    steps: int
    strength: float
    tdir_k: int
    reuse_source: str  # "final" | "step"
    reuse_warp: bool
    seed: int
    codec_reference: bool = False  # the DPB keeps the latent codec's reconstruction; the diffusion output is shown
    hevc_intra: bool = False  # I-frames are HEVC-intra pictures (codec.diffvc.hevc_intra)
    filter_level: int = 0  # the stage's filter gain for this stream (codec.diffvc.STREAM_FILTER_GAINS)

    @property
    def enabled(self) -> bool:
        """Whether the diffusion stage runs: a schedule, and not switched off for the stream (STAGE_OFF_LEVEL)."""
        return self.steps > 0 and self.strength > 0 and self.filter_level != STAGE_OFF_LEVEL


@dataclass
class FrameResult:
    frame: Tensor  # [1, 3, H, W] in [0, 1], padded size
    unet_evals: int
    estimated_bits: float = 0.0  # encoder side: sum(-log2 p) of the coded symbols (0 on the decoder side)
    also_shown: list[FrameResult] = field(default_factory=list)  # the frame under each of `FrameCoder.also_show`


class FrameCoder:
    """Codes one stream's frames in order, holding the decoded-picture buffer. One instance per stream and side.

    also_show (encoder side, with a `codec_reference` plan): further plans that differ only in the diffusion stage's
    filter level. The latent codec's chain, so every string, is the same under each (the references are the codec's
    reconstructions); each keeps its own TDIR state and makes the frame a stream at its level would show, from the
    same coding: an encoder's search over the levels at one coding's cost (`DiffVC.encode_with_plan`)."""

    def __init__(
        self,
        model: DiffVCModel,
        plan: SamplingPlan,
        timer: StageTimer,
        autocast_dtype: torch.dtype | None = None,
        also_show: Sequence[SamplingPlan] = (),
    ) -> None:
        self.model, self.plan, self.timer = model, plan, timer
        self.sampler = TDIRSampler(model.diffusion, autocast_dtype)
        self.dpb = DecodedPictureBuffer()
        self.shown: Tensor | None = None  # the last frame shown: what a skipped P-frame shows again
        for other in also_show:
            if not plan.codec_reference or replace(other, filter_level=plan.filter_level) != plan:
                raise ValueError("also_show needs reference=codec plans that differ only in their filter level")
        self.also_show = [FrameCoder(model, other, timer, autocast_dtype) for other in also_show]

    # --- encoder side ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_frame(
        self,
        x: Tensor,
        frame_type: str,
        qp: int,
        index: int,
        picture_hw: tuple[int, int] | None = None,
        intra_qp: int | None = None,
        allow_skip: bool = True,
    ) -> tuple[list[bytes], FrameResult]:
        """x [1, 3, H, W] in [0, 1] -> (entropy-coded strings, the reconstruction the decoder will make).
        picture_hw: the picture's size when x is padded (the padding is not coded); intra_qp: an HEVC I-frame's QP
        before clamping to 0..63 (`hevc_intra.hevc_qp`; default `qp`); allow_skip: a P-frame may be skipped (no
        strings: the previous frame shown again) where that costs less (`prefers_skip`)."""
        m, t = self.model, self.timer
        if frame_type == "I" and self.plan.hevc_intra:
            picture_hw = picture_hw or tuple(x.shape[-2:])
            with t.stage("latent"):
                picture = tensor_to_frames(x)[0, : picture_hw[0], : picture_hw[1]]
                data, recon = encode_intra(picture, qp if intra_qp is None else intra_qp)
            result = self._finish(self._hevc_intra_coding(recon, x.shape[-2:]), None, None, frame_type, qp, index)
            result.estimated_bits = 8.0 * len(data)  # no likelihoods: an HEVC picture's estimate is its size
            return [data], result
        with t.stage("vae"):
            latent = m.latent_space.encode(x)
        if frame_type == "I":
            with t.stage("latent"):
                strings, coded = m.intra.compress(latent, qp, latent_valid_hw(m, picture_hw))
            result = self._finish(coded, None, None, frame_type, qp, index)
            result.estimated_bits = float(coded.estimated_bits()) + uniform_bits(strings)
            return strings, result
        p = code_p_frame(
            m,
            x,
            latent,
            self.dpb.frame,
            self.dpb.feature,
            self.dpb.y_hat,
            qp,
            entropy_code=True,
            timer=t,
            picture_hw=picture_hw,
        )
        if allow_skip and prefers_skip(x, self.dpb.frame, p, qp, picture_hw):
            return [], self._skip()
        result = self._finish(p.latent, p.contexts, p.flow_hat, frame_type, qp, index)
        result.estimated_bits = p.estimated_bits()
        return p.strings, result

    # --- decoder side ---------------------------------------------------------------------------------

    @torch.no_grad()
    def decode_frame(
        self,
        strings: list[bytes],
        frame_type: str,
        qp: int,
        index: int,
        size_hw: tuple[int, int],
        picture_hw: tuple[int, int] | None = None,
    ) -> FrameResult:
        """Entropy-coded strings of one frame -> the reconstruction; updates the DPB. size_hw: the coded (padded)
        size; picture_hw: the picture's, as the encoder had it. A P-frame is one string whose first flag says
        whether it codes motion."""
        m, t = self.model, self.timer
        latent_hw = (size_hw[0] // m.latent_space.factor, size_hw[1] // m.latent_space.factor)
        valid = latent_valid_hw(m, picture_hw)
        if frame_type == "I" and self.plan.hevc_intra:
            if len(strings) != 1:
                raise BitstreamError(f"frame {index}: an HEVC I-frame needs 1 string, got {len(strings)}")
            with t.stage("latent"):
                recon = decode_intra(strings[0], picture_hw or size_hw)
            return self._finish(self._hevc_intra_coding(recon, size_hw), None, None, frame_type, qp, index)
        if frame_type == "I":
            with t.stage("latent"):
                coded = m.intra.decompress(strings, qp, latent_hw, valid)
            return self._finish(coded, None, None, frame_type, qp, index)
        if self.dpb.empty:
            raise BitstreamError(f"frame {index}: a P-frame with no reference")
        if not strings:
            return self._skip()
        reader = SegmentReader(strings[0])  # the stream's reader checked the count (codec.STRINGS_PER_TYPE)
        with t.stage("motion"):
            if reader.read_flag():
                flow_hat = m.motion.read(reader, size_hw, qp, picture_hw)
            else:
                flow_hat = self.dpb.frame.new_zeros((1, 2, *size_hw))
        with t.stage("latent"):
            contexts = m.temporal_contexts(self.dpb.frame, self.dpb.feature, flow_hat)
            coded = m.inter.read(reader, contexts, self.dpb.y_hat, qp, latent_hw, valid)
            reader.finish()
        return self._finish(coded, contexts, flow_hat, frame_type, qp, index)

    # --- shared: everything after the entropy decoding ------------------------------------------------

    def _hevc_intra_coding(self, picture: np.ndarray, padded_hw) -> LatentCodingOutput:
        """The latent codec's view of an HEVC I-frame: the latent of its picture (uint8 [h, w, 3]), replicate-padded
        to the coded size as the encoder pads its input; no DPB feature, no y^."""
        h, w = picture.shape[:2]
        padded = np.pad(picture, ((0, padded_hw[0] - h), (0, padded_hw[1] - w), (0, 0)), mode="edge")
        x = frames_to_tensor(padded[None], self.model.intra.qp_scales.log_enc.device)
        with self.timer.stage("vae"):
            latent = self.model.latent_space.encode(x)
        return LatentCodingOutput(latent, None, None, {})

    def _finish(
        self,
        coded,
        contexts: Contexts | None,
        flow_hat: Tensor | None,
        frame_type: str,
        qp: int,
        index: int,
        reference: Tensor | None = None,
    ) -> FrameResult:
        """Diffusion (with TDIR) and the latent decoder; pushes the frame into the DPB. Both sides run this.
        reference: the latent codec's reconstruction where it was decoded already (what `also_show`'s coders get from
        theirs: the same coding, so the same picture)."""
        latent, x0, evals = self._generate(coded.latent_hat, contexts, flow_hat, frame_type, qp, index)
        with self.timer.stage("vae"):
            frame = self.model.latent_space.decode(latent).float()
            if reference is None:
                codec_picture = self.plan.codec_reference and self.plan.enabled
                reference = self.model.latent_space.decode(coded.latent_hat).float() if codec_picture else frame
        self.dpb.push(reference, coded.feature, coded.y_hat if frame_type == "P" else None, x0)
        self.shown = frame
        also_shown = [
            other._finish(coded, contexts, flow_hat, frame_type, qp, index, reference) for other in self.also_show
        ]
        return FrameResult(frame, evals, also_shown=also_shown)

    def _skip(self) -> FrameResult:
        """A skipped P-frame (no strings; both sides): the last frame shown again, the DPB unchanged, no U-Net run."""
        return FrameResult(self.shown, 0, also_shown=[other._skip() for other in self.also_show])

    def _generate(
        self,
        latent_hat: Tensor,
        contexts: Contexts | None,
        flow_hat: Tensor | None,
        frame_type: str,
        qp: int,
        index: int,
    ) -> tuple[Tensor, Tensor | list[Tensor] | None, int]:
        plan = self.plan
        if not plan.enabled:
            return latent_hat, None, 0
        with self.timer.stage("diffusion"), stream_filter_gain(STREAM_FILTER_GAINS[plan.filter_level]):
            c1 = contexts.c1 if contexts is not None else None
            condition = diffusion_condition(latent_hat, c1, self.model.config.context.channels[0])
            reuse = self._tdir_reuse(flow_hat, latent_hat.shape[-2:]) if frame_type == "P" else None
            request = SamplingRequest(
                latent_hat,
                condition,
                torch.tensor([qp], device=latent_hat.device),
                plan.seed,
                index,
                steps=plan.steps,
                strength=plan.strength,
                reuse=reuse,
            )
            result = self.sampler.sample(request)
        x0 = result.latent if plan.reuse_source == "final" else result.x0_per_step
        return result.latent, x0, result.unet_evals

    def _tdir_reuse(self, flow_hat: Tensor, latent_hw) -> TDIRReuse | None:
        """TDIR's first K steps on the previous frame's x0 (an I-frame's too), motion-compensated if asked; None
        where the diffusion stage did not run on it."""
        if self.plan.tdir_k == 0 or self.dpb.x0 is None:
            return None
        return TDIRReuse(
            self.plan.tdir_k, reused_x0(self.dpb.x0, flow_hat if self.plan.reuse_warp else None, latent_hw)
        )


def reused_x0(x0: Tensor | list[Tensor], flow_hat: Tensor | None, latent_hw) -> Tensor | list[Tensor]:
    """What TDIR reuses from the previous frame: its x0 (one latent or one per step), motion-compensated by the
    decoded flow [N, 2, H, W] (pixels) resized to the latent's size; unchanged when flow_hat is None."""
    if flow_hat is None:
        return x0
    flow = resize_flow(flow_hat, tuple(latent_hw))
    if isinstance(x0, Tensor):
        return warp(x0, flow)
    return [warp(x, flow) for x in x0]
