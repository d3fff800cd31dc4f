"""Staged training (codec/train): each stage trains, resumes where it stopped, and writes a pack the codec uses.

Tiny preset, 64x64 crops, batches of 2 sequences of 3 frames, a few steps, on an in-test dataset of smooth random
textures translating by known whole-pixel motions (so the ground-truth flow is exact), independent of
codec/train/data.py.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import as_if_trained, moving_clip, perceptual_weights_prepared
from torch.utils.data import Dataset

from codec.diffvc.config import tiny_config
from codec.diffvc.diffusion import SamplingRequest, TDIRSampler, seeded_noise
from codec.diffvc.latent import unsharp_mask
from codec.diffvc.model import DiffVCModel
from codec.diffvc.warp import warp
from codec.errors import CodecError
from codec.registry import get_codec
from codec.train import cli
from codec.train.loop import LoopSettings, collate_clips, load_checkpoint, read_log, run_stage
from codec.train.stages import (
    LAPLACE_FROM_GAUSSIAN,
    RATE_LR_SCALE,
    CodecStage,
    DistillStage,
    FinetuneStage,
    StageOptions,
    anchor_gains,
    calibrate_anchor_gain,
    code_sequence,
    frame_weight,
    rd_lambda,
    with_anchor_gain,
    with_entropy_model,
    with_frame_interpolation,
    with_fresh_diffusion,
    with_spynet,
)

CROP, FRAMES, BATCH = 64, 3, 2


class TranslatingTextures(Dataset):
    """Item i: a smooth random texture (bicubic upsampling of a seeded 12x12 grid) seen through a CROP window that
    moves by (vx, vy) whole pixels per frame. flow[t] = (vx, vy) everywhere, so warp(frames[t], flow[t]) equals
    frames[t + 1] exactly (the data pipeline's convention)."""

    def __init__(self, length: int = 64, frames: int = FRAMES, crop: int = CROP, seed: int = 0) -> None:
        self.length, self.frames, self.crop, self.seed = length, frames, crop, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        margin = 4 * self.frames
        size = self.crop + 2 * margin
        grid = torch.rand(1, 3, 12, 12, generator=g)
        texture = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        vx, vy = (int(v) for v in torch.randint(-3, 4, (2,), generator=g))
        frames = torch.stack(
            [
                texture[:, margin + t * vy : margin + t * vy + self.crop, margin + t * vx : margin + t * vx + self.crop]
                for t in range(self.frames)
            ]
        )
        flow = torch.tensor([float(vx), float(vy)]).view(1, 2, 1, 1).expand(self.frames - 1, 2, self.crop, self.crop)
        valid = torch.ones(self.frames - 1, 1, self.crop, self.crop, dtype=torch.bool)
        return {"frames": frames.contiguous(), "flow": flow.contiguous(), "flow_valid": valid, "name": f"tex-{index}"}


def settings(out, steps: int, **overrides) -> LoopSettings:
    values = dict(out=out, steps=steps, batch=BATCH, lr=2e-4, seed=3, log_every=1, checkpoint_every=100, pack_every=0)
    return LoopSettings(**{**values, **overrides})


def tiny_model() -> DiffVCModel:
    return DiffVCModel(tiny_config())


def tiny_spynet_model() -> DiffVCModel:
    return with_spynet(DiffVCModel(tiny_config()))


def log_steps(out) -> list[int]:
    return [int(r["step"]) for r in read_log(out / "log.csv")]


# --- pieces -----------------------------------------------------------------------------------------------------


def test_lambda_falls_log_linearly_over_the_qp_range_and_frame_weights_cycle():
    lam = rd_lambda(torch.arange(64))
    assert lam[0].item() == pytest.approx(2048) and lam[-1].item() == pytest.approx(16)
    assert bool((lam[1:] < lam[:-1]).all())
    ratios = lam[:-1] / lam[1:]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)  # log-linear: a constant ratio per QP
    assert [frame_weight(i) for i in range(7)] == [1.0, 0.5, 1.2, 0.5, 0.9, 0.5, 1.2]


def test_in_test_dataset_flow_is_exact_and_collates():
    item = TranslatingTextures()[5]
    warped = warp(item["frames"][:-1], item["flow"])
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the replicated border
    assert torch.allclose(warped[inner], item["frames"][1:][inner], atol=1e-5)
    batch = collate_clips([TranslatingTextures()[i] for i in range(3)])
    assert set(batch) == {"frames", "flow", "flow_valid"} and batch["frames"].shape == (3, FRAMES, 3, CROP, CROP)


