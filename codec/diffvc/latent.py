"""The latent space DiffVC codes and denoises in: one interface, two implementations (DESIGN.md section 3).

* `VAELatent` (preset `full`): Stable Diffusion 2.1-base's `AutoencoderKL` (4 channels, 1/8 resolution, scaling
  factor 0.18215), as in the paper.
* `PixelUnshuffleLatent` (preset `tiny`): `PixelUnshuffle(8)` of the frame mapped to [-1, 1]: 192 channels at 1/8
  resolution, lossless and free (the choice of the same authors' successor, DiffVC-RT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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
    """Stable Diffusion 2.1-base's KL autoencoder (Rombach et al. 2022); the posterior mean is the latent."""

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
        return self.vae.encode(frames * 2 - 1).latent_dist.mean * self.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(latents / self.config.scaling_factor).sample + 1) / 2).clamp(0, 1)


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
