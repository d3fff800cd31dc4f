"""Motion of DiffVC (pixel domain): optical flow estimation and the MV codec.

* `SpyNetFlow`: a SpyNet-style coarse-to-fine flow estimator (Ranjan & Black, "Optical Flow Estimation using a
  Spatial Pyramid Network", CVPR 2017), the estimator of DVC (Lu et al. 2019) and DCVC-DC (Li et al. 2023);
  trainable on ground-truth flow with `endpoint_error`.
* `DISFlow`: OpenCV's DIS optical flow (Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016)
  behind the same call: no training, deterministic, fast on a CPU. Flow is encoder-side only, so either estimator
  can be used without changing the bitstream (docs/DESIGN.md section 3).
* `MotionCodec`: DVC's MV autoencoder (stride 16) with a mean-scale hyperprior (Ballé et al. 2018) and DCVC-DC's
  QP-dependent quantization scales, on the shared pipeline of `latent_codec.HyperpriorCodec`.

Flow convention (codec/diffvc/warp.py): flow [N, 2, H, W] in pixels, channel 0 = x, channel 1 = y, and
``warp(ref, flow) ~= cur``, i.e. cur(p) ~= ref(p + flow(p)). Frames are RGB [N, 3, H, W] in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.diffvc.entropy import ENTROPY_MODELS, Segment, SegmentReader
from codec.diffvc.latent_codec import CodingOutput, HyperpriorCodec, qp_batch, read_one_string, start_prior_flat
from codec.diffvc.layers import (
    ResidualBlock,
    SubpelUpsample,
    act,
    config_from_dict,
    conv,
    init_variance_preserving,
    zero_last_convolution,
)
from codec.diffvc.warp import resize_flow, warp

__all__ = [
    "DISFlow",
    "DISFlowConfig",
    "FlowEstimatorConfig",
    "MotionCodec",
    "MotionCodecConfig",
    "SpyNetFlow",
    "endpoint_error",
]

MOTION_STRIDE = 16  # y_mv is at 1/16 of the frame
HYPER_STRIDE = 64  # z_mv at 1/64: frames are padded to multiples of 64


def endpoint_error(flow: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean end-point error ||flow - target||_2 in pixels (a 0-dim tensor), the SpyNet training loss.

    flow, target: [N, 2, H, W] in pixels; mask: optional [N, 1, H, W] weights (e.g. 0 where the target is unknown).
    """
    epe = torch.linalg.vector_norm(flow - target, dim=1, keepdim=True)
    if mask is None:
        return epe.mean()
    return (epe * mask).sum() / mask.sum().clamp_min(1e-8)


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad [N, C, H, W] at the bottom and right so that H and W are multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


