"""The latent space DiffVC codes and denoises in: one interface, two implementations (DESIGN.md section 3).

* `VAELatent` (preset `full`): Stable Diffusion 2.1-base's `AutoencoderKL` (4 channels, 1/8 resolution, scaling
  factor 0.18215), as in the paper.
* `PixelUnshuffleLatent` (preset `tiny`): `PixelUnshuffle(8)` of the frame mapped to [-1, 1]: 192 channels at 1/8
  resolution, lossless and free (the choice of the same authors' successor, DiffVC-RT).

Large frames go through the VAE in overlapping tiles (`VAE_TILING`, `tiled_map`) when a stream says so
(`vae_tiling`): the VAE's memory then stays that of one tile whatever the frame's size.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from codec.scoped import scoped

SD21_VAE_CONFIG = {  # stabilityai/stable-diffusion-2-1-base, vae/config.json
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "sample_size": 768,
    "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512],
    "norm_num_groups": 32,
    "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}


@dataclass(frozen=True)
class TileGrid:
    """Overlapping square tiles, in latent elements: `tile` per side, neighbours sharing at least `overlap`.

    Along a side of L elements the tiles start at 0, tile - overlap, 2 (tile - overlap), ..., and the last one at
    L - tile, so every tile has the full size (the last overlap may be wider); a side of at most `tile` is one tile.
    """

    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile {self.tile}, overlap {self.overlap}")

    def starts(self, length: int) -> list[int]:
        if length <= self.tile:
            return [0]
        return [*range(0, length - self.tile, self.tile - self.overlap), length - self.tile]


# Part of the decoding of every stream that sets FLAG_VAE_TILED: changing it changes what such streams decode to
# (a new flag bit, not an edit). 96 latent elements (768 pixels) with 24 shared (192): the geometry diffusers'
# `AutoencoderKL.enable_tiling()` gives SD-2.1's VAE (its sample_size 768, overlap factor 0.25).
VAE_TILING = TileGrid(tile=96, overlap=24)
TILE_ABOVE_PIXELS = (
    1280 * 720
)  # the encoder tiles pictures of more pixels (1080p; `codec.diffvc.codec.uses_vae_tiling`)

_ACTIVE_TILING: contextvars.ContextVar[TileGrid | None] = contextvars.ContextVar("vae_tiling", default=None)


def vae_tiling(grid: TileGrid | None) -> contextlib.AbstractContextManager[TileGrid | None]:
    """Run a VAE latent space's encode and decode in `grid`'s tiles inside the block (None: whole frames), as
    `torch.autocast` sets a precision: the codec wraps a whole stream's coding in it, so every VAE call of the
    encoder and of the decoder (frames, references, an HEVC I-frame's latent) is tiled alike."""
    return scoped(_ACTIVE_TILING, grid)


def tiled_map(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: TileGrid, in_unit: int, out_unit: int
) -> torch.Tensor:
    """fn applied to overlapping tiles of x [N, C, H, W], the outputs blended into [N, C', H / in_unit * out_unit,
    W / in_unit * out_unit]. The grid counts latent elements; in_unit and out_unit are the elements of x and of
    fn's output per latent element: (8, 1) to encode frames, (1, 8) to decode latents (H, W multiples of in_unit).

    Each tile's output is weighted by a ramp over `overlap` latent elements next to each neighbouring tile (1
    elsewhere, never 0), and the sum is divided by the summed weights: smooth seams, and exactly fn(x) when x is
    one tile. The sums run in a fixed order, so the result is the same on every run on a device."""
    lh, lw = x.shape[-2] // in_unit, x.shape[-1] // in_unit
    rows, cols = grid.starts(lh), grid.starts(lw)
    size = min(grid.tile, lh), min(grid.tile, lw)
    out = weights = None
    for r in rows:
        for c in cols:
            tile = fn(x[..., r * in_unit : (r + size[0]) * in_unit, c * in_unit : (c + size[1]) * in_unit])
            if out is None:
                out = tile.new_zeros((*tile.shape[:2], lh * out_unit, lw * out_unit))
                weights = tile.new_zeros((lh * out_unit, lw * out_unit))
            w = _ramp(size[0] * out_unit, grid.overlap * out_unit, r > 0, r < rows[-1], tile)[:, None] * _ramp(
                size[1] * out_unit, grid.overlap * out_unit, c > 0, c < cols[-1], tile
            )
            window = (slice(r * out_unit, (r + size[0]) * out_unit), slice(c * out_unit, (c + size[1]) * out_unit))
            out[(..., *window)] += tile * w
            weights[window] += w
    return out / weights


def _ramp(length: int, width: int, rise: bool, fall: bool, like: torch.Tensor) -> torch.Tensor:
    """[length] weights: (i + 0.5) / width over the first `width` elements if `rise`, the mirror at the end if
    `fall`, 1 elsewhere."""
    i = torch.arange(length, device=like.device, dtype=like.dtype)
    w = torch.ones_like(i)
    if rise and width:
        w = torch.minimum(w, (i + 0.5) / width)
    if fall and width:
        w = torch.minimum(w, (length - i - 0.5) / width)
    return w


@dataclass(frozen=True)
class LatentSpaceConfig:
    """kind: 'pixel_unshuffle' (tiny) or 'sd_vae' (full).

    For 'sd_vae': base_model names the Stable Diffusion base whose VAE this is (a Hugging Face id, found on each
    machine by `codec.diffvc.sd_base.find_base`), vae_sha256 the hash of the VAE weights the pack was trained with
    (a pack refuses a base with other weights). vae_path is the first packs' explicit folder, still read; packs
    written now leave it None, so they carry no machine's path. None of the three: a random-init VAE (tests)."""

    kind: Literal["pixel_unshuffle", "sd_vae"] = "pixel_unshuffle"
    factor: int = 8
    vae_path: str | None = None
    scaling_factor: float = 0.18215
    base_model: str | None = None
    vae_sha256: str | None = None

    @property
    def channels(self) -> int:
        return 3 * self.factor**2 if self.kind == "pixel_unshuffle" else SD21_VAE_CONFIG["latent_channels"]

    def to_dict(self) -> dict:
        return asdict(self)


class LatentSpace(nn.Module):
    """frames [N, 3, H, W] in [0, 1] (H, W multiples of 8) <-> latents [N, C, H/8, W/8]."""

    config: LatentSpaceConfig
    tileable = False  # whether the space changes its results when tiled (`vae_tiling`): only a network does

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def factor(self) -> int:
        return self.config.factor

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelUnshuffleLatent(LatentSpace):
    """Lossless space-to-depth: latent values are pixel values mapped to [-1, 1] (DiffVC-RT, Ma & Chen 2025)."""

    def __init__(self, config: LatentSpaceConfig) -> None:
        super().__init__()
        self.config = config

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(frames * 2 - 1, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((F.pixel_shuffle(latents, self.factor) + 1) / 2).clamp(0, 1)


class VAELatent(LatentSpace):
    """Stable Diffusion 2.1-base's KL autoencoder (Rombach et al. 2022); the posterior mean is the latent. Inside
    `vae_tiling(grid)` frames and latents go through it in `grid`'s overlapping tiles (`tiled_map`)."""

    tileable = True

    def __init__(self, config: LatentSpaceConfig, vae: nn.Module | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.config = config
        if vae is None:
            folder = self.base_folder(config)
            if folder is None:
                vae = AutoencoderKL(**{k: v for k, v in SD21_VAE_CONFIG.items()})
            else:
                from codec.diffvc.sd_base import check_base_weights, load_part

                vae = load_part(folder, AutoencoderKL, "vae")
                check_base_weights(vae, config.vae_sha256, folder)
        self.vae = vae
        self.vae.requires_grad_(False)

    @staticmethod
    def base_folder(config: LatentSpaceConfig) -> Path | None:
        """The diffusers folder the VAE loads from: the legacy explicit path, else the named base found here."""
        if config.vae_path:
            return Path(config.vae_path)
        if config.base_model:
            from codec.diffvc.sd_base import find_base

            return find_base(config.base_model)
        return None

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        grid, x = _ACTIVE_TILING.get(), frames * 2 - 1
        mean = self._encode_mean(x) if grid is None else tiled_map(self._encode_mean, x, grid, self.factor, 1)
        return mean * self.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        grid, z = _ACTIVE_TILING.get(), latents / self.config.scaling_factor
        x = self._decode_sample(z) if grid is None else tiled_map(self._decode_sample, z, grid, 1, self.factor)
        return ((x + 1) / 2).clamp(0, 1)

    def _encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean

    def _decode_sample(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


def unsharp_mask(frames: torch.Tensor, amount: float) -> torch.Tensor:
    """frames + amount * (frames - blur(frames)), unclamped; frames [N, C, H, W]. The blur is the 5-tap binomial
    filter [1 4 6 4 1] / 16 in each direction, edges replicated."""
    taps = frames.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    kernel = (taps[:, None] * taps[None, :]).expand(frames.shape[1], 1, 5, 5)
    blurred = F.conv2d(F.pad(frames, (2, 2, 2, 2), mode="replicate"), kernel, groups=frames.shape[1])
    return frames + amount * (frames - blurred)


def pixel_unshuffle_kernel(pixel_filter, factor: int = 8, channels: int = 3) -> torch.Tensor:
    """The 3x3 convolution [C*f*f, C*f*f, 3, 3] over a PixelUnshuffle(f) latent that applies the linear, shift-
    invariant pixel-space `pixel_filter` (frames [N, C, H, W] -> same), when that filter reaches at most f pixels
    out. Found by filtering each latent impulse: column (c, 1, 1) of the kernel is the latent of the filtered
    picture of a one-hot latent at the centre of a 3x3 grid of blocks."""
    size = channels * factor * factor
    impulses = torch.zeros(size, size, 3, 3, dtype=torch.float64)
    impulses[torch.arange(size), torch.arange(size), 1, 1] = 1.0
    response = F.pixel_unshuffle(pixel_filter(F.pixel_shuffle(impulses, factor)), factor)  # [in, out, 3, 3]
    # conv2d is a cross-correlation: out[o, y, x] = sum W[o, c, i, j] in[c, y + i - 1, x + j - 1], so an impulse
    # at (c, 1, 1) gives out[o, y, x] = W[o, c, 2 - y, 2 - x]
    return response.flip(-1, -2).transpose(0, 1).float().contiguous()


def build_latent_space(config: LatentSpaceConfig) -> LatentSpace:
    return PixelUnshuffleLatent(config) if config.kind == "pixel_unshuffle" else VAELatent(config)
