"""Tiled VAE encode and decode (`codec.diffvc.latent.tiled_map`, `FLAG_VAE_TILED`): a stream coded in tiles decodes
exactly, because the stream (not the decoder's own settings) says whether its VAE calls are tiled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sd_bases import near_linear_vae, small_full_pack

from codec.bitstream import read_stream
from codec.diffvc import latent
from codec.diffvc.codec import FLAG_VAE_TILED
from codec.diffvc.latent import LatentSpaceConfig, TileGrid, VAELatent, tiled_map, vae_tiling
from codec.registry import get_codec
from codec.video import synthetic_clip

SMALL_TILES = TileGrid(tile=4, overlap=1)  # 32-pixel tiles: a 64x96 frame is 2 x 3 of them


@pytest.mark.parametrize("length", [1, 4, 5, 7, 8, 12, 13, 240])
@pytest.mark.parametrize("grid", [SMALL_TILES, TileGrid(4, 0), latent.VAE_TILING])
def test_tiles_cover_the_side_at_full_size_with_at_least_the_overlap(grid: TileGrid, length: int):
    starts = grid.starts(length)
    size = min(grid.tile, length)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s and s + size <= length
        covered[s : s + size] = True
    assert covered.all() and starts == sorted(set(starts))
    assert all(b - a <= grid.tile - grid.overlap for a, b in zip(starts, starts[1:]))


def test_tiling_a_pointwise_map_changes_nothing_and_one_tile_is_the_whole():
    """Blending renormalises: a function that tiling cannot change (per element, 8x nearest upsampling) gives the
    untiled result to float rounding; a frame within one tile gives it bit for bit."""
    x = torch.randn(2, 3, 9, 14, generator=torch.Generator().manual_seed(0))

    def fn(t):
        return torch.tanh(F.interpolate(t, scale_factor=8, mode="nearest"))

    tiled = tiled_map(fn, x, SMALL_TILES, 1, 8)
    assert tiled.shape == (2, 3, 72, 112) and torch.allclose(tiled, fn(x), atol=1e-6)
    assert torch.equal(tiled_map(fn, x, TileGrid(16, 4), 1, 8), fn(x))
    frames = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    pooled = tiled_map(lambda t: F.avg_pool2d(t, 8), frames, SMALL_TILES, 8, 1)
    assert torch.allclose(pooled, F.avg_pool2d(frames, 8), atol=1e-6)


def test_a_tiled_vae_stays_close_to_the_whole_one_and_only_inside_the_context():
    """`near_linear_vae` is local (an 8x8 average, bilinear upsampling back), so tiles differ from the whole frame
    only near tile edges (zero padding), and the blend hides most of that."""
    space = VAELatent(LatentSpaceConfig(kind="sd_vae", scaling_factor=3.0), near_linear_vae())
    frames = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    with torch.no_grad():
        whole_latent, whole_frames = space.encode(frames), space.decode(space.encode(frames))
        with vae_tiling(SMALL_TILES):
            tiled_latent = space.encode(frames)
            tiled_frames = space.decode(tiled_latent)
        assert torch.equal(space.encode(frames), whole_latent)  # outside the block: whole frames again
    assert torch.allclose(tiled_latent, whole_latent, atol=1e-4)  # an average pool does not see tile edges
    mse = (tiled_frames - whole_frames).square().mean().item()
    assert 0 < mse and -10 * np.log10(mse) > 40  # 60 dB measured


@pytest.fixture(scope="module")
def full_pack(tmp_path_factory):
    return small_full_pack(tmp_path_factory.mktemp("tiling"))


def test_a_tiled_stream_decodes_exactly_whatever_the_decoder_would_choose(full_pack, monkeypatch):
    """The encoder tiles (here: every frame, in 32-pixel tiles) and says so in the header; the decoder tiles
    because the stream says so, also where its own rule would not tile, and reproduces the encoder's frames."""
    clip = synthetic_clip(frames=3, height=64, width=96, seed=3)
    codec = get_codec(f"diffvc:pack={full_pack}:intra_period=-1")
    monkeypatch.setattr(latent, "VAE_TILING", SMALL_TILES)
    whole = codec.encode(clip, 32)
    monkeypatch.setattr(latent, "TILE_ABOVE_PIXELS", 0)
    tiled = codec.encode(clip, 32)
    assert tiled.params["vae_tiled"] and not whole.params["vae_tiled"]
    assert read_stream(tiled.bitstream)[0].flags & FLAG_VAE_TILED
    assert not read_stream(whole.bitstream)[0].flags & FLAG_VAE_TILED
    assert not np.array_equal(tiled.reconstruction.frames, whole.reconstruction.frames)  # tiling took place
    monkeypatch.setattr(latent, "TILE_ABOVE_PIXELS", 10**9)  # this decoder's encoder would not tile
    assert np.array_equal(codec.decode(tiled.bitstream).frames, tiled.reconstruction.frames)
    assert np.array_equal(codec.decode(whole.bitstream).frames, whole.reconstruction.frames)
    condlc = get_codec(f"condlc:pack={full_pack}:intra_period=-1")
    monkeypatch.setattr(latent, "TILE_ABOVE_PIXELS", 0)
    encoded = condlc.encode(clip, 32)
    assert read_stream(encoded.bitstream)[0].flags & FLAG_VAE_TILED
    assert np.array_equal(condlc.decode(encoded.bitstream).frames, encoded.reconstruction.frames)


def test_the_tiny_preset_never_tiles(monkeypatch):
    """PixelUnshuffle is per pixel: tiling would change nothing, so the flag stays clear at any size."""
    monkeypatch.setattr(latent, "TILE_ABOVE_PIXELS", 0)
    encoded = get_codec("diffvc:pack=random-tiny").encode(synthetic_clip(frames=1, height=64, width=64), 32)
    assert not encoded.params["vae_tiled"] and not read_stream(encoded.bitstream)[0].flags & FLAG_VAE_TILED


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_tiled_stream_decodes_exactly_on_cuda(full_pack, monkeypatch):
    """The CUDA path (bf16 autocast in the diffusion stage, SDPA, channels-last) with the VAE in tiles."""
    monkeypatch.setattr(latent, "VAE_TILING", SMALL_TILES)
    monkeypatch.setattr(latent, "TILE_ABOVE_PIXELS", 0)
    codec = get_codec(f"diffvc:pack={full_pack}:device=cuda:intra=learned:intra_period=-1")
    encoded = codec.encode(synthetic_clip(frames=3, height=64, width=96, seed=3), 32)
    assert encoded.params["vae_tiled"] and encoded.params["device"].startswith("cuda")
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)
