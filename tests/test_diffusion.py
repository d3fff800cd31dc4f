"""The diffusion stage: QP prompting, the TDIR sampler, the training loss and the presets.

Tiny seeded models on the CPU; the full SD-2.1-base-sized preset only under `-m slow`.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import as_if_trained
from diffusers.models.attention_processor import AttnProcessor2_0

from codec.diffvc.diffusion import (
    DiffusionConfig,
    DiffusionStage,
    QPPrompt,
    SamplingRequest,
    TDIRReuse,
    TDIRSampler,
    eps_from_x0,
    full_diffusion_config,
    noise_seed,
    prepare_for_inference,
    sampling_timesteps,
    seeded_noise,
    tiny_diffusion_config,
)
from codec.errors import CodecError

LATENT, CONTEXT, SIZE = 8, 8, 8  # channels of the latent and of C1; latent height = width


def small_config(**overrides) -> DiffusionConfig:
    """A few-thousand-parameter stage: 8x8 latents, 2 levels, 8-step schedule at strength 0.5 (T_s = 4)."""
    cfg = tiny_diffusion_config(
        latent_channels=LATENT,
        context_channels=CONTEXT,
        block_out_channels=(16, 32),
        cross_attention_dim=16,
        num_qp_tokens=2,
        norm_num_groups=8,
        head_channels=8,
        controlnet_embedding_channels=16,
        steps=8,
        strength=0.5,
    )
    return dataclasses.replace(cfg, **overrides)


def small_stage(seed: int = 0, trained: bool = True, **overrides) -> DiffusionStage:
    """trained: perturb the layers that start at zero (ControlNet's zero convolutions, the anchored U-Net's output),
    so that the networks change the result as a trained stage's do."""
    torch.manual_seed(seed)
    stage = DiffusionStage.from_config(small_config(**overrides)).eval()
    if trained:
        as_if_trained(stage, scale=0.3)
    return stage


def inputs(batch: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latent_hat [N, 8, 8, 8], condition [N, 16, 8, 8] = [latent_hat, C1], qp [N])."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, LATENT, SIZE, SIZE, generator=g)
    context = torch.randn(batch, CONTEXT, SIZE, SIZE, generator=g)
    return latent, torch.cat([latent, context], dim=1), torch.randint(0, 64, (batch,), generator=g)


@pytest.fixture(scope="module")
def stage() -> DiffusionStage:
    return small_stage()


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("make", [small_config, full_diffusion_config])
def test_config_survives_a_json_round_trip(make) -> None:
    cfg = make()
    assert DiffusionConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


def test_config_rejects_inconsistent_shapes() -> None:
    with pytest.raises(CodecError, match="cross_attention_dim"):
        small_config(cross_attention_dim=32)
    with pytest.raises(CodecError, match="differ in length"):
        small_config(block_out_channels=(16, 32, 32))
    with pytest.raises(CodecError, match="reuse_source"):
        small_config(reuse_source="previous")


def test_condition_channels_are_latent_plus_context() -> None:
    assert tiny_diffusion_config(latent_channels=192, context_channels=64).condition_channels == 256
    assert full_diffusion_config(context_channels=48).condition_channels == 52


def test_sampling_timesteps_are_the_tail_of_the_ddim_schedule(stage: DiffusionStage) -> None:
    scheduler = stage.make_scheduler()
    half = sampling_timesteps(scheduler, 50, 0.5)
    assert len(half) == 25 and half[0] == 481 and half[-1] == 1
    assert sampling_timesteps(scheduler, 50, 1.0)[0] == 981
    assert sampling_timesteps(scheduler, 50, 0.0) == []


# ---------------------------------------------------------------- QP prompt


def test_qp_prompt_gives_distinct_tokens_per_qp() -> None:
    torch.manual_seed(0)
    prompt = QPPrompt(small_config().qp_prompt)
    tokens = prompt(torch.tensor([0, 1, 32, 63, 32]))
    assert tokens.shape == (5, 2, 16)
    torch.testing.assert_close(tokens[2], tokens[4])  # same QP, same tokens (bitwise only at equal batch shapes)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (tokens[i] - tokens[j]).abs().max() > 1e-3, (i, j)
    assert torch.equal(prompt(torch.tensor([99])), prompt(torch.tensor([63])))  # clamped to the QP range