def test_the_sampler_trains_through_its_last_steps_and_codes_without_a_graph():
    """Fine-tuning runs the coding loop itself (`TDIRSampler.sample`) with gradients on: same values as coding, and
    gradients reach the U-Net and the QP prompt through all steps or only the last ones."""
    torch.manual_seed(0)
    model = tiny_model()
    stage = model.diffusion.eval()
    as_if_trained(stage, scale=0.1)
    g = torch.Generator().manual_seed(1)
    latent_hat = torch.randn(1, 192, 8, 8, generator=g) * 0.5
    condition = torch.cat([latent_hat, torch.randn(1, 64, 8, 8, generator=g)], 1)
    qp = torch.tensor([30])
    sampler = TDIRSampler(stage)
    coded = sampler.sample(SamplingRequest(latent_hat, condition, qp, seed=7, frame_index=2)).latent
    assert not coded.requires_grad  # grad_steps=0 (coding): no graph even with gradients enabled
    noise = seeded_noise(latent_hat.shape, 7, 2)
    request = SamplingRequest(latent_hat, condition, qp, seed=0, frame_index=0, noise=noise, grad_steps=None)
    trained = sampler.sample(request).latent
    assert trained.requires_grad and torch.allclose(trained, coded, atol=1e-5)

    for grad_steps in (None, 1):
        stage.zero_grad()
        request = SamplingRequest(latent_hat, condition, qp, seed=7, frame_index=2, grad_steps=grad_steps)
        sampler.sample(request).latent.square().mean().backward()
        grads = [p.grad for p in stage.unet.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
        assert stage.qp_prompt.position.grad is not None


def test_eval_mode_sequence_coding_matches_the_registered_condlc_codec():
    """code_sequence in evaluation mode is the decoder's chain: its reconstructions equal condlc's, frame by frame."""
    from codec.diffvc.codec import load_model

    model, _ = load_model("random-tiny", "cpu")  # the same cached model the codec spec below uses
    clip = moving_clip(frames=3, height=64, width=64, seed=4)
    encoded = get_codec("condlc:pack=random-tiny:intra=learned:intra_qp_offset=0:skip=false").encode(clip, 40)
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255)[None]
    with torch.no_grad():
        coded = code_sequence(model.eval(), frames, torch.tensor([40]))
    ours = torch.stack([(f.recon[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0) for f in coded])
    assert np.array_equal(ours.numpy(), encoded.reconstruction.frames)


def test_a_pack_moved_to_laplace_codes_exactly_and_keeps_its_distribution(tmp_path):
    """`train codec --entropy-model laplace` on a Gaussian pack: each codec's y model (intra, inter, motion)
    becomes a Laplace with its own scale and coding tables, the prior's scales times LAPLACE_FROM_GAUSSIAN; written
    as a pack it is read back as Laplace, and a clip coded with it decodes exactly."""
    from codec.diffvc.codec import load_model
    from codec.diffvc.entropy import LaplaceConditional
    from codec.diffvc.latent_codec import prior_output
    from codec.diffvc.pack import write_pack

    gaussian, _ = load_model("random-tiny", "cpu")
    laplace = with_entropy_model(gaussian, "laplace")
    for part in ("intra", "inter", "motion"):
        ours, theirs = getattr(laplace, part), getattr(gaussian, part)
        assert isinstance(ours.gaussian, LaplaceConditional) and not isinstance(theirs.gaussian, LaplaceConditional)
        assert torch.equal(ours.gaussian.scale_table, LaplaceConditional.default_scale_table().float())
        half = prior_output(ours).out_channels // 2
        expected = prior_output(theirs).bias[half:] * LAPLACE_FROM_GAUSSIAN
        assert torch.allclose(prior_output(ours).bias[half:], expected)
    folder = tmp_path / "laplace-pack"
    write_pack(folder, laplace.config.to_dict(), laplace.trainable_state(), "a test pack")
    codec = get_codec(f"condlc:pack={folder}:intra=learned:intra_qp_offset=0")
    assert all(isinstance(getattr(codec._model()[0], p).gaussian, LaplaceConditional) for p in ("inter", "motion"))
    clip = moving_clip(frames=3, height=64, width=64, seed=4)
    encoded = codec.encode(clip, 30)
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)


