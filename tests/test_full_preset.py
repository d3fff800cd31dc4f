"""The `full` preset (the paper's scale) built from its config alone: parameter counts against SD-2.1-base."""

from __future__ import annotations

import pytest
import torch

from codec.diffvc.config import full_config
from codec.diffvc.model import DiffVCModel

SD21_BASE_UNET_PARAMS = 865_910_724
SD21_VAE_PARAMS = 83_653_863


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.slow
def test_full_preset_from_config_has_sd21_base_sizes():
    model = DiffVCModel(full_config())  # random init: about 5.3 GB of float32 on the CPU
    assert _count(model.diffusion.unet) == SD21_BASE_UNET_PARAMS
    assert _count(model.latent_space.vae) == SD21_VAE_PARAMS
    assert 355e6 < _count(model.diffusion.controlnet) < 375e6
    assert model.latent_space.channels == 4 and model.config.diffusion.cross_attention_dim == 1024
    # one small forward of the latent space and the denoiser (64x64 frame -> 8x8 latent)
    with torch.no_grad():
        latent = model.latent_space.encode(torch.rand(1, 3, 64, 64))
        condition = torch.cat([latent, torch.zeros(1, model.config.context.channels[0], 8, 8)], 1)
        tokens = model.diffusion.qp_prompt(torch.tensor([32]))
        eps = model.diffusion.predict_noise(latent, torch.tensor(500), condition, tokens)
    assert latent.shape == (1, 4, 8, 8) and eps.shape == latent.shape and torch.isfinite(eps).all()