# ---------------------------------------------------------------- sampler


def count_network_calls(stage: DiffusionStage, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap the U-Net's and ControlNet's forward with counters."""
    calls = {"unet": 0, "controlnet": 0}
    for name in calls:
        module = getattr(stage, name)

        def counted(*args, _forward=module.forward, _name=name, **kwargs):
            calls[_name] += 1
            return _forward(*args, **kwargs)

        monkeypatch.setattr(module, "forward", counted)
    return calls


@pytest.mark.parametrize("reuse_steps, expected_evals", [(0, 4), (2, 2), (4, 0)])
def test_tdir_skips_the_networks_for_the_reused_steps(
    stage: DiffusionStage, monkeypatch: pytest.MonkeyPatch, reuse_steps: int, expected_evals: int
) -> None:
    latent, condition, qp = inputs()
    calls = count_network_calls(stage, monkeypatch)
    previous = torch.randn_like(latent)
    request = SamplingRequest(latent, condition, qp, seed=3, frame_index=5, reuse=TDIRReuse(reuse_steps, previous))
    result = TDIRSampler(stage).sample(request)
    assert result.unet_evals == expected_evals
    assert calls == {"unet": expected_evals, "controlnet": expected_evals}
    assert len(result.x0_per_step) == 4
    assert result.latent.dtype == torch.float32 and torch.isfinite(result.latent).all()


def test_without_reuse_all_steps_run(stage: DiffusionStage) -> None:
    latent, condition, qp = inputs()
    result = TDIRSampler(stage).sample(SamplingRequest(latent, condition, qp, seed=3, frame_index=5))
    assert result.unet_evals == 4


def test_same_seed_and_frame_give_identical_output(stage: DiffusionStage) -> None:
    latent, condition, qp = inputs()
    sampler = TDIRSampler(stage)
    a, b, c, d = (
        sampler.sample(SamplingRequest(latent, condition, qp, seed=seed, frame_index=frame))
        for seed, frame in ((7, 2), (7, 2), (7, 3), (8, 2))
    )
    assert torch.equal(a.latent, b.latent)
    assert not torch.allclose(a.latent, c.latent, atol=1e-3)
    assert not torch.allclose(a.latent, d.latent, atol=1e-3)


def test_seeded_noise_depends_on_seed_and_frame_only() -> None:
    torch.manual_seed(123)  # the global RNG must not matter
    a = seeded_noise((2, 3, 4, 4), seed=1, frame_index=0)
    torch.manual_seed(456)
    assert torch.equal(a, seeded_noise((2, 3, 4, 4), seed=1, frame_index=0))
    assert not torch.equal(a, seeded_noise((2, 3, 4, 4), seed=1, frame_index=1))
    assert not torch.equal(a, seeded_noise((2, 3, 4, 4), seed=0, frame_index=1))
    assert abs(a.std().item() - 1.0) < 0.3


def test_strength_zero_returns_the_reconstruction_unchanged(stage: DiffusionStage) -> None:
    latent, condition, qp = inputs()
    result = TDIRSampler(stage).sample(SamplingRequest(latent, condition, qp, seed=0, frame_index=0, strength=0.0))
    assert torch.equal(result.latent, latent) and result.unet_evals == 0 and result.x0_per_step == []


def test_reusing_a_clean_latent_for_every_step_lands_on_it(stage: DiffusionStage) -> None:
    # Deterministic DDIM with eps derived from x0 keeps every x0 prediction at x0, and the last step
    # (alpha = 1) returns it: the output must be the reused latent, whatever the start and the noise.
    latent, condition, qp = inputs()
    target = torch.randn_like(latent) * 2 + 0.5
    request = SamplingRequest(latent, condition, qp, seed=1, frame_index=1, reuse=TDIRReuse(4, target))
    result = TDIRSampler(stage).sample(request)
    assert result.unet_evals == 0
    torch.testing.assert_close(result.latent, target, atol=1e-4, rtol=1e-4)
    for x0 in result.x0_per_step:
        torch.testing.assert_close(x0, target, atol=1e-4, rtol=1e-4)


def test_per_step_reuse_takes_the_x0_of_the_same_step(stage: DiffusionStage) -> None:
    latent, condition, qp = inputs()
    sampler = TDIRSampler(stage)
    previous = sampler.sample(SamplingRequest(latent, condition, qp, seed=1, frame_index=0))
    reuse = TDIRReuse(2, previous.x0_per_step)
    current = sampler.sample(SamplingRequest(latent + 0.1, condition, qp, seed=1, frame_index=1, reuse=reuse))
    assert current.unet_evals == 2
    for i in range(2):
        torch.testing.assert_close(current.x0_per_step[i], previous.x0_per_step[i], atol=1e-4, rtol=1e-4)
    with pytest.raises(CodecError, match="needs 2"):
        reuse = TDIRReuse(2, previous.x0_per_step[:1])
        sampler.sample(SamplingRequest(latent, condition, qp, seed=1, frame_index=1, reuse=reuse))


@pytest.mark.parametrize("bad", [dict(strength=1.5), dict(steps=0), dict(reuse_steps=-1)])
def test_sampler_rejects_bad_arguments(stage: DiffusionStage, bad: dict) -> None:
    latent, condition, qp = inputs()
    reuse = TDIRReuse(bad.get("reuse_steps", 0), latent)
    request = SamplingRequest(
        latent, condition, qp, seed=0, frame_index=0, steps=bad.get("steps"), strength=bad.get("strength"), reuse=reuse
    )
    with pytest.raises(CodecError, match="need steps"):
        TDIRSampler(stage).sample(request)


def test_last_x0_prediction_is_the_output(stage: DiffusionStage) -> None:
    latent, condition, qp = inputs()
    result = TDIRSampler(stage).sample(SamplingRequest(latent, condition, qp, seed=4, frame_index=0))
    torch.testing.assert_close(result.latent, result.x0_per_step[-1], atol=1e-5, rtol=1e-5)


def test_qp_changes_the_sample(stage: DiffusionStage) -> None:
    latent, condition, _ = inputs()
    sampler = TDIRSampler(stage)
    low = sampler.sample(SamplingRequest(latent, condition, torch.tensor([0]), seed=2, frame_index=0))
    high = sampler.sample(SamplingRequest(latent, condition, torch.tensor([63]), seed=2, frame_index=0))
    assert not torch.allclose(low.latent, high.latent, atol=1e-5)


# ---------------------------------------------------------------- networks and training


def test_condition_reaches_the_unet_only_through_the_trained_controlnet() -> None:
    stage = small_stage(trained=False, anchor="none")  # SD's parameterisation: the U-Net's output is not zeroed
    latent, condition, qp = inputs()
    other = torch.cat([latent, torch.randn(1, CONTEXT, SIZE, SIZE)], dim=1)
    tokens, t = stage.qp_prompt(qp), torch.tensor([500])
    with torch.no_grad():
        # ControlNet's zero convolutions (Zhang et al. 2023): at initialisation the condition changes nothing.
        base = stage.predict_noise(latent, t, condition, tokens)
        assert torch.equal(base, stage.predict_noise(latent, t, other, tokens))
        controlnet = stage.controlnet
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        for conv in [controlnet.controlnet_cond_embedding.conv_out, *zero_convs]:
            assert not conv.weight.any()
            conv.weight.normal_(std=0.1)
        assert not torch.allclose(
            stage.predict_noise(latent, t, condition, tokens), stage.predict_noise(latent, t, other, tokens), atol=1e-4
        )


def test_noise_prediction_loss_trains_all_three_networks() -> None:
    stage = small_stage().train()
    latent, condition, qp = inputs(batch=2)
    loss = stage.noise_prediction_loss(latent, condition, qp, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for name in ("unet", "controlnet", "qp_prompt"):
        grads = [p.grad for p in getattr(stage, name).parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


@pytest.mark.parametrize("timestep_range", ["sampling", "full"])
def test_loss_is_reproducible_with_a_generator(timestep_range: str) -> None:
    stage = small_stage()
    latent, condition, qp = inputs(batch=2)
    losses = [
        stage.noise_prediction_loss(latent, condition, qp, torch.Generator().manual_seed(5), timestep_range)
        for _ in range(2)
    ]
    assert torch.equal(losses[0], losses[1])


def test_prepare_for_inference_keeps_predictions_and_uses_sdpa() -> None:
    stage = small_stage()
    latent, condition, qp = inputs()
    with torch.no_grad():
        before = stage.predict_noise(latent, torch.tensor([300]), condition, stage.qp_prompt(qp))
        prepare_for_inference(stage, "cpu", torch.float32, channels_last=True)
        after = stage.predict_noise(latent, torch.tensor([300]), condition, stage.qp_prompt(qp))
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-4)
    processors = [*stage.unet.attn_processors.values(), *stage.controlnet.attn_processors.values()]
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
    assert not any(p.requires_grad for p in stage.parameters())


def test_bfloat16_autocast_returns_float32(stage: DiffusionStage) -> None:
    latent, condition, qp = inputs()
    request = SamplingRequest(latent, condition, qp, seed=0, frame_index=0)
    result = TDIRSampler(stage, autocast_dtype=torch.bfloat16).sample(request)
    reference = TDIRSampler(stage).sample(request)
    assert result.latent.dtype == torch.float32
    assert (result.latent - reference.latent).abs().max() < 0.2 * reference.latent.abs().max()


# ---------------------------------------------------------------- the full preset


SD21_BASE_UNET_PARAMETERS = 865_910_724


@pytest.mark.slow
def test_full_preset_has_sd21_base_size_and_runs() -> None:
    cfg = full_diffusion_config()
    with torch.device("meta"):
        meta = DiffusionStage.from_config(cfg)
    unet_params = sum(p.numel() for p in meta.unet.parameters())
    controlnet_params = sum(p.numel() for p in meta.controlnet.parameters())
    assert unet_params == SD21_BASE_UNET_PARAMETERS
    assert 355e6 < controlnet_params < 375e6
    del meta

    torch.manual_seed(0)
    stage = DiffusionStage.from_config(cfg).eval()
    latent = torch.randn(1, 4, 8, 8)
    condition = torch.cat([latent, torch.randn(1, cfg.condition_channels - 4, 8, 8)], dim=1)
    with torch.no_grad():
        eps = stage.predict_noise(latent, torch.tensor([400]), condition, stage.qp_prompt(torch.tensor([32])))
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()


def test_load_sd_unet_reads_a_local_folder_and_recopies_the_controlnet(tmp_path) -> None:
    donor = small_stage(seed=1)
    donor.unet.save_pretrained(tmp_path / "unet")
    stage = small_stage(seed=2).load_sd_unet(tmp_path)
    for name, tensor in donor.unet.state_dict().items():
        assert torch.equal(stage.unet.state_dict()[name], tensor), name
    assert torch.equal(stage.controlnet.conv_in.weight, donor.unet.conv_in.weight)
    assert torch.equal(
        stage.controlnet.down_blocks[0].resnets[0].conv1.weight, donor.unet.down_blocks[0].resnets[0].conv1.weight
    )
    with pytest.raises(CodecError, match="does not match"):
        DiffusionStage.from_config(small_config(block_out_channels=(16, 16))).load_sd_unet(tmp_path)
    with pytest.raises(CodecError, match="not found"):
        small_stage().load_sd_unet(tmp_path / "missing")
    (tmp_path / "vae-only" / "vae").mkdir(parents=True)
    (tmp_path / "vae-only" / "vae" / "config.json").write_text("{}")
    with pytest.raises(CodecError, match="cannot load"):
        small_stage().load_sd_unet(tmp_path / "vae-only")


# ---------------------------------------------------------------- anchoring at the reconstruction


@pytest.mark.parametrize("anchor", ["reconstruction", "reconstruction_x0"])
def test_an_untrained_anchored_stage_returns_the_reconstruction(anchor: str) -> None:
    """Anchored: the U-Net's output starts at zero, so sampling lands on l^_t (diffvc = condlc)."""
    stage = small_stage(trained=False, anchor=anchor)
    latent, condition, qp = inputs(batch=2)
    result = TDIRSampler(stage).sample(SamplingRequest(latent, condition, qp, seed=3, frame_index=1))
    assert result.unet_evals == 4
    torch.testing.assert_close(result.latent, latent, atol=1e-4, rtol=0)


def anchored_and_plain_noise(stage: DiffusionStage, anchor: str, t: list[int]):
    """(latent, z_t, t, the stage's eps with `anchor`, the same networks' eps unanchored, alphas_cumprod)."""
    anchored, plain = (
        DiffusionStage(
            dataclasses.replace(stage.config, anchor=a), stage.unet, stage.controlnet, stage.qp_prompt
        ).eval()
        for a in (anchor, "none")
    )
    latent, condition, qp = inputs(batch=2)
    z_t = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    t = torch.tensor(t)
    tokens = stage.qp_prompt(qp)
    with torch.no_grad():
        eps, net = (s.predict_noise(z_t, t, condition, tokens) for s in (anchored, plain))
    return latent, z_t, t, eps, net, stage.make_scheduler().alphas_cumprod


def test_the_anchor_adds_the_noise_the_reconstruction_implies(stage: DiffusionStage) -> None:
    """anchor="reconstruction": eps = eps_from_x0(z_t, l^_t, a_t) + the networks' output, per item's timestep."""
    latent, z_t, t, anchored, net, alphas = anchored_and_plain_noise(stage, "reconstruction", [101, 401])
    for i in range(2):
        expected = eps_from_x0(z_t[i], latent[i], float(alphas[t[i]])) + net[i]
        torch.testing.assert_close(anchored[i], expected, atol=1e-4, rtol=1e-4)


def test_the_x0_anchor_predicts_the_reconstructions_correction(stage: DiffusionStage) -> None:
    """anchor="reconstruction_x0": x0 = l^_t + the networks' output, and eps is the noise that x0 implies."""
    latent, z_t, t, eps, net, alphas = anchored_and_plain_noise(stage, "reconstruction_x0", [1, 301])
    for i in range(2):
        expected = eps_from_x0(z_t[i], latent[i] + net[i], float(alphas[t[i]]))
        torch.testing.assert_close(eps[i], expected, atol=1e-3, rtol=1e-4)


def test_the_x0_anchor_puts_the_last_correction_into_the_output_at_full_strength() -> None:
    """With set_alpha_to_one the output is the last step's x0: l^_t + the last evaluation's correction, unscaled
    (the eps anchor scales it by sqrt((1 - a_1) / a_1) = 0.041, which is why the tiny preset moved to x0)."""
    latent, condition, qp = inputs(batch=1)
    moved = {}
    for anchor in ("reconstruction", "reconstruction_x0"):
        stage = small_stage(trained=False, anchor=anchor)
        with torch.no_grad():
            stage.unet.conv_out.bias.fill_(0.5)  # the networks now add 0.5 everywhere
        result = TDIRSampler(stage).sample(SamplingRequest(latent, condition, qp, seed=3, frame_index=1))
        moved[anchor] = float((result.latent - latent).abs().mean())
    assert moved["reconstruction_x0"] == pytest.approx(0.5, rel=1e-3)
    assert moved["reconstruction"] < 0.05


def test_noise_seed_takes_every_seed_the_format_allows_and_kept_its_old_values():
    import hashlib
    import struct

    old = int.from_bytes(hashlib.blake2b(struct.pack("<qq", 7, 3), digest_size=8).digest(), "little") & (2**63 - 1)
    assert noise_seed(7, 3) == old  # streams written before the unsigned packing decode the same
    assert 0 <= noise_seed(2**64 - 1, 65535) < 2**63


def test_the_noise_prediction_loss_reports_the_identity_baseline() -> None:
    """with_identity: the loss of a stage that returns l^_t on the same draw; an untrained anchored stage is that
    stage, so the two are equal."""
    latent, condition, qp = inputs(batch=2)
    target = latent + 0.1  # the original differs from the reconstruction
    untrained = small_stage(trained=False)
    loss, identity = untrained.noise_prediction_loss(target, condition, qp, torch.Generator().manual_seed(3),
                                                     with_identity=True)  # fmt: skip
    assert float(identity) > 0 and float(loss) == pytest.approx(float(identity), rel=1e-4)
    trained_loss, same = small_stage().noise_prediction_loss(
        target, condition, qp, torch.Generator().manual_seed(3), with_identity=True
    )
    assert float(same) == pytest.approx(float(identity)) and float(trained_loss) != pytest.approx(float(identity))