def test_a_pack_moved_to_bicubic_motion_compensation_codes_exactly(tmp_path):
    """`train codec --frame-interpolation bicubic`: the same weights, the reference frame warped bicubically (a
    different prediction, so a different stream), read back from its pack as bicubic; a clip decodes exactly."""
    from codec.diffvc.codec import load_model
    from codec.diffvc.pack import write_pack

    bilinear, _ = load_model("random-tiny", "cpu")
    bicubic = with_frame_interpolation(bilinear, "bicubic")
    assert bicubic.config.context.frame_interpolation == "bicubic"
    assert all(torch.equal(a, b) for a, b in zip(bilinear.state_dict().values(), bicubic.state_dict().values()))
    folder = tmp_path / "bicubic-pack"
    write_pack(folder, bicubic.config.to_dict(), bicubic.trainable_state(), "a test pack")
    clip = moving_clip(frames=3, height=64, width=64, seed=4)
    codec = get_codec(f"condlc:pack={folder}")
    assert codec._model()[0].config.context.frame_interpolation == "bicubic"
    encoded = codec.encode(clip, 30)
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)
    assert encoded.bitstream != get_codec("condlc:pack=random-tiny").encode(clip, 30).bitstream


def test_eval_mode_sequence_coding_with_hevc_intra_matches_the_codec():
    """--intra hevc trains on the references `intra=hevc` gives: the same I-frame (its real bits) and chain."""
    from codec.bitstream import read_stream
    from codec.diffvc.codec import load_model

    model, _ = load_model("random-tiny", "cpu")
    clip = moving_clip(frames=3, height=64, width=64, seed=4)
    encoded = get_codec("condlc:pack=random-tiny:intra=hevc:intra_qp_offset=-6:skip=false").encode(clip, 40)
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255)[None]
    with torch.no_grad():
        coded = code_sequence(model.eval(), frames, torch.tensor([40]), hevc_intra=True, intra_qp_offset=-6)
    ours = torch.stack([(f.recon[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0) for f in coded])
    assert np.array_equal(ours.numpy(), encoded.reconstruction.frames)
    first = read_stream(encoded.bitstream)[1][0]
    assert first.qp == 34 and float(coded[0].bits[0]) == 8 * len(first.strings[0])


def test_finetuning_samples_each_sequence_as_the_decoder_does(tmp_path):
    """The fine-tuning stage trains what `diffvc` decodes: with the stream's seeded noise, its frames (TDIR on,
    the warped x0 of the previous frame reused in every P-frame, the I-frame's too, codec references) equal the
    decoder's."""
    from codec.diffvc.pack import write_pack

    model, _ = DiffVCModel.random(tiny_config(), seed=0)
    as_if_trained(model.diffusion, scale=0.05)
    pack = write_pack(tmp_path / "pack", model.config.to_dict(), model.trainable_state(), "test pack\n").path
    model, _ = DiffVCModel.from_pack(pack)  # the pack's (half-precision) weights, as the codec loads them
    clip = moving_clip(frames=4, height=64, width=64, seed=4)
    spec = f"diffvc:pack={pack}:intra=learned:intra_qp_offset=0:seed=5:skip=false"
    decoded = get_codec(spec).encode(clip, 40).reconstruction.frames
    stage = FinetuneStage(model)
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255)[None]
    qp = torch.tensor([40])
    with torch.no_grad():
        coded = stage._code(frames, qp)
        latents = stage.sample_sequence(coded, qp, lambda i, shape: seeded_noise(shape, 5, i))
    ours = torch.stack(
        [(model.latent_space.decode(x)[0] * 255).round().to(torch.uint8).permute(1, 2, 0) for x in latents]
    )
    assert np.array_equal(ours.numpy(), decoded)
    assert not np.array_equal(
        ours.numpy(),
        get_codec(spec.replace("diffvc", "condlc", 1).replace(":seed=5", "")).encode(clip, 40).reconstruction.frames,
    )


