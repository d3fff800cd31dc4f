"""Stable Diffusion bases found where users keep them, loaded strictly where it matters, named (not pathed) in packs.

A scaled-down base of the same classes (diffusers' AutoencoderKL and UNet2DConditionModel, written by
`save_pretrained` with random weights: `sd_bases.write_sd_base`) stands in for SD-2.1-base, which is 3.5 GB.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from sd_bases import write_sd_base

from codec.diffvc.config import full_config
from codec.diffvc.diffusion import DiffusionStage, tiny_diffusion_config
from codec.diffvc.latent import LatentSpaceConfig, VAELatent
from codec.diffvc.sd_base import BASE_ENV, SD21_BASE, find_base, state_sha256
from codec.errors import CodecError

SMALL_UNET = tiny_diffusion_config(
    latent_channels=4, context_channels=8, block_out_channels=(32, 32), cross_attention_dim=32, anchor="none",
    anchor_filter=False, norm_num_groups=8, head_channels=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A diffusers folder as `save_pretrained` writes SD-2.1-base's, at a small size and with random weights; its
    U-Net's nominal sample size differs from the config's (an inert setting)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=32,
    )
    unet = {**SMALL_UNET.unet_kwargs(), "sample_size": 96}
    return write_sd_base(tmp_path_factory.mktemp("sd") / "stable-diffusion-2-1-base", vae, unet)


@pytest.fixture
def no_base_around(tmp_path, monkeypatch):
    """Nothing in the environment or the caches: only what a test puts there is found."""
    monkeypatch.delenv(BASE_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")


def test_a_base_is_found_as_a_folder_by_its_variable_and_in_the_hub_cache(base, tmp_path, monkeypatch, no_base_around):
    assert find_base(base) == base
    with pytest.raises(CodecError, match=f"not found.*{BASE_ENV}"):
        find_base(SD21_BASE)
    snapshot = tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base" / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(base, target_is_directory=True)
    assert find_base(SD21_BASE) == snapshot
    monkeypatch.setenv(BASE_ENV, str(base))
    assert find_base(SD21_BASE) == base  # the variable comes before the cache


def test_a_pack_names_its_base_and_refuses_one_with_other_weights(base, monkeypatch, no_base_around):
    monkeypatch.setenv(BASE_ENV, str(base))
    expected = AutoencoderKL.from_pretrained(base, subfolder="vae")
    digest = state_sha256(expected)
    config = LatentSpaceConfig(kind="sd_vae", base_model=SD21_BASE, vae_sha256=digest)
    latent = VAELatent(config)
    assert state_sha256(latent.vae) == digest
    frames = torch.rand(1, 3, 16, 16)
    assert torch.equal(latent.encode(frames), VAELatent(config, vae=expected).encode(frames))
    with pytest.raises(CodecError, match="would not decode"):
        VAELatent(replace(config, vae_sha256="0" * 64))
    written = json.dumps(full_config(SD21_BASE, digest).to_dict()["latent_space"])
    assert str(base) not in written and SD21_BASE in written and digest in written  # a name and a hash, no path


def test_the_unet_loads_tolerating_inert_settings_and_refusing_real_differences(base, tmp_path):
    stage = DiffusionStage.from_config(SMALL_UNET).load_sd_unet(base)
    saved = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in stage.unet.state_dict().items())
    assert torch.equal(stage.controlnet.conv_in.weight, saved.conv_in.weight)  # the ControlNet copies the U-Net
    other = write_sd_base(tmp_path / "other", unet={**SMALL_UNET.unet_kwargs(), "cross_attention_dim": 16})
    with pytest.raises(CodecError, match="cross_attention_dim"):
        DiffusionStage.from_config(SMALL_UNET).load_sd_unet(other)


@pytest.fixture(scope="module")
def sd21_shaped_vae(tmp_path_factory) -> tuple[Path, Path]:
    """Two bases holding a VAE of SD-2.1-base's own configuration (random weights, two seeds)."""
    from codec.diffvc.latent import SD21_VAE_CONFIG

    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folders.append(write_sd_base(tmp_path_factory.mktemp(f"sd21-{seed}"), AutoencoderKL(**SD21_VAE_CONFIG)))
    return folders[0], folders[1]


