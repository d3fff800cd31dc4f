"""Stand-ins for Stable Diffusion 2.1-base (3.5 GB, not here): diffusers folders as `save_pretrained` writes SD's, of
the same classes (`AutoencoderKL`, `UNet2DConditionModel`) at small widths.

* `write_sd_base` writes a base folder (vae/, unet/, model_index.json) from models or configs.
* `SD_STYLE_UNET`: a U-Net laid out as SD-2.1's (cross-attention in every level but the coarsest, linear
  projections, one QP-token width) at 1/10 to 1/20 of its widths.
* `near_linear_vae`: an SD-style `AutoencoderKL` (four levels, factor 8, 4 latent channels) whose weights are set
  so that it is an 8x8 average pool and a bilinear upsampling back (to float32 rounding). A random VAE's decoder
  shows nothing of the frames, so a codec or a diffusion stage trained on it would have little to learn; this one
  gives a latent space that means something without training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

SD_STYLE_UNET: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=32,
    norm_num_groups=8,
    use_linear_projection=True,
)


def write_sd_base(
    folder: Path, vae: AutoencoderKL | None = None, unet: UNet2DConditionModel | dict | None = None
) -> Path:
    """A diffusers base folder holding `vae` and `unet` (a model, or a config to build one with the current torch
    seed); returns `folder`."""
    if vae is not None:
        vae.save_pretrained(folder / "vae")
    if unet is not None:
        (unet if isinstance(unet, UNet2DConditionModel) else UNet2DConditionModel(**unet)).save_pretrained(
            folder / "unet"
        )
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def near_linear_vae(width: int = 16, scaling_factor: float = 3.0, constant: float = 100.0) -> AutoencoderKL:
    """An `AutoencoderKL` of SD's layout (four levels of `layers_per_block=1`, a mid block with attention) with
    latent = the 8x8 average of the frame in [-1, 1] (RGB in channels 0-2, channel 3 zero) and decode = three
    bilinear x2 upsamplings of it (each a nearest x2 and a [1 2 1] / 4 convolution, whose zero padding dims the
    outermost rows and columns). `scaling_factor` makes the latents about unit-variance on smooth photos, as SD's
    0.18215 does for its own.

    How: every residual branch is zeroed (resnets' second convolution, attention's output projection), so the
    blocks pass their input on; the down- and upsampling convolutions average or copy; conv_in spreads each input
    channel x over a group of four channels (x, -x, K, -K). The group's mean is then 0 and its deviation K / sqrt(2)
    (to 5e-5 for K = 100), so the GroupNorm before conv_out only scales, and conv_out takes
    SiLU(u) - SiLU(-u) = u, undoing the SiLU exactly."""
    if width % 4 or width < 16:
        raise ValueError("width must be a multiple of 4, at least 16 (four channels for each of three inputs)")
    vae = AutoencoderKL(
        block_out_channels=(width,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=width // 4,
        scaling_factor=scaling_factor,
    )

    def spread(conv: torch.nn.Conv2d, inputs: int) -> None:  # input i -> (x, -x, K, -K) in channels 4i .. 4i + 3
        for i in range(inputs):
            conv.weight[4 * i, i, 1, 1], conv.weight[4 * i + 1, i, 1, 1] = 1.0, -1.0
            conv.bias[4 * i + 2], conv.bias[4 * i + 3] = constant, -constant

    def gather(conv: torch.nn.Conv2d, outputs: int) -> None:  # (SiLU(u) - SiLU(-u)) * K / sqrt(2) = x
        gain = constant / math.sqrt(2)
        for i in range(outputs):
            conv.weight[i, 4 * i, 1, 1], conv.weight[i, 4 * i + 1, 1, 1] = gain, -gain

    def identity(conv: torch.nn.Conv2d) -> None:
        for c in range(conv.out_channels):
            conv.weight[c, c, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0

    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
        spread(vae.encoder.conv_in, 3)
        for block in vae.encoder.down_blocks:
            for down in block.downsamplers or []:  # stride 2, padded after: taps 0..1 of each 2x2 window
                for c in range(width):
                    down.conv.weight[c, c, :2, :2] = 0.25
        gather(vae.encoder.conv_out, 3)  # the posterior's mean; its log-variance is 0
        identity(vae.quant_conv)
        identity(vae.post_quant_conv)
        spread(vae.decoder.conv_in, 3)
        taps = torch.tensor([0.25, 0.5, 0.25])
        for block in vae.decoder.up_blocks:
            for up in block.upsamplers or []:  # nearest x2, then this: bilinear x2 (zero-padded at the edges)
                for c in range(width):
                    up.conv.weight[c, c] = taps[:, None] * taps[None, :]
        gather(vae.decoder.conv_out, 3)
    return vae


def small_full_pack(folder: Path, steps: int = 10, strength: float = 0.4) -> Path:
    """A `full`-preset pack at a size a CPU test can run: the paper-scale codec parts (SpyNet, MV codec, contexts,
    latent codecs) over `near_linear_vae` (an SD-style VAE, found through the pack's `vae_path`) and a small
    SD-style U-Net + ControlNet (random weights); written to folder/pack beside its base folder/base."""
    from dataclasses import replace

    from codec.diffvc.config import full_config
    from codec.diffvc.diffusion import tiny_diffusion_config
    from codec.diffvc.latent import LatentSpaceConfig
    from codec.diffvc.model import DiffVCModel
    from codec.diffvc.pack import write_pack

    base = write_sd_base(folder / "base", near_linear_vae())
    config = full_config()
    diffusion = tiny_diffusion_config(
        latent_channels=4, context_channels=config.context.channels[0], block_out_channels=(32, 64),
        cross_attention_dim=32, anchor="none", anchor_filter=False, anchor_gain=False, norm_num_groups=8,
        head_channels=8, steps=steps, strength=strength,
    )  # fmt: skip
    latent = LatentSpaceConfig(kind="sd_vae", vae_path=str(base), scaling_factor=3.0)
    model, _ = DiffVCModel.random(replace(config, latent_space=latent, diffusion=diffusion), seed=0)
    return write_pack(folder / "pack", model.config.to_dict(), model.trainable_state(), "# test pack\n").path