# --------------------------------------------------------------------------------------------------------------
# SpyNet
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowEstimatorConfig:
    """SpyNet shape: `levels` pyramid levels (each halves the resolution), one basic module per level made of
    convolutions of `widths` hidden channels and `kernel_size` (Ranjan & Black: 5 levels of 32-64-32-16, 7x7).
    finest_level: the finest level a basic module runs at (0 = full resolution); below it the flow is only
    upsampled bilinearly (1 = estimate at half resolution: 4x cheaper, the tiny preset's choice for CPUs)."""

    levels: int = 5
    widths: tuple[int, ...] = (16, 32, 16, 8)
    kernel_size: int = 5
    finest_level: int = 1

    def __post_init__(self) -> None:
        if self.levels < 1 or not self.widths or min(self.widths) < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"FlowEstimatorConfig needs levels >= 1, positive widths and an odd kernel: {self}")
        if not 0 <= self.finest_level < self.levels:
            raise ValueError(f"finest_level must lie in 0 .. levels - 1, got {self.finest_level}")

    @classmethod
    def tiny(cls) -> FlowEstimatorConfig:
        """[I] For a 2-core CPU: 5 levels, 16-32-16-8 channels, 5x5, finest estimate at 1/2 resolution."""
        return cls()

    @classmethod
    def full(cls) -> FlowEstimatorConfig:
        """SpyNet's own basic modules (32-64-32-16, 7x7) over 5 levels (DVC/DCVC use SpyNet's pretrained ones)."""
        return cls(levels=5, widths=(32, 64, 32, 16), kernel_size=7, finest_level=0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowEstimatorConfig:
        return config_from_dict(cls, data)


class SpyNetFlow(nn.Module):
    """Coarse-to-fine flow (SpyNet, Ranjan & Black 2017): at each level from the coarsest, upsample the flow, warp
    the reference with it and add the residual a small CNN predicts from [cur, warped ref, flow].

    forward(cur, ref): [N, 3, H, W] in [0, 1] (any H, W: padded internally to 2**(levels - 1)) -> flow
    [N, 2, H, W] in pixels such that warp(ref, flow) ~= cur. Inputs are normalized with ImageNet statistics.
    Levels finer than `config.finest_level` have no basic module: the flow is upsampled to them.
    """

    def __init__(self, config: FlowEstimatorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FlowEstimatorConfig()
        k = config.kernel_size
        self.basic = nn.ModuleList()
        for _ in range(config.finest_level, config.levels):
            layers: list[nn.Module] = []
            width_in = 8  # cur (3) + warped ref (3) + flow (2)
            for width in config.widths:
                layers += [conv(width_in, width, k), nn.ReLU()]
                width_in = width
            layers.append(conv(width_in, 2, k))
            self.basic.append(nn.Sequential(*layers))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        """[full resolution, 1/2, ..., coarsest] of the normalized image (average pooling)."""
        levels = [(x - self.mean) / self.std]
        for _ in range(self.config.levels - 1):
            levels.append(F.avg_pool2d(levels[-1], 2))
        return levels

    def forward(self, cur: Tensor, ref: Tensor) -> Tensor:
        h, w = cur.shape[-2:]
        multiple = 2 ** (self.config.levels - 1)
        cur_levels = self._pyramid(_pad_to_multiple(cur, multiple))
        ref_levels = self._pyramid(_pad_to_multiple(ref, multiple))
        flow = None
        for level in reversed(range(self.config.finest_level, self.config.levels)):
            c, r = cur_levels[level], ref_levels[level]
            flow = c.new_zeros(c.shape[0], 2, *c.shape[-2:]) if flow is None else resize_flow(flow, c.shape[-2:])
            residual = self.basic[level - self.config.finest_level](torch.cat((c, warp(r, flow), flow), dim=1))
            flow = flow + residual
        return resize_flow(flow, cur_levels[0].shape[-2:])[..., :h, :w]


# --------------------------------------------------------------------------------------------------------------
# DIS
# --------------------------------------------------------------------------------------------------------------

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class DISFlowConfig:
    """OpenCV DIS preset: 'ultrafast', 'fast' or 'medium' (the default: the most accurate)."""

    preset: Literal["ultrafast", "fast", "medium"] = "medium"

    def __post_init__(self) -> None:
        if self.preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset must be one of {sorted(DIS_PRESETS)}, got {self.preset!r}")


class DISFlow(nn.Module):
    """OpenCV's DIS optical flow (Kroeger et al. 2016) with `SpyNetFlow`'s call: no parameters, no training.

    forward(cur, ref): [N, 3, H, W] in [0, 1] -> flow [N, 2, H, W] float32 in pixels on cur's device, with
    warp(ref, flow) ~= cur. Computed on the CPU in 8-bit luma (BT.601 weights), one image pair at a time;
    deterministic for given inputs. No gradient flows through it.
    """

    def __init__(self, config: DISFlowConfig | None = None) -> None:
        super().__init__()
        self.config = config or DISFlowConfig()

    @staticmethod
    def _luma_u8(x: Tensor) -> np.ndarray:
        """[N, 3, H, W] in [0, 1] -> uint8 [N, H, W]."""
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
        y = (x.detach().float().cpu() * weights).sum(dim=1).clamp(0, 1)
        return torch.round(y * 255).to(torch.uint8).numpy()

    @torch.no_grad()
    def forward(self, cur: Tensor, ref: Tensor) -> Tensor:
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.config.preset])
        cur_y, ref_y = self._luma_u8(cur), self._luma_u8(ref)
        # DIS's calc(I0, I1) gives f with I0(p) ~= I1(p + f(p)): with I0 = cur, I1 = ref that is warp.py's flow.
        flows = [dis.calc(c, r, None) for c, r in zip(cur_y, ref_y)]
        flow = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous()
        return flow.to(device=cur.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------------
# MV codec
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionCodecConfig:
    """Widths of the MV codec: channels (hidden width of the MV encoder/decoder), y_channels (M) of y_mv at 1/16,
    z_channels of z_mv at 1/64, hyper_channels (the hyperprior's width). flow_scale: the flow (pixels) is divided
    by it before the encoder and the decoder's output multiplied by it. entropy_model: y_mv's distribution,
    "gaussian" (the default) or "laplace" (as the latent codecs', `LatentCodecConfig.entropy_model`)."""

    channels: int = 48
    y_channels: int = 48
    z_channels: int = 32
    hyper_channels: int = 48
    flow_scale: float = 4.0
    qp_anchors: int = 4
    qp_init_range: float = 16.0
    block_skeleton: bool = False
    block_gain: float = 4.0
    entropy_model: Literal["gaussian", "laplace"] = "gaussian"

    def __post_init__(self) -> None:
        if min(self.channels, self.y_channels, self.z_channels, self.hyper_channels) < 1 or self.flow_scale <= 0:
            raise ValueError(f"MotionCodecConfig sizes and flow_scale must be positive: {self}")
        if self.entropy_model not in ENTROPY_MODELS:
            raise ValueError(f"entropy_model must be one of {', '.join(ENTROPY_MODELS)}, got {self.entropy_model!r}")

    @classmethod
    def tiny(cls) -> MotionCodecConfig:
        """[I] For a 2-core CPU: 48 channels throughout, z of 32 channels, the block-motion skeleton (an untrained
        codec codes the mean flow of each 16x16 block: docs/DESIGN-NOTES.md)."""
        return cls(block_skeleton=True)

    @classmethod
    def full(cls) -> MotionCodecConfig:
        """[I] DCVC-DC-like widths (its MV codec uses 64 channels; we give the full preset 128)."""
        return cls(channels=128, y_channels=128, z_channels=64, hyper_channels=128)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MotionCodecConfig:
        return config_from_dict(cls, data)


class MotionCodec(HyperpriorCodec):
    """MV autoencoder (DVC, Lu et al. 2019; DCVC-DC's MvEnc/MvDec) with a mean-scale hyperprior.

    flow [N, 2, H, W] (pixels; H, W multiples of 64) -> four stride-2 convolutions -> y_mv [N, M, H/16, W/16]
    (times the QP's encoder scale) -> hyperprior z_mv [N, Z, H/64, W/64] -> Gaussian (or Laplace, the config's
    `entropy_model`) conditional with means and scales from the hyper-decoder -> y_mv_hat * q_dec -> four sub-pixel
    x2 stages -> flow_hat [N, 2, H, W].
    One string per frame: z then y.
    """

    def __init__(self, config: MotionCodecConfig | None = None) -> None:
        config = config or MotionCodecConfig()
        super().__init__(
            config.y_channels,
            config.z_channels,
            config.hyper_channels,
            2,
            config.qp_anchors,
            config.qp_init_range,
            entropy_model=config.entropy_model,
        )
        self.config = config
        c, m = config.channels, config.y_channels
        self.encoder = nn.Sequential(
            conv(2, c, stride=2),
            act(),
            conv(c, c, stride=2),
            act(),
            ResidualBlock(c),
            conv(c, c, stride=2),
            act(),
            conv(c, m, stride=2),
        )
        self.decoder = nn.Sequential(
            conv(m, c),
            ResidualBlock(c),
            act(),
            SubpelUpsample(c, c),
            act(),
            SubpelUpsample(c, c),
            act(),
            SubpelUpsample(c, c),
            act(),
            SubpelUpsample(c, 2),
        )
        self.prior_head = nn.Sequential(act(), conv(config.hyper_channels, 2 * m, 1))
        init_variance_preserving(self)
        if config.block_skeleton:
            zero_last_convolution(self.encoder)
            zero_last_convolution(self.decoder)
            start_prior_flat(self.prior_head)

    def _analysis(self, x: Tensor, cond: Any) -> Tensor:
        y = self.encoder(x / self.config.flow_scale)
        if not self.config.block_skeleton:
            return y
        block_flow = F.avg_pool2d(x / self.config.flow_scale, MOTION_STRIDE) * self.config.block_gain
        return y + F.pad(block_flow, (0, 0, 0, 0, 0, y.shape[1] - 2))

    def _prior(self, hyper: Tensor, cond: Any, q_enc: Tensor) -> tuple[Tensor, Tensor]:
        means, scales = self.prior_head(hyper).chunk(2, dim=1)
        return means, scales

    def _synthesis(self, y_deq: Tensor, cond: Any) -> Tensor:
        flow = self.decoder(y_deq)
        if self.config.block_skeleton:
            block_flow = y_deq[:, :2] / self.config.block_gain
            flow = flow + F.interpolate(block_flow, scale_factor=MOTION_STRIDE, mode="bilinear", align_corners=False)
        return (flow * self.config.flow_scale).float().contiguous()

    @staticmethod
    def _check_size(size_hw: Sequence[int]) -> tuple[int, int]:
        h, w = (int(s) for s in size_hw)
        if h <= 0 or w <= 0 or h % HYPER_STRIDE or w % HYPER_STRIDE:
            raise ValueError(f"flow size {h}x{w} must be positive multiples of {HYPER_STRIDE} (frames are padded)")
        return h, w

    @property
    def input_stride(self) -> int:
        return MOTION_STRIDE

    def forward(
        self, flow: Tensor, qp: int | Sequence[int] | Tensor, valid_hw: Sequence[int] | None = None
    ) -> CodingOutput:
        """flow [N, 2, H, W] -> CodingOutput(hat=flow_hat, likelihoods {"y", "z"}); training mode adds uniform
        noise, evaluation mode rounds (and equals `compress`'s flow_hat bit for bit). valid_hw: the picture's
        size in pixels (the rest is padding, not coded), None for all of it."""
        self._check_size(flow.shape[-2:])
        coded = self._run(
            flow, None, qp_batch(qp, flow.shape[0], flow.device), training=self.training, valid_hw=valid_hw
        )
        return CodingOutput(coded.out, coded.likelihoods)

    @torch.no_grad()
    def segments(
        self, flow: Tensor, qp: int | Sequence[int] | Tensor, valid_hw: Sequence[int] | None = None
    ) -> tuple[list[Segment], CodingOutput]:
        """-> ([z, y]: segments of the frame's string for `entropy.encode_segments`, CodingOutput(hat=flow_hat
        [N, 2, H, W] float32, evaluation-mode likelihoods)): flow_hat is the flow the decoder will have, bit for
        bit."""
        self._check_size(flow.shape[-2:])
        segments, coded = self._segments(flow, None, qp_batch(qp, flow.shape[0], flow.device), valid_hw)
        return segments, CodingOutput(coded.out, coded.likelihoods)

    @torch.no_grad()
    def compress(
        self, flow: Tensor, qp: int | Sequence[int] | Tensor, valid_hw: Sequence[int] | None = None
    ) -> tuple[list[bytes], CodingOutput]:
        """-> ([one string: z then y], CodingOutput as `segments`)."""
        segments, out = self.segments(flow, qp, valid_hw)
        return [self.entropy_encode(segments)], out

    @torch.no_grad()
    def read(
        self,
        reader: SegmentReader,
        size_hw: Sequence[int],
        qp: int | Sequence[int] | Tensor,
        valid_hw: Sequence[int] | None = None,
    ) -> Tensor:
        """Invert `segments`, reading z and y from `reader`, for frames of size_hw (batch size = number of QPs):
        flow_hat [N, 2, H, W] float32. BitstreamError if the string is damaged."""
        h, w = self._check_size(size_hw)
        qp = qp_batch(qp, 1 if isinstance(qp, int) else len(qp), self.qp_scales.log_enc.device)
        y_shape = (qp.numel(), self.y_channels, h // MOTION_STRIDE, w // MOTION_STRIDE)
        _, flow_hat = self._read(reader, None, qp, y_shape, valid_hw)
        return flow_hat

    @torch.no_grad()
    def decompress(
        self,
        strings: Sequence[bytes],
        size_hw: Sequence[int],
        qp: int | Sequence[int] | Tensor,
        valid_hw: Sequence[int] | None = None,
    ) -> Tensor:
        """Invert `compress` (one string), as `read`. BitstreamError if the strings are damaged."""
        return read_one_string(strings, type(self).__name__, self.read, size_hw, qp, valid_hw)