def test_a_full_pack_codes_exactly_on_its_base_and_refuses_another(sd21_shaped_vae, tmp_path, monkeypatch):
    """The `full` preset end to end on the CPU: SD-2.1's VAE found through $DIFFVC_SD_BASE, the paper's codec parts
    and a scaled-down SD-style U-Net; the decoder reproduces the encoder's frames to the bit; the same stream on a
    machine whose base has other weights is refused, not decoded to garbage."""
    import numpy as np

    from codec.diffvc.codec import load_model
    from codec.diffvc.model import DiffVCModel
    from codec.diffvc.pack import write_pack
    from codec.registry import get_codec
    from codec.video import synthetic_clip

    ours, other = sd21_shaped_vae
    monkeypatch.setenv(BASE_ENV, str(ours))
    digest = state_sha256(AutoencoderKL.from_pretrained(ours, subfolder="vae"))
    config = full_config(SD21_BASE, digest)
    diffusion = tiny_diffusion_config(
        latent_channels=4, context_channels=config.context.channels[0], block_out_channels=(32, 64),
        cross_attention_dim=32, anchor="none", norm_num_groups=8, head_channels=8, steps=10, strength=0.4,
    )  # fmt: skip
    model, _ = DiffVCModel.random(replace(config, diffusion=diffusion), seed=0)
    pack = write_pack(tmp_path / "full-pack", model.config.to_dict(), model.trainable_state(), "# test\n").path
    assert str(ours) not in (pack / "config.json").read_text()
    codec = get_codec(f"diffvc:pack={pack}:intra=learned")
    encoded = codec.encode(synthetic_clip(frames=2, height=64, width=64, seed=1), 32)
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)
    monkeypatch.setenv(BASE_ENV, str(other))
    load_model.cache_clear()  # as another process (another machine) would load the pack
    with pytest.raises(CodecError, match="would not decode"):
        get_codec(f"diffvc:pack={pack}:intra=learned").decode(encoded.bitstream)


@pytest.mark.slow
def test_full_codes_exactly_from_an_sd21_shaped_folder(tmp_path, monkeypatch):
    """Issue [2.5]'s first target: `full` at its real size, from a folder laid out and configured as
    SD-2.1-base's (VAE and U-Net of its configurations, random weights, `save_pretrained`), through the training
    CLI's start (`full_model_from_base`): a pack that names the base codes 2 frames of 128x128 and decodes exactly.
    About 5 GB of memory per model copy and several minutes on a CPU."""
    import numpy as np

    from codec.diffvc.codec import load_model
    from codec.diffvc.diffusion import full_diffusion_config
    from codec.diffvc.latent import SD21_VAE_CONFIG
    from codec.diffvc.pack import write_pack
    from codec.registry import get_codec
    from codec.train.cli import full_model_from_base
    from codec.video import synthetic_clip

    torch.manual_seed(0)
    base = write_sd_base(
        tmp_path / "stable-diffusion-2-1-base", AutoencoderKL(**SD21_VAE_CONFIG), full_diffusion_config().unet_kwargs()
    )
    monkeypatch.delenv(BASE_ENV, raising=False)
    model = full_model_from_base(str(base))
    assert model.config.latent_space.base_model == SD21_BASE and model.config.latent_space.vae_sha256
    model.update_entropy_models()  # as a training run does before it writes a pack
    pack = write_pack(tmp_path / "full", model.config.to_dict(), model.trainable_state(), "# test\n").path
    del model
    load_model.cache_clear()
    codec = get_codec(f"diffvc:pack={pack}:intra=learned:steps=4")
    encoded = codec.encode(synthetic_clip(frames=2, height=128, width=128, seed=1), 32)
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)
