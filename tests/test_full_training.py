"""Training the `full` preset at scale (issue [2.5]): gradient checkpointing, mixed precision, the data a GPU run reads,
and, in the slow suite, the whole chain flow -> codec -> diffusion -> finetune through the command line on a
scaled-down SD-style base (`sd_bases`: a near-linear VAE and an SD-laid-out U-Net at small widths) whose final pack
codes and decodes exactly.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow tests/test_full_training.py
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, moving_clip, perceptual_weights_prepared, write_photos
from sd_bases import SD_STYLE_UNET, near_linear_vae, write_sd_base

from codec.diffvc.sd_base import BASE_ENV, SD21_BASE
from codec.errors import CodecError
from codec.train import cli
from codec.train.loop import LoopSettings, collate_clips, read_log, run_stage
from codec.train.stages import StageOptions, make_stage
from codec.video import write_video

CROP = 64
SMOOTH = ((16, 100.0), (6, 30.0))  # photo textures the 8x8-average VAE keeps most of (20 dB, DISTS 0.22)


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return write_sd_base(tmp_path_factory.mktemp("sd") / "sd-style-base", near_linear_vae(), SD_STYLE_UNET)


@pytest.fixture
def full_model(sd_base, monkeypatch):
    """A `full` model as `train --preset full --sd-base` starts it (the base's VAE and U-Net, SD-2.1's codec parts)."""
    monkeypatch.setenv(BASE_ENV, str(sd_base))  # restored after the test (the CLI sets it for its process)
    torch.manual_seed(0)
    return cli.full_model_from_base(str(sd_base))


def test_a_full_model_takes_its_unet_shape_and_latent_scale_from_the_base(full_model, sd_base):
    config = full_model.config
    assert config.diffusion.block_out_channels == SD_STYLE_UNET["block_out_channels"]
    assert config.diffusion.cross_attention_dim == config.diffusion.qp_prompt.dim == 32
    assert config.latent_space.scaling_factor == 3.0 and config.latent_space.base_model == SD21_BASE
    frames = torch.from_numpy(moving_clip(frames=1, height=CROP, width=CROP).frames).permute(0, 3, 1, 2) / 255
    with torch.no_grad():  # the stand-in VAE: an 8x8 average, scaled
        latent = full_model.latent_space.encode(frames)
    average = torch.nn.functional.avg_pool2d(frames * 2 - 1, 8) * 3.0
    assert torch.allclose(latent[:, :3], average, atol=1e-4) and latent[:, 3].abs().max() < 1e-4


def test_a_fresh_diffusion_stage_on_full_starts_from_the_bases_unet(full_model, sd_base):
    """`--fresh-diffusion` on a full pack: the base's U-Net and a ControlNet copied from it (as `--sd-base` starts),
    a new QP prompt, every codec weight kept; a pack that names no base is refused."""
    from diffusers import UNet2DConditionModel

    from codec.diffvc.sd_base import load_part
    from codec.train.stages import with_fresh_diffusion

    with torch.no_grad():
        for p in full_model.diffusion.unet.parameters():
            p.add_(1.0)  # as training would have moved it
    fresh = with_fresh_diffusion(full_model)
    assert fresh.config.diffusion.block_out_channels == SD_STYLE_UNET["block_out_channels"]
    base_unet = load_part(sd_base, UNet2DConditionModel, "unet").state_dict()
    assert all(torch.equal(v, base_unet[k]) for k, v in fresh.diffusion.unet.state_dict().items())
    codec = {k: v for k, v in full_model.state_dict().items() if not k.startswith("diffusion.")}
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in codec.items())
    full_model.config = replace(
        full_model.config, latent_space=replace(full_model.config.latent_space, base_model=None)
    )
    with pytest.raises(CodecError, match="names none"):
        with_fresh_diffusion(full_model)


@pytest.mark.parametrize("stage_name", ["diffusion", "distill", "finetune"])
def test_gradient_checkpointing_keeps_the_loss_and_the_gradients(stage_name, full_model, monkeypatch):
    """Recomputing the U-Net's, ControlNet's and VAE's activations in the backward pass changes memory, not maths:
    one step's loss and every gradient agree with and without it (the fine-tuning and distillation steps backpropagate
    through the sampler and the VAE decoder)."""
    if stage_name == "finetune" and not perceptual_weights_prepared():
        pytest.skip("DISTS weights not prepared (python -m codec.weights prepare)")
    batch = collate_clips([{"frames": torch.rand(2, 3, CROP, CROP, generator=torch.Generator().manual_seed(1))}])
    options = StageOptions(qp=30, grad_steps=2)
    plain = make_stage(stage_name, full_model, options)
    recomputed = make_stage(
        stage_name, copy.deepcopy(full_model), StageOptions(qp=30, grad_steps=2, gradient_checkpointing=True)
    )
    checkpointed: list[str] = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counting(function, *args, **kwargs):
        checkpointed.append(type(getattr(function, "__self__", function)).__name__)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    losses = []
    for stage in (plain, recomputed):
        values = stage(batch, step=3)
        values["loss"].backward()
        losses.append(values["loss"].detach())
    assert checkpointed, "no block was checkpointed"
    if stage_name in ("distill", "finetune"):  # the VAE decoder's blocks too
        assert "UpDecoderBlock2D" in checkpointed
    assert torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-7)
    named = dict(recomputed.named_parameters())
    grads = [(name, p.grad, named[name].grad) for name, p in plain.named_parameters() if p.grad is not None]
    assert grads and all(b is not None for _, _, b in grads)
    for name, a, b in grads:
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), name


@pytest.mark.skipif("torch.cuda.is_available()")
def test_fp16_on_a_cpu_is_refused_and_runs_of_either_precision_follow_in_one_process(tmp_path):
    """accelerate would silently train fp16 runs in float32 on a CPU: refused, with the reason; bf16 (autocast)
    works there. accelerate keeps one precision per process, which the loop resets between runs."""
    from codec.diffvc.config import tiny_config
    from codec.diffvc.model import DiffVCModel

    settings = LoopSettings(out=tmp_path / "fp16", steps=1, batch=1, lr=1e-4, mixed_precision="fp16")
    with pytest.raises(CodecError, match="fp16 needs a GPU"):
        run_stage("codec", lambda: pytest.fail("no model is built"), [], settings)
    g = torch.Generator().manual_seed(0)
    clips = [{"frames": torch.rand(2, 3, CROP, CROP, generator=g)}]
    for run, precision in enumerate(("bf16", "no", "bf16")):
        out = tmp_path / f"{run}-{precision}"
        settings = LoopSettings(out=out, steps=1, batch=1, lr=1e-4, mixed_precision=precision, checkpoint_every=9)
        result = run_stage("diffusion", lambda: DiffVCModel(tiny_config()), clips, settings, log=lambda _: None)
        assert result.step == 1 and np.isfinite(read_log(out / "log.csv")[-1]["loss"])


def test_the_data_folder_decides_the_dataset(tmp_path):
    """--data: a fetched folder gives the mixed dataset, a Vimeo-90k root its septuplets (T <= 7), any other
    folder the windows of its videos; the flow stage reads photos."""
    from codec.train import data

    fetched = tmp_path / "fetched"
    write_photos(fetched / "photos", 3, size=(96, 128))
    videos = tmp_path / "videos"
    write_video(moving_clip(frames=6, height=72, width=96), videos / "a" / "clip.mp4", crf=10)
    vimeo = tmp_path / "vimeo_septuplet"
    write_photos(vimeo / "sequences" / "00001" / "0001", 7, size=(72, 96))
    for k, photo in enumerate(sorted((vimeo / "sequences" / "00001" / "0001").iterdir())):
        photo.rename(photo.with_name(f"im{k + 1}.png"))
    (vimeo / cli.VIMEO_LIST).write_text("00001/0001\n")

    def dataset(folder: Path, stage: str = "codec", frames: int = 3, real_share: float | None = None):
        return cli.make_dataset(stage, folder, frames, CROP, 0, 8, real_share=real_share)

    assert isinstance(dataset(fetched), data.MixedClips)
    write_video(moving_clip(frames=6, height=72, width=96), fetched / "clips" / "real.mp4", crf=10)
    assert dataset(fetched).probabilities.tolist() == [0.8, 0.2]  # data.DEFAULT_WEIGHTS
    assert dataset(fetched, real_share=0.5).probabilities.tolist() == [0.5, 0.5]
    assert list(dataset(fetched, real_share=1.0).parts) == ["clips"]
    with pytest.raises(CodecError, match="real-share"):
        dataset(fetched, real_share=1.5)
    assert isinstance(dataset(videos), data.VideoFolderClips) and dataset(videos)[0]["frames"].shape == (3, 3, 64, 64)
    assert isinstance(dataset(vimeo), data.Vimeo90kSeptuplets) and len(dataset(vimeo)) == 1
    assert isinstance(dataset(vimeo, "flow"), data.SyntheticMotionClips)  # its frames as photos
    with pytest.raises(CodecError, match="num_frames"):
        dataset(vimeo, frames=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodecError, match="no training data"):
        dataset(tmp_path / "empty")


@pytest.mark.slow
@pytest.mark.skipif("not perceptual_weights_prepared()")
def test_a_stage_trains_data_parallel_over_two_processes(sd_base, tmp_path):
    """Several GPUs, as far as a CPU can show it: `torchrun` starts two processes that train the fine-tuning stage
    together (DDP over gloo, with gradient checkpointing and bf16 autocast), one checkpoint and log between them."""
    import os
    import subprocess
    import sys

    write_photos(tmp_path / "data" / "photos", 4, size=(180, 240), scales=SMOOTH)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *("-m", "codec", "train", "finetune", "--preset", "full", "--sd-base", str(sd_base)),
        *("--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--crop", str(CROP), "--frames", "3"),
        *("--batch", "1", "--steps", "2", "--log-every", "1", "--grad-steps", "2", "--threads", "1"),
        *("--mixed-precision", "bf16", "--gradient-checkpointing"),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(2 process(es))" in done.stderr
    assert [int(row["step"]) for row in read_log(tmp_path / "run" / "log.csv")] == [1, 2]
    assert (tmp_path / "run" / "pack" / "config.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# The whole chain (slow)
# --------------------------------------------------------------------------------------------------------------

STAGE_ARGS = {  # steps and learning rates at which each loss falls on 4 clips of 64x64 (a smoke test, not a recipe)
    "flow": ["--steps", "40", "--lr", "1e-3"],
    "codec": ["--steps", "40", "--lr", "5e-4"],
    "diffusion": ["--steps", "40", "--lr", "1e-3"],
    "finetune": ["--steps", "40", "--lr", "1e-3", "--grad-steps", "2", "--mse-weight", "10"],
}
WINDOW = 10  # logged steps compared at each end: 5 passes over the 4 clips (2 per batch)
FALL = 0.9  # the last window's mean loss must be at most this fraction of the first's


@pytest.mark.slow
@pytest.mark.skipif("not perceptual_weights_prepared()")
def test_the_full_chain_trains_through_the_cli_and_its_pack_codes_exactly(sd_base, tmp_path, monkeypatch, capsys):
    """Issue [2.5], "Training at scale", on a CPU: every stage of the `full` preset through `python -m codec train`
    from an SD-style base folder, with the GPU schedule's flags (bf16 autocast, gradient checkpointing), on a folder
    of photos; each stage's loss falls (mean of its first against its last logged steps, over the same clips); the
    final pack names its base and codes a clip that decodes exactly."""
    from codec.__main__ import main
    from codec.registry import get_codec

    monkeypatch.setenv(BASE_ENV, str(sd_base))  # the CLI points it at --sd-base; restored afterwards
    data = tmp_path / "data"
    write_photos(data / "photos", 6, size=(180, 240), scales=SMOOTH)
    common = [
        *("--data", str(data), "--sd-base", str(sd_base), "--crop", str(CROP), "--frames", "3", "--batch", "2"),
        *("--clips", "4", "--qp", "32", "--log-every", "1", "--pack-every", "0", "--threads", "1"),
        *("--mixed-precision", "bf16", "--gradient-checkpointing"),
    ]
    previous = None
    for stage, args in STAGE_ARGS.items():
        start = ["--pack-from", str(previous)] if previous else ["--preset", "full"]
        assert main(["train", stage, "--out", str(tmp_path / stage), *start, *common, *args]) == 0, stage
        losses = [row["loss"] for row in read_log(tmp_path / stage / "log.csv")]
        first, last = np.mean(losses[:WINDOW]), np.mean(losses[-WINDOW:])
        with capsys.disabled():
            print(f"\n{stage}: {len(losses)} steps, loss {first:.4g} -> {last:.4g} (means of {WINDOW} steps)")
        assert len(losses) == int(args[1]) and last <= FALL * first, (stage, losses)
        previous = tmp_path / stage

    pack = previous / "pack"
    written = json.loads((pack / "config.json").read_text())
    assert [h["stage"] for h in written["extra"]["training"]] == list(STAGE_ARGS)
    assert written["latent_space"]["base_model"] == SD21_BASE and str(sd_base) not in json.dumps(written)
    codec = get_codec(f"diffvc:pack={pack}:intra=learned")
    encoded = codec.encode(moving_clip(frames=3, height=CROP, width=CROP, seed=2), 32)
    assert encoded.frame_types == ["I", "P", "P"]
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)