@pytest.mark.skipif("not perceptual_weights_prepared()")
def test_a_fresh_diffusion_stage_starts_as_the_codec_and_logs_its_baseline():
    """--fresh-diffusion: the pack's codec, a new anchored stage; at step 0 diffvc = condlc, so the perceptual loss
    equals the codec's logged beside it."""
    old, _ = DiffVCModel.random(tiny_config(), seed=0)
    as_if_trained(old.diffusion, scale=0.05)
    model = with_fresh_diffusion(old)
    assert model.config.diffusion.anchor == "reconstruction_x0"
    codec_part = {k: v for k, v in old.state_dict().items() if not k.startswith("diffusion.")}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in codec_part.items())
    values = FinetuneStage(model, StageOptions(qp=30))(collate_clips([TranslatingTextures()[0]]), 0)
    assert float(values["perceptual"]) == pytest.approx(float(values["perceptual_codec"]), abs=1e-6)
    assert float(values["psnr"]) == pytest.approx(float(values["psnr_codec"]), abs=1e-4)


def test_unsharp_mask_keeps_flat_areas_and_steepens_edges():
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(unsharp_mask(flat, 0.5), flat)
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 0.5
    sharp = unsharp_mask(edge, 0.5)
    assert sharp[..., 7].max() < 0.0 and sharp[..., 8].min() > 0.5  # an undershoot and an overshoot
    assert torch.equal(sharp[..., :5], edge[..., :5]) and torch.allclose(sharp[..., 12:], edge[..., 12:])


def test_an_unsharp_anchor_filter_makes_a_fresh_stage_the_unsharp_mask_of_the_codec():
    """--unsharp-init: the anchor filter's latent kernel applies the pixel-space mask exactly, frame edges
    included, so at step 0 the sampled stage returns the unsharp mask of condlc's frames."""
    model, _ = DiffVCModel.random(tiny_config(), seed=0)
    fresh = with_fresh_diffusion(model, 0.5)
    frames = torch.rand(2, 3, 48, 64)
    anchored = fresh.diffusion.reconstruction_anchor(fresh.latent_space.encode(frames))
    assert torch.allclose((F.pixel_shuffle(anchored, 8) + 1) / 2, unsharp_mask(frames, 0.5), atol=1e-5)
    stage = FinetuneStage(fresh)
    qp = torch.tensor([30])
    with torch.no_grad():
        coded = stage._code(collate_clips([TranslatingTextures()[0]])["frames"], qp)
        latents = stage.sample_sequence(coded, qp, lambda i, shape: seeded_noise(shape, 1, i))
    for f, latent in zip(coded, latents, strict=True):
        unclamped = (F.pixel_shuffle(f.latent_hat, 8) + 1) / 2  # the codec's latent may leave [-1, 1] a little
        shown = fresh.latent_space.decode(latent)
        assert torch.allclose(shown, unsharp_mask(unclamped, 0.5).clamp(0, 1), atol=1e-5)
        assert (shown - f.recon).abs().max() > 0.01  # and it is not the reconstruction


def test_the_anchor_gain_starts_at_zero_and_makes_the_restoration_depend_on_the_qp_prompt():
    """--anchor-gain adds a zero-initialised QP gain to a stage that has a filter: every weight and the output are
    kept; once the gain is non-zero, the QP prompt sets how strongly the filter restores."""
    from dataclasses import replace

    config = tiny_config()
    without = DiffVCModel(replace(config, diffusion=replace(config.diffusion, anchor_gain=False)))
    as_if_trained(without.diffusion, scale=0.05)
    model = with_anchor_gain(without)
    assert model.config.diffusion.anchor_gain and not without.config.diffusion.anchor_gain
    kept = without.state_dict()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.items())
    stage = model.diffusion.eval()
    latent = torch.randn(1, 192, 4, 6)
    low, high = (stage.qp_prompt(torch.tensor([qp])) for qp in (0, 63))
    with torch.no_grad():
        assert torch.equal(stage.reconstruction_anchor(latent, low), without.diffusion.reconstruction_anchor(latent))
        assert torch.equal(stage.reconstruction_anchor(latent, low), stage.reconstruction_anchor(latent, high))
        stage.anchor_gain.weight.normal_(0.0, 0.1)
        assert not torch.allclose(stage.reconstruction_anchor(latent, low), stage.reconstruction_anchor(latent, high))
    groups = FinetuneStage(model).parameter_groups(1e-5)
    fast = next(g for g in groups if g["lr_scale"] > 1)["params"]
    assert all(any(p is q for q in fast) for p in stage.anchor_gain.parameters())  # the gain learns fast


