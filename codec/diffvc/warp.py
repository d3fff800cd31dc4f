"""Backward warping with a dense flow, and resampling a flow to another scale: the one place for both.

Flow convention: flow [N, 2, H, W] in pixels, channel 0 = horizontal (x), channel 1 = vertical (y);
`warp(ref, flow)[p] = ref[p + flow[p]]` (bilinear, border padding), as in SpyNet/DVC/DCVC; or bicubic (Keys'
cubic convolution, a = -0.75), whose sharper response loses less of a picture's detail each time it is resampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _base_grid(n: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=0).unsqueeze(0).expand(n, -1, -1, -1)


INTERPOLATIONS = ("bilinear", "bicubic")


def warp(ref: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """ref [N, C, H, W], flow [N, 2, H, W] (pixels) -> ref sampled at p + flow(p), [N, C, H, W], by `mode`'s
    interpolation (one of INTERPOLATIONS)."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
    n, _, h, w = flow.shape
    coords = _base_grid(n, h, w, flow.device, flow.dtype) + flow
    grid_x = 2 * coords[:, 0] / max(w - 1, 1) - 1
    grid_y = 2 * coords[:, 1] / max(h - 1, 1) - 1
    grid = torch.stack((grid_x, grid_y), dim=-1).to(ref.dtype)
    return F.grid_sample(ref, grid, mode=mode, padding_mode="border", align_corners=True)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """flow [N, 2, H, W] in pixels -> flow [N, 2, h, w] in pixels of the new size (values rescaled)."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return out * scale
