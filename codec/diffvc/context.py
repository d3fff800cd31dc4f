"""Temporal contexts of DiffVC's P-frames, in the style of DCVC-DC.

Source: Li et al., "Neural Video Compression with Diverse Contexts" (DCVC-DC, CVPR 2023): features of the reference
are extracted at several scales, each is warped with the decoded flow resampled to its scale, and a top-down
fusion ("MultiScaleContextFusion") turns them into contexts C1, C2, C3 that condition the contextual encoder, the
decoder and the entropy model. DCVC-DC's scales are 1, 1/2 and 1/4 of the frame; DiffVC codes a latent at 1/8, so
ours are 1/8 (C1, the latent's resolution, which also guides the diffusion stage), 1/16 (C2) and 1/32 (C3).

The reference comes from the decoded-picture buffer (DPB): the previous decoded frame (pixels) and the feature the
latent decoder output for it. When no feature is there (e.g. the I-frame came from a classical codec), the
feature is derived from the pixels (DCVC-DC's `feature_adaptor_I`). Optionally (default on) the frame itself is
warped at full resolution and space-to-depth'ed to 1/8, giving C1 a sharp motion-compensated prediction; for the
tiny preset's PixelUnshuffle latent that is exactly the latent of the warped frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from codec.diffvc.layers import ResidualBlock, SubpelUpsample, act, config_from_dict, conv
from codec.diffvc.warp import INTERPOLATIONS, resize_flow, warp

__all__ = ["Contexts", "TemporalContext", "TemporalContextConfig", "add_prediction"]

LATENT_FACTOR = 8  # the latent (and C1) is at 1/8 of the frame


@dataclass
class Contexts:
    """Multi-scale temporal contexts for a frame of size H x W (multiples of 32).

    c1: [N, c1, H/8, W/8] (the latent's resolution); c2: [N, c2, H/16, W/16]; c3: [N, c3, H/32, W/32].
    warped_frame: the reference warped with the decoded flow [N, 3, H, W] in [0, 1] (None without
    `use_warped_frame`); prediction: its latent [N, C, H/8, W/8], the motion-compensated prediction of the current
    latent, set by `DiffVCModel.temporal_contexts` for codecs that code the residual against it.
    """

    c1: Tensor
    c2: Tensor
    c3: Tensor
    warped_frame: Tensor | None = None
    prediction: Tensor | None = None


@dataclass(frozen=True)
class TemporalContextConfig:
    """feature_channels (F): channels of the DPB feature (the latent decoder's `feature_channels`);
    channels: widths of C1, C2, C3; use_warped_frame: add the warped frame, PixelUnshuffle(8)'ed, to C1;
    frame_interpolation: how the reference frame (pixels) is warped, the motion-compensated prediction (`warp`'s
    bilinear or bicubic; docs/RESULTS.md, "Bicubic motion compensation"). The features are warped bilinearly."""

    feature_channels: int = 64
    channels: tuple[int, int, int] = (64, 64, 96)
    use_warped_frame: bool = True
    frame_interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or min(self.feature_channels, *self.channels) < 1:
            raise ValueError(f"TemporalContextConfig needs a positive feature width and 3 positive widths: {self}")
        if self.frame_interpolation not in INTERPOLATIONS:
            raise ValueError(f"frame_interpolation must be one of {INTERPOLATIONS}, got {self.frame_interpolation!r}")

    @classmethod
    def tiny(cls) -> TemporalContextConfig:
        """[I] For a 2-core CPU: C1/C2/C3 of 64/64/96 channels (C1 = the tiny diffusion's context_channels)."""
        return cls()

    @classmethod
    def full(cls) -> TemporalContextConfig:
        """[I] Wider C2, C3 (64/128/192); C1 stays 64, the full diffusion config's context_channels."""
        return cls(channels=(64, 128, 192))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemporalContextConfig:
        return config_from_dict(cls, data)


class TemporalContext(nn.Module):
    """(reference frame, DPB feature or None, decoded flow) -> Contexts(C1, C2, C3) (DCVC-DC style).

    1. f = feature_adaptor(feature) [N, c1, H/8, W/8], or frame_adaptor(PixelUnshuffle8(frame)) without a feature;
    2. features at 1/8, 1/16, 1/32 (conv + residual blocks, stride 2 between scales);
    3. each warped with the decoded flow resized to its scale (`warp.resize_flow`);
    4. (optional) C1 gets PixelUnshuffle8(warp(frame, flow)) through a convolution;
    5. top-down fusion: C3 -> up -> with C2 -> up -> with C1, each scale refined by a residual.
    """

    def __init__(self, config: TemporalContextConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TemporalContextConfig()
        c1, c2, c3 = config.channels
        unshuffled = 3 * LATENT_FACTOR**2
        self.frame_adaptor = nn.Sequential(nn.PixelUnshuffle(LATENT_FACTOR), conv(unshuffled, c1))
        self.feature_adaptor = conv(config.feature_channels, c1, 1)
        self.extract1 = ResidualBlock(c1)
        self.extract2 = nn.Sequential(conv(c1, c2, stride=2), ResidualBlock(c2))
        self.extract3 = nn.Sequential(conv(c2, c3, stride=2), ResidualBlock(c3))
        self.warped_frame = (
            nn.Sequential(nn.PixelUnshuffle(LATENT_FACTOR), conv(unshuffled, c1), act())
            if config.use_warped_frame
            else None
        )
        merge1 = 2 * c1 if config.use_warped_frame else c1
        # Fusion (DCVC-DC's MultiScaleContextFusion): coarse to fine.
        self.up3 = nn.Sequential(SubpelUpsample(c3, c2), ResidualBlock(c2))
        self.out3 = nn.Sequential(conv(c3, c3), ResidualBlock(c3))
        self.up2 = nn.Sequential(SubpelUpsample(2 * c2, c1), ResidualBlock(c1))
        self.out2 = nn.Sequential(conv(2 * c2, c2), ResidualBlock(c2))
        self.out1 = nn.Sequential(conv(c1 + merge1, c1), ResidualBlock(c1))

    def forward(self, frame: Tensor, feature: Tensor | None, flow: Tensor) -> Contexts:
        """frame [N, 3, H, W] in [0, 1] (H, W multiples of 32), feature [N, F, H/8, W/8] or None, flow
        [N, 2, H, W] in pixels (the *decoded* flow) -> Contexts at 1/8, 1/16, 1/32 of the frame."""
        n, _, h, w = frame.shape
        if h % 32 or w % 32:
            raise ValueError(f"frame size {h}x{w} must be a multiple of 32 (frames are padded to 64)")
        if tuple(flow.shape) != (n, 2, h, w):
            raise ValueError(f"flow has shape {tuple(flow.shape)}, expected {(n, 2, h, w)}")
        if feature is None:
            base = self.frame_adaptor(frame)
        else:
            expected = (n, self.config.feature_channels, h // LATENT_FACTOR, w // LATENT_FACTOR)
            if tuple(feature.shape) != expected:
                raise ValueError(f"DPB feature has shape {tuple(feature.shape)}, expected {expected}")
            base = self.feature_adaptor(feature)
        f1 = self.extract1(base)
        f2 = self.extract2(f1)
        f3 = self.extract3(f2)
        f1, f2, f3 = (warp(f, resize_flow(flow, f.shape[-2:])) for f in (f1, f2, f3))
        if self.warped_frame is None:
            return self._fuse(f1, f2, f3, None)
        warped = warp_frame(frame, flow, self.config.frame_interpolation)
        contexts = self._fuse(f1, f2, f3, self.warped_frame(warped))
        contexts.warped_frame = warped
        return contexts

    def _fuse(self, f1: Tensor, f2: Tensor, f3: Tensor, extra: Tensor | None) -> Contexts:
        """Top-down fusion of the warped features (DCVC-DC's MultiScaleContextFusion); `extra` joins C1."""
        c3 = f3 + self.out3(f3)
        merged2 = torch.cat((self.up3(f3), f2), dim=1)
        c2 = f2 + self.out2(merged2)
        merged1 = [self.up2(merged2), f1] + ([] if extra is None else [extra])
        c1 = f1 + self.out1(torch.cat(merged1, dim=1))
        return Contexts(c1, c2, c3)


def warp_frame(frame: Tensor, flow: Tensor, mode: str) -> Tensor:
    """A frame [N, 3, H, W] in [0, 1] warped with `flow` by `mode`'s interpolation, kept in [0, 1] (bicubic
    overshoots at edges)."""
    warped = warp(frame, flow, mode)
    return warped if mode == "bilinear" else warped.clamp(0.0, 1.0)


def add_prediction(
    contexts: Contexts,
    reference: Tensor,
    flow_hat: Tensor,
    encode_latent: Callable[[Tensor], Tensor],
    mode: str = "bilinear",
) -> Contexts:
    """Set contexts.prediction: the latent of the reference [N, 3, H, W] warped with the decoded flow [N, 2, H, W]
    by `mode`'s interpolation (`encode_latent`: the latent space's encoder), the motion-compensated prediction a
    residual codec codes against. Reuses the warped frame the contexts already hold. Returns `contexts`."""
    warped = contexts.warped_frame if contexts.warped_frame is not None else warp_frame(reference, flow_hat, mode)
    contexts.prediction = encode_latent(warped)
    return contexts