def test_a_calibrated_anchor_gain_follows_the_measured_gains_between_and_beyond_them():
    """`calibrate_anchor_gain`: g(QP) is the measured gains at their QPs, linear between them, held beyond them; the
    rest of the model is kept. `tools.anchor_gain_scan` picks each QP's gain by a parabola through its scan."""
    from dataclasses import replace

    from tools.anchor_gain_scan import best_gain

    config = tiny_config()
    without = DiffVCModel(replace(config, diffusion=replace(config.diffusion, anchor_gain=False)))
    as_if_trained(without.diffusion, scale=0.05)
    model = calibrate_anchor_gain(without, {8: 0.25, 40: 0.0, 60: -0.5})
    gains = anchor_gains(model)
    assert not anchor_gains(without).any()  # no gain: zero at every QP
    expected = np.interp(np.arange(64), [8, 40, 60], [0.25, 0.0, -0.5])
    assert np.abs(gains - expected).max() < 1e-3, np.abs(gains - expected).max()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in without.state_dict().items())
    assert best_gain({-1.0: 0.30, -0.5: 0.26, 0.0: 0.25, 0.5: 0.27}) == pytest.approx(-1 / 12)
    assert best_gain({-1.0: 0.20, -0.5: 0.26, 0.0: 0.28}) == -1.0
    with pytest.raises(CodecError, match="gain"):
        calibrate_anchor_gain(without, {})


def test_the_qp_trend_takes_each_clips_level_out_and_leaves_unmeasured_clips_out(tmp_path):
    """`tools.anchor_gain_scan.qp_trend`: how the best gain moves with the QP, averaged over clips after each clip's
    own mean is taken out; a clip pinned at an end of the scanned range (a smooth clip wanting the stage off) does
    not count. `read_scan` reads back the table the tool prints."""
    from tools.anchor_gain_scan import qp_trend, read_scan

    best = {
        "textured": {8: 0.5, 24: 0.5, 40: 1.0, 56: 1.0},  # its mean, 0.75, is the content's level
        "grainy": {8: -0.75, 24: -0.25, 40: 0.0, 56: 0.25},
        "smooth": {8: -1.0, 24: -1.0, 40: -1.0, 56: -1.0},  # the stage off at every QP: its optimum unmeasured
    }
    trend = qp_trend(best, -1.0, 1.0)
    assert trend == pytest.approx({8: -0.40625, 24: -0.15625, 40: 0.21875, 56: 0.34375})
    with pytest.raises(ValueError, match="inside the scanned range"):
        qp_trend({"smooth": best["smooth"]}, -1.0, 1.0)
    scan = tmp_path / "scan.md"
    scan.write_text(
        "| clip | QP | g | LPIPS | DISTS | LPIPS + DISTS |\n| --- | --- | --- | --- | --- | --- |\n"
        "| a.mp4 | 8 | -0.50 | 0.1 | 0.2 | 0.3000 |\n| a.mp4 | 8 | +0.50 | 0.1 | 0.1 | 0.2000 |\n"
        "| a.mp4 | 8 | best +0.500 | | | |\n"
    )
    assert read_scan(scan) == {"a.mp4": {8: {-0.5: 0.3, 0.5: 0.2}}}


