"""Learned latent codecs of DiffVC: the hyperprior plumbing shared by every codec, the intra latent codec and the
contextual (conditional) latent codec of P-frames.

Sources:
* Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018) and Minnen et al. 2018 for
  the mean-scale hyperprior: y -> z -> (means, scales) of a Gaussian conditional; a factorized prior for z.
* Li et al., "Neural Video Compression with Diverse Contexts" (DCVC-DC, CVPR 2023) for conditional coding: the
  latent is encoded and decoded *with* multi-scale temporal contexts C1, C2, C3 (concatenated at their scales,
  not subtracted as a residual), a temporal prior from the contexts joins the hyperprior, and one model covers
  every rate through learned per-QP quantization scales (`codec.diffvc.qp.QPScales`).
* Ma & Chen, DiffVC (arXiv 2501.13528): the codec codes the *latent* of the frame (Stable Diffusion's VAE latent,
  or PixelUnshuffle(8) for the tiny preset, docs/DESIGN.md section 3) instead of pixels; the decoded latent goes on
  to the diffusion stage, and the decoder also returns a feature kept in the decoded-picture buffer (DPB).

**Shared plumbing (`HyperpriorCodec`).** Every codec here (this module's two and `motion.MotionCodec`) runs the
same pipeline, written once:

1. ``y = analysis(x, cond) * q_enc`` (q_enc: the QP's encoder scale, per channel of y);
2. ``z = h_a(y)``; ``z_hat`` from the factorized prior (noise in training, rounding otherwise);
3. ``(means, scales) = entropy_params(z_hat, cond, q_enc)``: the hyper-decoder and the codec's own prior head;
4. ``y_hat`` from the Gaussian conditional (noise in training; round(y - mean_q) + mean_q otherwise);
5. ``out = synthesis(y_hat * q_dec, cond)``.

`compress` writes one string: z's symbols, then y's (`entropy.encode_segments`); `segments` gives them to a caller
that codes more than one codec's symbols in one string (a P-frame: its motion, then its latent), `read` takes them
back from a shared `SegmentReader`.

`forward` (training and evaluation) and `compress` run steps 1-5 through `HyperpriorCodec._run`; `decompress`
decodes z_hat, runs step 3 with *the same function*, decodes y_hat and runs step 5 with *the same function*. In
float32 with the same batch shapes and layouts, so ``decompress(compress(x))`` equals compress's own reconstruction
bit for bit (docs/DESIGN.md section 4), and so does the evaluation-mode `forward`.

Shapes (H, W: the frame size, a multiple of 64; h = H / 8, w = W / 8: the latent's):
* latent l_t [N, C, h, w] (C = `latent_channels`: 192 tiny, 4 full); contexts C1 [N, c1, h, w], C2 [N, c2, h/2,
  w/2], C3 [N, c3, h/4, w/4]; y [N, M, h/4, w/4] (1/32 of the frame); z [N, Z, h/8, w/8] (1/64 of the frame);
  the DPB feature [N, F, h, w].
* Values of y, z in units of the quantization step (1). QP: integers 0..63, larger = fewer bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from codec.diffvc.entropy import (
    ENTROPY_MODELS,
    FactorizedPrior,
    Region,
    Segment,
    SegmentReader,
    bits_from_likelihoods,
    encode_segments,
)
from codec.diffvc.layers import (
    ResidualBlock,
    SubpelUpsample,
    act,
    config_from_dict,
    conv,
    init_variance_preserving,
    last_convolution,
    zero_last_convolution,
)
from codec.diffvc.qp import QPScales, QPScalesConfig, qp_tensor
from codec.errors import BitstreamError

if TYPE_CHECKING:
    from codec.diffvc.context import Contexts

__all__ = [
    "CodingOutput",
    "ContextualLatentCodec",
    "ContextualLatentCodecConfig",
    "Hyperprior",
    "HyperpriorCodec",
    "IntraLatentCodec",
    "IntraLatentCodecConfig",
    "LatentAnalysis",
    "LatentCodingOutput",
    "LatentSynthesis",
    "estimated_bits",
    "qp_batch",
    "real_bits",
    "start_prior_flat",
]


# --------------------------------------------------------------------------------------------------------------
# Outputs and rates
# --------------------------------------------------------------------------------------------------------------


def estimated_bits(likelihoods: Mapping[str, Tensor]) -> Tensor:
    """Estimated size in bits, sum over every tensor of sum(-log2 p): a 0-dim tensor, differentiable.

    The training rate, and the rate shown *labelled as an estimate*; real rates come from `real_bits`.
    """
    terms = [bits_from_likelihoods(p) for p in likelihoods.values()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def real_bits(strings: Sequence[bytes]) -> int:
    """Size in bits of entropy-coded strings: 8 * total bytes (without the container's framing)."""
    return 8 * sum(len(s) for s in strings)


@dataclass
class CodingOutput:
    """What a codec's `forward` gives for training: the reconstruction and the likelihoods of y and z.

    hat: the reconstruction (e.g. the decoded flow [N, 2, H, W] in pixels).
    likelihoods: {"y": [N, M, ...], "z": [N, Z, ...]}, in (0, 1].
    """

    hat: Tensor
    likelihoods: dict[str, Tensor]

    def estimated_bits(self) -> Tensor:
        """sum(-log2 p) over y and z: the estimated rate in bits (labelled as such), differentiable."""
        return estimated_bits(self.likelihoods)


@dataclass
class LatentCodingOutput:
    """Result of a latent codec (intra or contextual), identical on the encoder and the decoder side.

    latent_hat: reconstructed latent l^_t [N, C, h, w], input of the diffusion stage.
    feature: [N, F, h, w], kept in the decoded-picture buffer for the next frame's temporal context.
    y_hat: the dequantized latent y^ * q_dec [N, M, h/4, w/4]; the next P-frame's temporal prior takes it.
    likelihoods: {"y": ..., "z": ...} (y's and z's shapes), in (0, 1].
    """

    latent_hat: Tensor
    feature: Tensor
    y_hat: Tensor
    likelihoods: dict[str, Tensor]

    def estimated_bits(self) -> Tensor:
        """sum(-log2 p) over y and z: the estimated rate in bits (labelled as such), differentiable."""
        return estimated_bits(self.likelihoods)


# --------------------------------------------------------------------------------------------------------------
# The hyperprior pipeline, written once
# --------------------------------------------------------------------------------------------------------------


class Hyperprior(nn.Module):
    """Hyper-analysis h_a, the factorized prior of z and the hyper-synthesis h_s (Ballé et al. 2018).

    y [N, M, hy, wy] -> z [N, Z, hy / 2**d, wy / 2**d] (d = `downsamples` stride-2 convolutions)
    -> hyper features [N, P, hy, wy] (P = `hidden`), from which a prior head predicts means and scales.
    """

    def __init__(self, y_channels: int, z_channels: int, hidden: int, downsamples: int) -> None:
        super().__init__()
        if downsamples < 1:
            raise ValueError("the hyperprior needs at least one stride-2 stage")
        self.downsamples = downsamples
        enc: list[nn.Module] = [conv(y_channels, hidden), act()]
        for i in range(downsamples):
            last = i == downsamples - 1
            enc += [conv(hidden, z_channels if last else hidden, stride=2)] + ([] if last else [act()])
        dec: list[nn.Module] = []
        for i in range(downsamples):
            dec += [SubpelUpsample(z_channels if i == 0 else hidden, hidden), act()]
        dec += [conv(hidden, hidden)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.prior = FactorizedPrior(z_channels)

    def z_shape(self, y_shape: Sequence[int]) -> tuple[int, int, int, int]:
        n, _, h, w = y_shape
        step = 2**self.downsamples
        return (n, self.prior.channels, h // step, w // step)


@dataclass
class _Coded:
    """Every intermediate of one pass of `HyperpriorCodec._run` (quantities in the scaled domain of y)."""

    y: Tensor
    z: Tensor
    y_hat: Tensor  # quantized (or noisy) y, before the decoder scale
    y_deq: Tensor  # y_hat * q_dec, the input of the synthesis
    out: Any  # what the synthesis returns
    likelihoods: dict[str, Tensor]
    means: Tensor
    scales: Tensor


def qp_batch(qp: int | Sequence[int] | Tensor, batch: int, device: torch.device) -> Tensor:
    """A QP (int, list or int tensor [N] / [1]) as int64 [batch] on `device`; ValueError outside 0..63."""
    if isinstance(qp, Tensor):
        values = qp.reshape(-1)
        if values.numel() and (int(values.min()) < 0 or int(values.max()) > 63):
            raise ValueError(f"QP must be in [0, 63], got {values.tolist()}")
        values = values.to(device=device, dtype=torch.int64)
    else:
        values = qp_tensor(qp if isinstance(qp, int) else [int(v) for v in qp], device=device)
    if values.numel() == 1 and batch != 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise ValueError(f"need one QP or one per batch item ({batch}), got {values.numel()}")
    return values


class HyperpriorCodec(nn.Module):
    """Base of the motion, intra and contextual codecs: the mean-scale hyperprior pipeline written once.

    Subclasses build `analysis`-side and `synthesis`-side networks and implement three hooks:

    * `_analysis(x, cond) -> y` (before the QP scale),
    * `_prior(hyper, cond, q_enc) -> (means, scales)` from the hyper features [N, P, hy, wy] (and whatever `cond`
      carries, e.g. contexts and the previous y),
    * `_synthesis(y_deq, cond) -> out` (any structure).

    `cond` is whatever the codec conditions on (None for motion and intra). Members: `hyperprior`, `gaussian` (y's
    conditional entropy model: `GaussianConditional`, or `LaplaceConditional` where the config says), `qp_scales`
    (QPScales over y's channels).
    """

    def __init__(
        self,
        y_channels: int,
        z_channels: int,
        hyper_channels: int,
        hyper_downsamples: int,
        qp_anchors: int,
        qp_init_range: float,
        qp_per_channel: bool = True,
        entropy_model: str = "gaussian",
    ) -> None:
        super().__init__()
        self.y_channels = y_channels
        self.hyperprior = Hyperprior(y_channels, z_channels, hyper_channels, hyper_downsamples)
        self.gaussian = ENTROPY_MODELS[entropy_model]()  # the name packs' state dicts know it by, whatever the model
        self.qp_scales = QPScales(QPScalesConfig(y_channels, qp_anchors, qp_init_range, qp_per_channel))

    # -- hooks --------------------------------------------------------------------------------------------------

    def _analysis(self, x: Tensor, cond: Any) -> Tensor:
        raise NotImplementedError

    def _prior(self, hyper: Tensor, cond: Any, q_enc: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _synthesis(self, y_deq: Tensor, cond: Any) -> Any:
        raise NotImplementedError

    @property
    def input_stride(self) -> int:
        """Input elements per element of y, along each side (1: y at the input's resolution)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self) -> None:
        """Rebuild the coding tables of every entropy model (call after training or loading weights); y's model
        takes its distribution's current default scale table (`default_scale_table`)."""
        for module in self.modules():
            if isinstance(module, FactorizedPrior):
                module.update()
        self.gaussian.use_scale_table(self.gaussian.default_scale_table())

    def entropy_params(self, z_hat: Tensor, cond: Any, q_enc: Tensor) -> tuple[Tensor, Tensor]:
        """(means, scales) of y [N, M, hy, wy] from z_hat: THE one function both coding sides use."""
        means, scales = self._prior(self.hyperprior.decoder(z_hat), cond, q_enc)
        return means.float().contiguous(), scales.float().contiguous()

    def synthesize(self, y_hat: Tensor, cond: Any, q_dec: Tensor) -> tuple[Tensor, Any]:
        """(y_deq, out) = (y_hat * q_dec, synthesis(y_deq)): THE one decoder both coding sides use."""
        y_deq = (y_hat * q_dec).contiguous()
        return y_deq, self._synthesis(y_deq, cond)

    def coded_regions(self, valid_hw: Sequence[int] | None) -> tuple[Region, Region]:
        """(y's, z's) coded regions for an input whose top-left `valid_hw` (in the input's own units: latent
        elements, or pixels for the flow) is the picture and the rest padding: every y element that covers a
        picture element, every z element that covers such a y element. (None, None) when valid_hw is None."""
        if valid_hw is None:
            return None, None
        y_region = tuple(-(-int(v) // self.input_stride) for v in valid_hw)
        step = 2**self.hyperprior.downsamples
        return y_region, tuple(-(-v // step) for v in y_region)

    def _run(self, x: Tensor, cond: Any, qp: Tensor, training: bool, valid_hw: Sequence[int] | None = None) -> _Coded:
        """Steps 1-5 of the module docstring for `forward` and `compress` (training: additive noise). Outside the
        regions of `valid_hw` (evaluation only) y and z take symbol 0 and cost nothing (`coded_regions`)."""
        y_region, z_region = self.coded_regions(valid_hw)
        q_enc, q_dec = self.qp_scales(qp)
        y = (self._analysis(x, cond) * q_enc).float()
        z = self.hyperprior.encoder(y).float()
        z_hat, z_likelihoods = self.hyperprior.prior(z, training=training, region=z_region)
        means, scales = self.entropy_params(z_hat, cond, q_enc)
        y_hat, y_likelihoods = self.gaussian(y, means, scales, training=training, region=y_region)
        y_deq, out = self.synthesize(y_hat, cond, q_dec)
        return _Coded(y, z, y_hat, y_deq, out, {"y": y_likelihoods, "z": z_likelihoods}, means, scales)

    def _segments(
        self, x: Tensor, cond: Any, qp: Tensor, valid_hw: Sequence[int] | None = None
    ) -> tuple[list[Segment], _Coded]:
        """[z's symbols, y's] as segments of an ANS string, and the evaluation-mode pass whose reconstruction
        `_read` reproduces bit for bit."""
        y_region, z_region = self.coded_regions(valid_hw)
        coded = self._run(x, cond, qp, training=False, valid_hw=valid_hw)
        segments = [
            self.hyperprior.prior.segment(coded.z, z_region),
            self.gaussian.segment(coded.y, coded.means, coded.scales, y_region),
        ]
        return segments, coded

    def _compress(
        self, x: Tensor, cond: Any, qp: Tensor, valid_hw: Sequence[int] | None = None
    ) -> tuple[list[bytes], _Coded]:
        """[one string: z's symbols, then y's] and the evaluation-mode pass whose reconstruction `decompress`
        reproduces bit for bit."""
        segments, coded = self._segments(x, cond, qp, valid_hw)
        return [self.entropy_encode(segments)], coded

    @staticmethod
    def entropy_encode(segments: Sequence[Segment], flags: Sequence[bool] = ()) -> bytes:
        """The ANS coding of a frame's flags and segments (a method, so that the timer can count it as
        'entropy')."""
        return encode_segments(segments, flags)

    def _decompress(
        self,
        strings: Sequence[bytes],
        cond: Any,
        qp: Tensor,
        y_shape: Sequence[int],
        valid_hw: Sequence[int] | None = None,
    ) -> tuple[Tensor, Any]:
        """Invert `_compress` given y's shape: (y_deq, out). BitstreamError if the string is damaged."""
        return read_one_string(strings, type(self).__name__, self._read, cond, qp, y_shape, valid_hw)

    def _read(
        self,
        reader: SegmentReader,
        cond: Any,
        qp: Tensor,
        y_shape: Sequence[int],
        valid_hw: Sequence[int] | None = None,
    ) -> tuple[Tensor, Any]:
        """Invert `_segments`: read z then y from `reader` (which may hold more after them), given y's shape:
        (y_deq, out). BitstreamError if the string is damaged."""
        y_region, z_region = self.coded_regions(valid_hw)
        q_enc, q_dec = self.qp_scales(qp)
        z_hat = self.hyperprior.prior.read(reader, self.hyperprior.z_shape(y_shape), z_region)
        means, scales = self.entropy_params(z_hat, cond, q_enc)
        if not (bool(torch.isfinite(means).all()) and bool(torch.isfinite(scales).all())):
            raise BitstreamError("the decoded hyper-latent gives non-finite entropy parameters; the stream is damaged")
        y_hat = self.gaussian.read(reader, means, scales, y_region)
        return self.synthesize(y_hat, cond, q_dec)


def read_one_string(strings: Sequence[bytes], what: str, read: Callable[..., Any], *args: Any) -> Any:
    """read(reader, *args) over the one string of `strings`, checking that it ends there (`SegmentReader.finish`).
    BitstreamError unless there is exactly one string and `read` consumes all of it."""
    if len(strings) != 1 or not isinstance(strings[0], bytes | bytearray):
        raise BitstreamError(f"a {what} frame needs 1 string, got {len(strings)}")
    reader = SegmentReader(bytes(strings[0]))
    decoded = read(reader, *args)
    reader.finish()
    return decoded


def _check_latent_size(size_hw: Sequence[int], multiple: int, what: str) -> tuple[int, int]:
    h, w = (int(s) for s in size_hw)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ValueError(f"{what} {h}x{w} must be positive multiples of {multiple} (frames are padded to 64)")
    return h, w


# --------------------------------------------------------------------------------------------------------------
# Latent analysis and synthesis, with or without contexts
# --------------------------------------------------------------------------------------------------------------


class LatentAnalysis(nn.Module):
    """Enc(l_t, C1, C2, C3) -> y (DCVC-DC's `ContextualEncoder`, moved into the latent domain).

    latent [N, C, h, w] (+ C1 [N, c1, h, w]) -> conv, residual block (width ch1) -> stride 2 (+ C2 at h/2)
    -> conv, residual block (width ch2) -> stride 2 (+ C3 at h/4) -> conv -> y [N, M, h/4, w/4].
    With context widths (0, 0, 0) nothing is concatenated: the intra encoder.
    """

    def __init__(self, latent_channels: int, contexts: Sequence[int], channels: Sequence[int], y_channels: int):
        super().__init__()
        c1, c2, c3 = contexts
        ch1, ch2 = channels
        self.stage1 = nn.Sequential(
            conv(latent_channels + c1, ch1), ResidualBlock(ch1), conv(ch1, ch2, stride=2), act()
        )
        self.stage2 = nn.Sequential(conv(ch2 + c2, ch2), ResidualBlock(ch2), conv(ch2, ch2, stride=2), act())
        self.stage3 = nn.Sequential(conv(ch2 + c3, ch2), act(), conv(ch2, y_channels))

    def forward(self, latent: Tensor, contexts: Contexts | None) -> Tensor:
        if contexts is None:
            return self.stage3(self.stage2(self.stage1(latent)))
        x = self.stage1(torch.cat((latent, contexts.c1), dim=1))
        x = self.stage2(torch.cat((x, contexts.c2), dim=1))
        return self.stage3(torch.cat((x, contexts.c3), dim=1))


class LatentSynthesis(nn.Module):
    """Dec(y_hat, C1, C2, C3) -> (l^_t, feature) (DCVC-DC's `ContextualDecoder` + `ReconGeneration`, latent domain).

    y [N, M, h/4, w/4] (+ C3) -> conv, residual block -> x2 (+ C2 at h/2) -> conv, residual block -> x2
    (+ C1 at h) -> conv, residual block -> feature [N, F, h, w] -> conv -> latent [N, C, h, w].
    """

    def __init__(
        self,
        latent_channels: int,
        contexts: Sequence[int],
        channels: Sequence[int],
        y_channels: int,
        feature_channels: int,
    ) -> None:
        super().__init__()
        c1, c2, c3 = contexts
        ch1, ch2 = channels
        self.stage3 = nn.Sequential(conv(y_channels + c3, ch2), ResidualBlock(ch2), SubpelUpsample(ch2, ch2), act())
        self.stage2 = nn.Sequential(conv(ch2 + c2, ch2), ResidualBlock(ch2), SubpelUpsample(ch2, ch1), act())
        self.stage1 = nn.Sequential(conv(ch1 + c1, feature_channels), ResidualBlock(feature_channels))
        self.head = nn.Sequential(act(), conv(feature_channels, latent_channels))

    def forward(self, y: Tensor, contexts: Contexts | None) -> tuple[Tensor, Tensor]:
        if contexts is None:
            feature = self.stage1(self.stage2(self.stage3(y)))
        else:
            x = self.stage3(torch.cat((y, contexts.c3), dim=1))
            x = self.stage2(torch.cat((x, contexts.c2), dim=1))
            feature = self.stage1(torch.cat((x, contexts.c1), dim=1))
        return self.head(feature), feature


def block_transform_matrix(channels: int, factor: int = 8) -> Tensor:
    """The orthonormal [C, C] transform of a PixelUnshuffle(factor) latent with C = `channels`: for RGB (C = 3 *
    factor**2) an orthonormal colour transform (a luma-like sum, two opponent differences) Kronecker the 2-D DCT-II of
    each factor x factor block; for other multiples of factor**2 the DCT of each plane; otherwise the identity.

    Rows index output coefficients (colour * factor**2 + u * factor + v), columns PixelUnshuffle's channel order
    (colour * factor**2 + row * factor + col). Orthonormal, so its transpose inverts it: JPEG's transform, with the
    colour matrix made orthonormal so that coefficient errors are pixel errors.
    """
    planes, rest = divmod(channels, factor**2)
    if rest:
        return torch.eye(channels)
    n = torch.arange(factor, dtype=torch.float64)
    dct = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * factor)) * math.sqrt(2 / factor)
    dct[0] /= math.sqrt(2)
    colour = torch.eye(planes, dtype=torch.float64)
    if planes == 3:
        colour = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, -2.0, 1.0]], dtype=torch.float64)
        colour = colour / colour.norm(dim=1, keepdim=True)
    return torch.kron(colour, torch.kron(dct, dct)).float()


class BlockTransformAnalysis(nn.Module):
    """y = gain * T (l_t - p) + g(l_t - p, C1): a transform-coding skeleton plus a learned correction, at the latent's
    resolution (tiny preset; the choice and why: docs/DESIGN-NOTES.md, "The tiny preset").

    T: `block_transform_matrix` (an orthonormal block DCT of the PixelUnshuffle latent, fixed); p: the
    motion-compensated prediction of the latent (contexts.prediction; zero for intra). g: conv -> residual blocks ->
    conv whose last layer starts at zero, so an untrained codec is a JPEG/H.263-like transform codec and training
    moves it towards conditional coding (g sees C1). latent [N, C, h, w] -> y [N, C, h, w] (y_stride 1).
    """

    def __init__(self, latent_channels: int, c1: int, hidden: int, gain: float) -> None:
        super().__init__()
        self.gain = gain
        self.register_buffer("transform", block_transform_matrix(latent_channels), persistent=False)
        self.learned = nn.Sequential(
            conv(latent_channels + c1, hidden), ResidualBlock(hidden), act(), conv(hidden, latent_channels)
        )

    def forward(self, latent: Tensor, contexts: Contexts | None) -> Tensor:
        if contexts is None:
            residual, inputs = latent, latent
        else:
            if contexts.prediction is None:
                raise ValueError("the block transform codes the residual: contexts.prediction is needed")
            residual = latent - contexts.prediction
            inputs = torch.cat((residual, contexts.c1), dim=1)
        linear = torch.einsum("oc,nchw->nohw", self.transform, residual) * self.gain
        return linear + self.learned(inputs)


class BlockTransformSynthesis(nn.Module):
    """(l^_t, feature) = (p + T^t y / gain + h(y, C1), features of h): the inverse of `BlockTransformAnalysis`.

    h: conv -> residual blocks -> feature [N, F, h, w] (kept in the DPB) -> conv whose last layer starts at zero.
    y [N, C, h, w] -> latent [N, C, h, w].
    """

    def __init__(self, latent_channels: int, c1: int, hidden: int, feature_channels: int, gain: float) -> None:
        super().__init__()
        self.gain = gain
        self.register_buffer("transform", block_transform_matrix(latent_channels), persistent=False)
        self.body = nn.Sequential(
            conv(latent_channels + c1, hidden),
            ResidualBlock(hidden),
            act(),
            conv(hidden, feature_channels),
            ResidualBlock(feature_channels),
        )
        self.head = nn.Sequential(act(), conv(feature_channels, latent_channels))

    def forward(self, y: Tensor, contexts: Contexts | None) -> tuple[Tensor, Tensor]:
        linear = torch.einsum("oc,nohw->nchw", self.transform, y) / self.gain
        if contexts is None:
            feature = self.body(y)
            return linear + self.head(feature), feature
        if contexts.prediction is None:
            raise ValueError("the block transform codes the residual: contexts.prediction is needed")
        feature = self.body(torch.cat((y, contexts.c1), dim=1))
        return contexts.prediction + linear + self.head(feature), feature


def _split_params(params: Tensor) -> tuple[Tensor, Tensor]:
    """[N, 2M, ...] -> (means, scales), each [N, M, ...]."""
    means, scales = params.chunk(2, dim=1)
    return means, scales


# --------------------------------------------------------------------------------------------------------------
# Intra latent codec
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentCodecConfig:
    """What the intra and contextual latent codecs share. channels: hidden widths at 1/8 and 1/16 of the frame;
    y_channels (M) at 1/32 (deep) or 1/8 (block); z_channels (Z) at 1/64; hyper_channels: the hyperprior's width;
    feature_channels (F): the DPB feature; qp_*: the per-QP quantization steps (`codec.diffvc.qp`); transform:
    "deep" (learned) or "block" (the block-transform skeleton, docs/DESIGN-NOTES.md) with its gain; entropy_model:
    y's distribution, "gaussian" (Ballé/Minnen, the default) or "laplace" (DCVC's)."""

    latent_channels: int = 192
    channels: tuple[int, int] = (64, 96)
    y_channels: int = 128
    z_channels: int = 64
    hyper_channels: int = 96
    feature_channels: int = 64
    qp_anchors: int = 4
    qp_init_range: float = 16.0
    qp_per_channel: bool = True  # False: a flat quantization matrix (one step per QP), codec.diffvc.qp
    transform: Literal["deep", "block"] = "deep"
    block_gain: float = 8.0
    entropy_model: Literal["gaussian", "laplace"] = "gaussian"  # y's distribution (`entropy.ENTROPY_MODELS`)

    def __post_init__(self) -> None:
        if len(self.channels) != 2 or min(self._sizes()) < 1:
            raise ValueError(f"{type(self).__name__} needs two hidden widths and positive sizes: {self}")
        if self.entropy_model not in ENTROPY_MODELS:
            raise ValueError(f"entropy_model must be one of {', '.join(ENTROPY_MODELS)}, got {self.entropy_model!r}")
        _check_transform(self.transform, self.y_channels, self.latent_channels, self.block_gain)

    def _sizes(self) -> tuple[int, ...]:
        return (self.latent_channels, *self.channels, self.y_channels, self.z_channels, self.hyper_channels,
                self.feature_channels)  # fmt: skip

    @property
    def y_stride(self) -> int:
        """y's downsampling relative to the latent: 4 (y at 1/32 of the frame) deep, 1 (1/8) block."""
        return 1 if self.transform == "block" else 4

    @classmethod
    def tiny(cls, latent_channels: int = 192):
        """[I] For a 2-core CPU: the PixelUnshuffle(8) latent coded by the block-transform skeleton (y = 192
        channels at 1/8 of the frame, hidden width 64, z at 1/32; the contextual codec against the
        motion-compensated prediction, contexts 64/64/96), one quantization step per QP; docs/DESIGN-NOTES.md."""
        return cls(
            latent_channels=latent_channels,
            y_channels=latent_channels,
            transform="block",
            qp_init_range=64.0,
            qp_per_channel=False,
        )

    @classmethod
    def full(cls, latent_channels: int = 4, **widths: Any):
        """[I] The SD-VAE latent (4 channels), DCVC-DC-like widths."""
        return cls(
            latent_channels=latent_channels,
            channels=(128, 192),
            y_channels=192,
            z_channels=128,
            hyper_channels=192,
            feature_channels=64,
            **widths,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class IntraLatentCodecConfig(LatentCodecConfig):
    """The intra latent codec's widths (`LatentCodecConfig`)."""


class IntraLatentCodec(HyperpriorCodec):
    """Hyperprior latent codec of I-frames: l_t [N, C, h, w] -> y at 1/32 of the frame -> (l^_t, DPB feature).

    Ballé et al. 2018 mean-scale hyperprior (Minnen et al. 2018, without the autoregressive context), in DiffVC's
    latent space; QP-variable rate as in DCVC-DC. The I-frame's y_hat is returned but is not a temporal prior
    for the P-frames (their y lives in another transform): the first P-frame after an I-frame gets
    prev_y_hat = None.
    """

    def __init__(self, config: IntraLatentCodecConfig) -> None:
        super().__init__(*_hyperprior_args(config))
        self.config = config
        self.encoder, self.decoder = _transforms(config, (0, 0, 0))
        self.prior_head = nn.Sequential(act(), conv(config.hyper_channels, 2 * config.y_channels, 1))
        init_variance_preserving(self)
        _start_as_transform_coder(self)

    def _analysis(self, x: Tensor, cond: Any) -> Tensor:
        return self.encoder(x, None)

    def _prior(self, hyper: Tensor, cond: Any, q_enc: Tensor) -> tuple[Tensor, Tensor]:
        return _split_params(self.prior_head(hyper))

    def _synthesis(self, y_deq: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        return self.decoder(y_deq, None)

    def _output(self, y_deq: Tensor, out: tuple[Tensor, Tensor], likelihoods: dict[str, Tensor]) -> LatentCodingOutput:
        latent_hat, feature = out
        return LatentCodingOutput(latent_hat, feature, y_deq, likelihoods)

    @property
    def input_stride(self) -> int:
        return self.config.y_stride

    def forward(
        self, latent: Tensor, qp: int | Sequence[int] | Tensor, valid_hw: Sequence[int] | None = None
    ) -> LatentCodingOutput:
        """latent [N, C, h, w] (h, w multiples of 8) -> LatentCodingOutput; training mode adds uniform noise,
        evaluation mode rounds (then it equals `compress`'s output bit for bit). valid_hw: the latent's picture
        area (the rest is padding, not coded; `HyperpriorCodec.coded_regions`), None for all of it."""
        _check_latent_size(latent.shape[-2:], 8, "latent size")
        coded = self._run(
            latent, None, qp_batch(qp, latent.shape[0], latent.device), training=self.training, valid_hw=valid_hw
        )
        return self._output(coded.y_deq, coded.out, coded.likelihoods)

    @torch.no_grad()
    def compress(
        self, latent: Tensor, qp: int | Sequence[int] | Tensor, valid_hw: Sequence[int] | None = None
    ) -> tuple[list[bytes], LatentCodingOutput]:
        """-> ([one string: z then y], the decoder's LatentCodingOutput, with evaluation-mode likelihoods)."""
        _check_latent_size(latent.shape[-2:], 8, "latent size")
        strings, coded = self._compress(latent, None, qp_batch(qp, latent.shape[0], latent.device), valid_hw)
        return strings, self._output(coded.y_deq, coded.out, coded.likelihoods)

    @torch.no_grad()
    def decompress(
        self,
        strings: Sequence[bytes],
        qp: int | Sequence[int] | Tensor,
        latent_size_hw: Sequence[int],
        valid_hw: Sequence[int] | None = None,
    ) -> LatentCodingOutput:
        """Invert `compress` (batch size = number of QPs given): likelihoods are not recomputed (empty dict)."""
        h, w = _check_latent_size(latent_size_hw, 8, "latent size")
        device = self.qp_scales.log_enc.device
        qp = qp_batch(qp, 1 if isinstance(qp, int) else len(qp), device)
        stride = self.config.y_stride
        y_deq, out = self._decompress(
            strings, None, qp, (qp.numel(), self.y_channels, h // stride, w // stride), valid_hw
        )
        return self._output(y_deq, out, {})


# --------------------------------------------------------------------------------------------------------------
# Contextual latent codec (P-frames)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextualLatentCodecConfig(LatentCodecConfig):
    """The contextual latent codec's widths: `LatentCodecConfig`, plus context_channels: C1, C2, C3 (must match
    `TemporalContextConfig`) and temporal_channels: the temporal prior's width."""

    context_channels: tuple[int, int, int] = (64, 64, 96)
    temporal_channels: int = 96

    def __post_init__(self) -> None:
        if len(self.context_channels) != 3:
            raise ValueError(f"ContextualLatentCodecConfig needs 3 context widths: {self}")
        super().__post_init__()

    def _sizes(self) -> tuple[int, ...]:
        return (*super()._sizes(), *self.context_channels, self.temporal_channels)

    @property
    def codes_residual(self) -> bool:
        """True when the codec needs contexts.prediction (the block skeleton codes l_t - prediction)."""
        return self.transform == "block"

    @classmethod
    def full(cls, latent_channels: int = 4, **widths: Any) -> ContextualLatentCodecConfig:
        """[I] As `LatentCodecConfig.full`, with contexts 64/128/192 (C1 = 64 to match the diffusion condition)."""
        return super().full(latent_channels, context_channels=(64, 128, 192), temporal_channels=192, **widths)


@dataclass
class _Condition:
    contexts: Contexts
    prev_y_hat: Tensor | None


class ContextualLatentCodec(HyperpriorCodec):
    """Conditional latent codec of P-frames (DCVC-DC, Li et al. 2023, in DiffVC's latent space).

    y = Enc(l_t, C1, C2, C3) at 1/32 of the frame; a hyperprior z at 1/64; a temporal prior from C3 and the
    previous P-frame's dequantized y_hat (zeros when absent), rescaled by this frame's q_enc, fused with the
    hyper features into the Gaussian's (means, scales); (l^_t, feature) = Dec(y_hat * q_dec, C1, C2, C3).
    """

    def __init__(self, config: ContextualLatentCodecConfig) -> None:
        super().__init__(*_hyperprior_args(config))
        self.config = config
        m, t, hyper = config.y_channels, config.temporal_channels, config.hyper_channels
        self.encoder, self.decoder = _transforms(config, config.context_channels)
        prior_context = config.context_channels[0 if config.y_stride == 1 else 2]
        self.temporal_prior = nn.Sequential(conv(prior_context + m, t), act(), conv(t, t))
        self.prior_fusion = nn.Sequential(act(), conv(hyper + t, hyper, 1), act(), conv(hyper, 2 * m, 1))
        init_variance_preserving(self)
        _start_as_transform_coder(self)

    def _analysis(self, x: Tensor, cond: _Condition) -> Tensor:
        return self.encoder(x, cond.contexts)

    def _prior(self, hyper: Tensor, cond: _Condition, q_enc: Tensor) -> tuple[Tensor, Tensor]:
        context = cond.contexts.c1 if self.config.y_stride == 1 else cond.contexts.c3  # the context at y's scale
        prev = cond.prev_y_hat
        if prev is None:
            prev = context.new_zeros(context.shape[0], self.y_channels, *context.shape[-2:])
        else:
            prev = prev * q_enc
        temporal = self.temporal_prior(torch.cat((context, prev), dim=1))
        return _split_params(self.prior_fusion(torch.cat((hyper, temporal), dim=1)))

    def _synthesis(self, y_deq: Tensor, cond: _Condition) -> tuple[Tensor, Tensor]:
        return self.decoder(y_deq, cond.contexts)

    def _condition(
        self, contexts: Contexts, prev_y_hat: Tensor | None, latent_hw: Sequence[int], batch: int
    ) -> _Condition:
        h, w = _check_latent_size(latent_hw, 8, "latent size")
        c1, c2, c3 = self.config.context_channels
        expected = {"c1": (batch, c1, h, w), "c2": (batch, c2, h // 2, w // 2), "c3": (batch, c3, h // 4, w // 4)}
        for name, shape in expected.items():
            got = tuple(getattr(contexts, name).shape)
            if got != shape:
                raise ValueError(f"context {name} has shape {got}, expected {shape}")
        stride = self.config.y_stride
        if prev_y_hat is not None and tuple(prev_y_hat.shape) != (batch, self.y_channels, h // stride, w // stride):
            raise ValueError(
                f"prev_y_hat has shape {tuple(prev_y_hat.shape)}, expected "
                f"{(batch, self.y_channels, h // stride, w // stride)}"
            )
        if self.config.codes_residual and (
            contexts.prediction is None
            or tuple(contexts.prediction.shape) != (batch, self.config.latent_channels, h, w)
        ):
            raise ValueError(
                "this codec codes the residual against contexts.prediction [N, C, h, w]: "
                "build contexts with DiffVCModel.temporal_contexts"
            )
        return _Condition(contexts, prev_y_hat)

    @staticmethod
    def _output(y_deq: Tensor, out: tuple[Tensor, Tensor], likelihoods: dict[str, Tensor]) -> LatentCodingOutput:
        latent_hat, feature = out
        return LatentCodingOutput(latent_hat, feature, y_deq, likelihoods)

    @property
    def input_stride(self) -> int:
        return self.config.y_stride

    def forward(
        self,
        latent: Tensor,
        contexts: Contexts,
        prev_y_hat: Tensor | None,
        qp: int | Sequence[int] | Tensor,
        valid_hw: Sequence[int] | None = None,
    ) -> LatentCodingOutput:
        """latent [N, C, h, w], contexts at 1/8, 1/16, 1/32 of the frame, prev_y_hat [N, M, h/4, w/4] or None
        -> LatentCodingOutput (training: uniform noise; evaluation: rounding, equal to `compress`'s output).
        valid_hw: the latent's picture area, as in `IntraLatentCodec.forward`."""
        n = latent.shape[0]
        cond = self._condition(contexts, prev_y_hat, latent.shape[-2:], n)
        coded = self._run(latent, cond, qp_batch(qp, n, latent.device), training=self.training, valid_hw=valid_hw)
        return self._output(coded.y_deq, coded.out, coded.likelihoods)

    @torch.no_grad()
    def segments(
        self,
        latent: Tensor,
        contexts: Contexts,
        prev_y_hat: Tensor | None,
        qp: int | Sequence[int] | Tensor,
        valid_hw: Sequence[int] | None = None,
    ) -> tuple[list[Segment], LatentCodingOutput]:
        """-> ([z, y]: segments of the frame's string for `entropy.encode_segments`, the decoder's
        LatentCodingOutput with evaluation-mode likelihoods)."""
        n = latent.shape[0]
        cond = self._condition(contexts, prev_y_hat, latent.shape[-2:], n)
        segments, coded = self._segments(latent, cond, qp_batch(qp, n, latent.device), valid_hw)
        return segments, self._output(coded.y_deq, coded.out, coded.likelihoods)

    @torch.no_grad()
    def compress(
        self,
        latent: Tensor,
        contexts: Contexts,
        prev_y_hat: Tensor | None,
        qp: int | Sequence[int] | Tensor,
        valid_hw: Sequence[int] | None = None,
    ) -> tuple[list[bytes], LatentCodingOutput]:
        """-> ([one string: z then y], the decoder's LatentCodingOutput, with evaluation-mode likelihoods)."""
        segments, out = self.segments(latent, contexts, prev_y_hat, qp, valid_hw)
        return [self.entropy_encode(segments)], out

    @torch.no_grad()
    def read(
        self,
        reader: SegmentReader,
        contexts: Contexts,
        prev_y_hat: Tensor | None,
        qp: int | Sequence[int] | Tensor,
        latent_size_hw: Sequence[int],
        valid_hw: Sequence[int] | None = None,
    ) -> LatentCodingOutput:
        """Invert `segments`, reading z and y from `reader`, given the same contexts and prev_y_hat (batch size:
        the contexts'); likelihoods are not recomputed (empty dict). BitstreamError if the string is damaged."""
        h, w = _check_latent_size(latent_size_hw, 8, "latent size")
        n = contexts.c1.shape[0]
        cond = self._condition(contexts, prev_y_hat, (h, w), n)
        qp = qp_batch(qp, n, contexts.c1.device)
        stride = self.config.y_stride
        y_deq, out = self._read(reader, cond, qp, (n, self.y_channels, h // stride, w // stride), valid_hw)
        return self._output(y_deq, out, {})

    @torch.no_grad()
    def decompress(
        self,
        strings: Sequence[bytes],
        contexts: Contexts,
        prev_y_hat: Tensor | None,
        qp: int | Sequence[int] | Tensor,
        latent_size_hw: Sequence[int],
        valid_hw: Sequence[int] | None = None,
    ) -> LatentCodingOutput:
        """Invert `compress` (one string), as `read`. BitstreamError if the strings are damaged."""
        return read_one_string(
            strings, type(self).__name__, self.read, contexts, prev_y_hat, qp, latent_size_hw, valid_hw
        )


# --------------------------------------------------------------------------------------------------------------
# Choosing the transforms: deep (DCVC-DC style, y at 1/32) or the block skeleton (y at 1/8)
# --------------------------------------------------------------------------------------------------------------


def _check_transform(transform: str, y_channels: int, latent_channels: int, gain: float) -> None:
    if transform not in ("deep", "block"):
        raise ValueError(f"transform must be 'deep' or 'block', got {transform!r}")
    if transform == "block" and (y_channels != latent_channels or gain <= 0):
        raise ValueError(
            f"the block transform needs y_channels == latent_channels ({y_channels} != "
            f"{latent_channels}) and a positive gain"
        )


def _hyperprior_args(config: LatentCodecConfig) -> tuple:
    """`HyperpriorCodec`'s arguments from a latent codec's config."""
    return (
        config.y_channels,
        config.z_channels,
        config.hyper_channels,
        _hyper_downsamples(config),
        config.qp_anchors,
        config.qp_init_range,
        config.qp_per_channel,
        config.entropy_model,
    )


def _hyper_downsamples(config: IntraLatentCodecConfig | ContextualLatentCodecConfig) -> int:
    """z at 1/64 of the frame for the deep transform (y at 1/32), 1/32 for the block one (y at 1/8)."""
    return 2 if config.transform == "block" else 1


def _transforms(
    config: IntraLatentCodecConfig | ContextualLatentCodecConfig, contexts: Sequence[int]
) -> tuple[nn.Module, nn.Module]:
    """(analysis, synthesis) of a latent codec with the given context widths ((0, 0, 0): intra)."""
    if config.transform == "block":
        hidden = config.channels[0]
        return (
            BlockTransformAnalysis(config.latent_channels, contexts[0], hidden, config.block_gain),
            BlockTransformSynthesis(
                config.latent_channels, contexts[0], hidden, config.feature_channels, config.block_gain
            ),
        )
    return (
        LatentAnalysis(config.latent_channels, contexts, config.channels, config.y_channels),
        LatentSynthesis(config.latent_channels, contexts, config.channels, config.y_channels, config.feature_channels),
    )


def _start_as_transform_coder(codec: HyperpriorCodec) -> None:
    """For the block skeleton: the learned corrections start at zero (after `init_variance_preserving`), and so
    does the entropy model's dependence on z: means 0, one scale for every element."""
    if isinstance(codec.encoder, BlockTransformAnalysis):
        zero_last_convolution(codec.encoder.learned)
        zero_last_convolution(codec.decoder.head)
        start_prior_flat(_prior_head(codec))


INITIAL_SCALE = 1.0  # a skeleton codec's first Gaussian scale, in quantization steps


def _prior_head(codec: HyperpriorCodec) -> nn.Module:
    """The module whose output is y's entropy parameters [means; scales]: the intra and motion codecs' `prior_head`,
    the contextual codec's `prior_fusion`."""
    return getattr(codec, "prior_head", None) or codec.prior_fusion


def prior_output(codec: HyperpriorCodec) -> nn.Conv2d:
    """The convolution whose output is y's entropy parameters [means; scales] (2M channels)."""
    return last_convolution(_prior_head(codec))


def start_prior_flat(prior_head: nn.Module, scale: float = INITIAL_SCALE) -> None:
    """Make a prior head whose output is [means; scales] (2M channels) start at means 0 and scales `scale`: an
    untrained codec then codes with one fixed model, and its rate falls as the QP rises, from the first step."""
    last = last_convolution(prior_head)
    zero_last_convolution(prior_head)
    with torch.no_grad():
        last.bias[last.out_channels // 2 :] = scale