def test_distill_stage_starts_at_the_codec_and_learns_the_teacher():
    """A fresh anchored stage returns the reconstruction, so its distance to the teacher is the codec's; a few
    steps on a fixed batch bring the decoded frames closer to the unsharp mask of the reconstruction."""
    torch.manual_seed(0)
    model, _ = DiffVCModel.random(tiny_config(), seed=0)
    stage = DistillStage(with_fresh_diffusion(model), StageOptions(qp=30, unsharp=1.0), seed=0)
    stage.model.diffusion.anchor_filter.requires_grad_(False)  # the U-Net alone learns the teacher here
    batch = collate_clips([TranslatingTextures()[i] for i in range(BATCH)])
    first = stage(batch, 0)
    assert float(first["distill"]) == pytest.approx(float(first["distill_codec"]), rel=1e-5)
    optimizer = torch.optim.Adam(stage.trainable_parameters(), lr=3e-4)
    losses = []
    for _ in range(15):
        values = stage(batch, 0)  # the same noise each time
        values["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(values["loss"].item())
    assert np.mean(losses[-3:]) < 0.7 * float(first["distill_codec"]), losses


@pytest.mark.parametrize("quantization", ["noise", "mixed"])
def test_codec_loss_decreases_on_a_fixed_batch(quantization):
    """With either training quantization (`--quantization`), which the stage gives every conditional model."""
    from codec.diffvc.entropy import GaussianConditional

    torch.manual_seed(0)
    stage = CodecStage(tiny_model(), StageOptions(qp=32, quantization=quantization), seed=0)
    models = [m for m in stage.model.modules() if isinstance(m, GaussianConditional)]
    assert len(models) == 3 and all(m.training_quantization == quantization for m in models)
    optimizer = torch.optim.Adam(stage.trainable_parameters(), lr=5e-4)
    batch = collate_clips([TranslatingTextures()[i] for i in range(BATCH)])
    losses = []
    for step in range(20):
        values = stage(batch, step)
        values["loss"].backward()
        torch.nn.utils.clip_grad_norm_(stage.trainable_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(values["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


# --- the loop, per stage: files, resume, pack ---------------------------------------------------------------


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("codec-run")
    first = run_stage("codec", tiny_model, TranslatingTextures(), settings(out, 2), log=lambda _: None)
    return out, first


def check_run_files(out, step: int, columns: tuple[str, ...]) -> None:
    for name in (
        "checkpoint.pt",
        "log.csv",
        "loss.png",
        "pack/config.json",
        "pack/model.safetensors",
        "pack/README.md",
    ):
        assert (out / name).is_file(), name
    with (out / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"step", "seconds", "s_per_it", "lr", "loss", *columns} <= set(rows[0])
    assert all(math.isfinite(float(r[c])) for r in rows for c in ("loss", *columns))
    assert load_checkpoint(out / "checkpoint.pt")["step"] == step


def test_codec_stage_writes_checkpoint_log_plot_and_pack(codec_run):
    out, first = codec_run
    assert first.step == 2 and first.stopped_by == "steps"
    check_run_files(out, 2, CodecStage.log_columns)
    model, info = DiffVCModel.from_pack(out / "pack")
    history = model.config.extra["training"]
    assert history[-1]["stage"] == "codec" and history[-1]["steps"] == 2 and info.sha256 == first.pack.sha256


def test_codec_pack_codes_exactly_with_the_registered_codec(codec_run):
    out, _ = codec_run
    codec = get_codec(f"condlc:pack={out / 'pack'}")
    clip = moving_clip(frames=3, height=64, width=64, seed=1)
    encoded = codec.encode(clip, 24)
    assert encoded.frame_types == ["I", "P", "P"]
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)


def test_a_run_resumes_only_with_the_quantization_it_trains_with(codec_run):
    """A run trained with noise is not resumed with --quantization mixed (or the other way), which would train on
    in silence under the wrong pack history."""
    out, _ = codec_run
    with pytest.raises(CodecError, match="--quantization noise"):
        run_stage("codec", tiny_model, TranslatingTextures(), settings(out, 3), record={"quantization": "mixed"})


def test_resuming_continues_the_step_count_and_equals_an_uninterrupted_run(codec_run, tmp_path):
    out, _ = codec_run
    resumed = run_stage("codec", tiny_model, TranslatingTextures(), settings(out, 4), log=lambda _: None)
    assert resumed.step == 4 and log_steps(out) == [1, 2, 3, 4]
    straight = run_stage("codec", tiny_model, TranslatingTextures(), settings(tmp_path, 4), log=lambda _: None)
    a = load_checkpoint(out / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert straight.step == 4 and all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_budget_stops_cleanly_with_checkpoint_and_pack(tmp_path):
    result = run_stage(
        "codec", tiny_model, TranslatingTextures(), settings(tmp_path, 1000, time_budget_min=1e-4), log=lambda _: None
    )
    assert result.stopped_by == "time" and 1 <= result.step < 1000
    check_run_files(tmp_path, result.step, CodecStage.log_columns)


class TermOnItem(TranslatingTextures):
    """Sends this process SIGTERM when item `at` is loaded, as `kill PID` would a background run."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(index)


def test_sigterm_stops_cleanly_with_checkpoint_and_pack(tmp_path):
    from codec.train.loop import ResumableSampler

    third_batch_item = list(ResumableSampler(64, 3, 0, 3 * BATCH))[2 * BATCH]  # seed 3, as `settings`
    before = signal.getsignal(signal.SIGTERM)
    result = run_stage("codec", tiny_model, TermOnItem(third_batch_item), settings(tmp_path, 1000), log=lambda _: None)
    assert result.stopped_by == "signal" and 1 <= result.step <= 3
    check_run_files(tmp_path, result.step, CodecStage.log_columns)
    assert signal.getsignal(signal.SIGTERM) == before  # the loop's handler is gone again


@pytest.mark.parametrize("stage_name", ["flow", "diffusion", "distill", "finetune"])
def test_stage_trains_resumes_and_writes_a_loadable_pack(stage_name, tmp_path):
    if stage_name == "finetune" and not perceptual_weights_prepared():
        pytest.skip("DISTS weights not prepared (python -m codec.weights prepare)")
    build = tiny_spynet_model if stage_name == "flow" else tiny_model
    data = TranslatingTextures()
    first = run_stage(stage_name, build, data, settings(tmp_path, 2), log=lambda _: None)
    assert first.step == 2
    before = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    second = run_stage(stage_name, build, data, settings(tmp_path, 3), log=lambda _: None)
    assert second.step == 3 and log_steps(tmp_path) == [1, 2, 3]
    from codec.train.stages import STAGES

    check_run_files(tmp_path, 3, STAGES[stage_name].log_columns)
    after = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    trained = "flow_estimator" if stage_name == "flow" else "diffusion"
    changed = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert changed == {trained}  # only the stage's part trains
    model, _ = DiffVCModel.from_pack(tmp_path / "pack")
    assert model.config.flow == ("spynet" if stage_name == "flow" else "dis")


def test_flow_stage_logs_dis_error_near_zero_on_exact_translations(tmp_path):
    run_stage("flow", tiny_spynet_model, TranslatingTextures(), settings(tmp_path, 1), log=lambda _: None)
    (row,) = read_log(tmp_path / "log.csv")
    assert row["epe_dis"] < 0.5 < row["loss"]  # DIS recovers whole-pixel pans; an untrained SpyNet does not


# --- command line -----------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_train_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


def test_cli_flow_stage_skips_a_dis_preset(tmp_path, capsys):
    args = parse(["flow", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert args.run(args) == 0
    assert "DIS" in capsys.readouterr().out and not (tmp_path / "run").exists()


def test_cli_refuses_quantization_outside_the_codec_stage(tmp_path):
    args = parse(["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quantization", "mixed"])
    with pytest.raises(CodecError, match="stage codec only"):
        args.run(args)
    assert not (tmp_path / "run").exists()


def test_warmup_raises_the_lr_linearly_then_holds_it(tmp_path):
    from codec.train.loop import warmup_lr

    ramp = settings(tmp_path, 10, lr=1e-3, warmup=4)
    assert [warmup_lr(ramp, s) for s in range(1, 7)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert warmup_lr(settings(tmp_path, 10, lr=1e-3), 1) == 1e-3
    result = run_stage(
        "diffusion", tiny_model, TranslatingTextures(), settings(tmp_path, 2, lr=1e-3, warmup=4), log=lambda _: None
    )
    assert [row["lr"] for row in read_log(tmp_path / "log.csv")] == pytest.approx([2.5e-4, 5e-4])
    assert result.step == 2


def test_packs_get_the_weight_average_and_a_resume_keeps_it(tmp_path):
    from codec.train.loop import WeightAverage

    result = run_stage(
        "diffusion", tiny_model, TranslatingTextures(), settings(tmp_path, 3, lr=1e-2, ema=0.5), log=lambda _: None
    )
    assert result.step == 3
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    trained = checkpoint["model"]
    packed = DiffVCModel.from_pack(tmp_path / "pack")[0].state_dict()
    names = [k for k, _ in tiny_model().named_parameters() if k.startswith("diffusion.")]  # the trained ones
    assert len(checkpoint["ema"]) == len(names)
    for name, average in zip(names, checkpoint["ema"], strict=True):
        assert torch.allclose(packed[name].float(), average, rtol=2e-3, atol=1e-4), name  # fp16 packs
    assert any(not torch.allclose(a, trained[n], atol=1e-3) for n, a in zip(names, checkpoint["ema"]))
    average = WeightAverage([torch.nn.Parameter(torch.zeros(2))], 0.9)
    average.update([torch.nn.Parameter(torch.ones(2))], step=0)  # decay min(0.9, 1/10): mostly the new value
    assert torch.allclose(average.shadow[0], torch.full((2,), 0.9))
    second = run_stage(
        "diffusion", tiny_model, TranslatingTextures(), settings(tmp_path, 4, ema=0.5), log=lambda _: None
    )
    assert second.step == 4 and "ema" in load_checkpoint(tmp_path / "checkpoint.pt")


def test_a_frozen_codec_keeps_its_coding_tables_bit_for_bit(tmp_path):
    """The diffusion stages do not touch the codec: their pack keeps the tables it started from (updating them
    again from half-precision weights would change the codec's streams); a codec stage updates them."""
    from codec.diffvc.pack import write_pack

    start, _ = DiffVCModel.random(tiny_config(), seed=0)
    pack = write_pack(tmp_path / "start", start.config.to_dict(), start.trainable_state(), "start\n").path
    run_stage(
        "diffusion",
        lambda: DiffVCModel.from_pack(pack)[0],
        TranslatingTextures(),
        settings(tmp_path / "run", 1),
        log=lambda _: None,
    )
    before, after = DiffVCModel.from_pack(pack)[0].state_dict(), DiffVCModel.from_pack(tmp_path / "run" / "pack")[0]
    tables = [k for k in before if k.rsplit(".", 1)[-1] in ("_frequencies", "_lengths", "_offsets", "medians")]
    assert tables and all(torch.equal(before[k], after.state_dict()[k]) for k in tables)
    assert after.has_coding_tables() and not tiny_model().has_coding_tables()


def test_cli_chains_codec_then_diffusion_through_packs(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "make_dataset", lambda stage, *a: TranslatingTextures(frames=FRAMES, crop=CROP))
    common = ["--data", str(tmp_path), "--steps", "1", "--batch", "2", "--crop", "64", "--frames", "3"]
    args = parse(["codec", "--out", str(tmp_path / "codec"), *common])
    assert args.run(args) == 0
    args = parse(["diffusion", "--out", str(tmp_path / "diffusion"), "--pack-from", str(tmp_path / "codec"), *common])
    assert args.run(args) == 0
    model, _ = DiffVCModel.from_pack(tmp_path / "diffusion" / "pack")
    assert [h["stage"] for h in model.config.extra["training"]] == ["codec", "diffusion"]
    codec_pack, _ = DiffVCModel.from_pack(tmp_path / "codec" / "pack")
    a, b = dict(codec_pack.named_parameters()), dict(model.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("inter."))  # the codec stayed frozen
    with pytest.raises(SystemExit):
        parse(["codec", "--out", str(tmp_path)])  # --data is required


def test_rate_control_parameters_learn_faster_and_every_parameter_is_trained_once():
    stage = CodecStage(tiny_model())
    groups = stage.parameter_groups(1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in stage.trainable_parameters())  # each once
    fast = next(g for g in groups if g["lr_scale"] == RATE_LR_SCALE)
    assert fast["lr"] == pytest.approx(1e-3 * RATE_LR_SCALE)
    scales = {id(p) for p in stage.model.inter.qp_scales.parameters()} | {
        id(p) for p in stage.model.intra.hyperprior.prior.parameters()
    }
    assert scales <= {id(p) for p in fast["params"]}
    assert len(fast["params"]) < len(ids) / 4  # a few small tensors, not the networks


def test_the_gain_scan_codes_once_per_qp_and_scores_every_gain(tmp_path, capsys):
    """`tools.anchor_gain_scan`: synthetic clips of the training photos, each gain's LPIPS + DISTS per QP, printed as
    the table `read_scan` reads back."""
    from conftest import write_photos

    from tools.anchor_gain_scan import read_scan, scan, synthetic_clips

    write_photos(tmp_path / "photos", 3)
    clips = synthetic_clips(tmp_path, 2, 64, 3)
    assert list(clips) == ["synthetic-0", "synthetic-1"] and clips["synthetic-0"].frames.shape == (3, 64, 64, 3)
    table = scan("synthetic-0", clips["synthetic-0"], "", [40], [-1.0, 0.0])
    assert set(table) == {40} and set(table[40]) == {-1.0, 0.0} and table[40][-1.0] != table[40][0.0]
    (tmp_path / "scan.md").write_text(capsys.readouterr().out)
    printed = {qp: {g: round(v, 4) for g, v in objective.items()} for qp, objective in table.items()}
    assert read_scan(tmp_path / "scan.md") == {"synthetic-0": printed}
