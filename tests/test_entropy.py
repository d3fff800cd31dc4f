"""The learned entropy models: exact round trips, rate against the likelihood estimate, robustness to float noise
in the predicted parameters, gradients, damaged strings, determinism. Tiny seeded tensors on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.diffvc.entropy import (
    ENTROPY_MODELS,
    MAX_ABS_SYMBOL,
    FactorizedPrior,
    GaussianConditional,
    LaplaceConditional,
    bits_from_likelihoods,
    deadzone_rounding,
    quantize_pmf,
    quantize_symbols,
    use_training_quantization,
)
from codec.errors import BitstreamError

ODD_SHAPES = [(1, 8, 5, 7), (2, 8, 3, 1), (1, 8, 1, 1), (3, 8, 2, 9, 2), (2, 8, 11)]


def gaussian_params(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, means, scales): scales log-uniform in [0.05, 60], means in [-20, 20], y ~ N(means, scales)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(shape, generator=g) - 0.5) * 40
    scales = torch.exp(torch.empty(shape).uniform_(np.log(0.05), np.log(60), generator=g))
    y = means + torch.randn(shape, generator=g) * scales
    return y, means, scales


@pytest.fixture(scope="module", params=sorted(ENTROPY_MODELS))
def gaussian(request) -> GaussianConditional:
    """y's conditional entropy model, each distribution (`GaussianConditional`, `LaplaceConditional`)."""
    return ENTROPY_MODELS[request.param]().eval()


@pytest.fixture(scope="module")
def prior() -> FactorizedPrior:
    """A factorized prior fitted for a few steps to Laplace data of scale 2 around channel-dependent centres."""
    torch.manual_seed(0)
    model = FactorizedPrior(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    centres = torch.linspace(-6, 6, 8).view(1, 8, 1, 1)
    laplace = torch.distributions.Laplace(0.0, 2.0)
    for _ in range(150):
        z = centres + laplace.sample((4, 8, 8, 8))
        _, likelihoods = model(z, training=True)
        loss = bits_from_likelihoods(likelihoods) / z.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.update()
    return model.eval()


def laplace_batch(seed: int, shape: tuple[int, ...] = (2, 8, 16, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g) - 0.5
    return torch.linspace(-6, 6, 8).view(1, 8, 1, 1) - 2.0 * torch.sign(u) * torch.log1p(-2 * u.abs())


# ----------------------------------------------------------------------------------------------------------------
# Exact round trips
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_factorized_round_trip_is_bitwise_the_eval_forward(prior: FactorizedPrior, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(len(shape) + shape[0])
    z = torch.randn(shape, generator=g) * 4
    flat = z.view(-1)
    flat[::3] += 300.0  # far outside every channel's table: escapes
    flat[1::3] -= 300.0
    outliers = torch.tensor([1e4, -7e5, 2.5e9, -1e30])  # the last two are clamped to +-2**30, in forward too
    flat[torch.linspace(0, flat.numel() - 1, outliers.numel()).long()] = outliers
    z_hat, _ = prior(z, training=False)
    decoded = prior.decompress(prior.compress(z), z.shape)
    assert decoded.dtype == torch.float32 and decoded.shape == z.shape
    assert torch.equal(decoded, z_hat)
    in_range = z.abs() < 1e6
    assert torch.all((z_hat - z)[in_range].abs() <= 0.5)


@pytest.mark.parametrize("shape", [(1, 8, 5, 7), (2, 3, 1, 1), (1, 16, 9, 13), (3, 4, 2, 2, 5)])
def test_gaussian_round_trip_is_bitwise_the_eval_forward(gaussian: GaussianConditional, shape) -> None:
    y, means, scales = gaussian_params(shape, seed=sum(shape))
    flat = y.view(-1)
    flat[::7] += 300.0  # far outside the support of every table: escapes
    flat[3::7] -= 300.0
    flat[5::11] = 1e12  # beyond MAX_ABS_SYMBOL: clamped, identically in forward and in coding
    scales.view(-1)[::5] = 1e-4  # below the scale bound
    scales.view(-1)[1::5] = 1e4  # above the table
    y_hat, _ = gaussian(y, means, scales, training=False)
    decoded = gaussian.decompress(gaussian.compress(y, means, scales), means, scales)
    assert torch.equal(decoded, y_hat)
    assert float((y_hat - means).abs().max()) <= MAX_ABS_SYMBOL + 1


def test_gaussian_reconstruction_uses_the_mean_grid(gaussian: GaussianConditional) -> None:
    y, means, scales = gaussian_params((1, 4, 8, 8), seed=3)
    y_hat, _ = gaussian(y, means, scales, training=False)
    mean_q = torch.round(means * 64) / 64
    assert torch.equal(y_hat - mean_q, torch.round(y - mean_q))


def test_deadzone_rounds_toward_the_centre() -> None:
    """A dead zone of d: |r| < 1/2 + d codes 0, and every symbol moves toward the centre by at most one step."""
    r = torch.tensor([-2.7, -1.6, -0.64, -0.5, -0.2, 0.0, 0.2, 0.5, 0.64, 0.66, 1.6, 2.64, 2.66])
    assert quantize_symbols(r, torch.zeros(())).tolist() == [-3, -2, -1, -0, -0, 0, 0, 0, 1, 1, 2, 3, 3]
    assert quantize_symbols(r, torch.zeros(()), 0.15).tolist() == [-3, -1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3]
    y, means, _ = gaussian_params((2, 4, 9, 9), seed=5)
    plain, dead = quantize_symbols(y, means), quantize_symbols(y, means, 0.3)
    assert torch.all(dead.abs() <= plain.abs()) and torch.all(plain.abs() - dead.abs() <= 1)
    assert torch.all(dead[(y - means).abs() < 0.8] == 0)


def test_deadzone_stream_decodes_exactly_and_costs_less(gaussian: GaussianConditional) -> None:
    """Inside `deadzone_rounding` the encoder's forward and its strings agree (the decoder, which never knows the
    dead zone, reads the forward's y_hat bit for bit), the string is shorter, and outside it nothing changed."""
    y, means, scales = gaussian_params((1, 16, 12, 12), seed=11)
    scales = scales.clamp(0.3, 3.0)
    plain = gaussian.compress(y, means, scales)
    with deadzone_rounding(0.25):
        y_hat, _ = gaussian(y, means, scales, training=False)
        string = gaussian.compress(y, means, scales)
    assert torch.equal(gaussian.decompress(string, means, scales), y_hat)
    assert len(string) < len(plain)
    assert gaussian.compress(y, means, scales) == plain
    with pytest.raises(ValueError, match="deadzone"), deadzone_rounding(0.5):
        pass


def test_empty_tensors_give_empty_strings(prior: FactorizedPrior, gaussian: GaussianConditional) -> None:
    z = torch.zeros(0, 8, 4, 4)
    assert prior.compress(z) == b""
    assert prior.decompress(b"", z.shape).shape == z.shape
    y = torch.zeros(1, 0, 4)
    assert gaussian.compress(y, y, y + 1) == b""
    assert gaussian.decompress(b"", y, y + 1).shape == y.shape


# ----------------------------------------------------------------------------------------------------------------
# Rates: real bytes against the likelihood estimate
# ----------------------------------------------------------------------------------------------------------------


def test_factorized_bytes_match_the_estimate_after_fitting(prior: FactorizedPrior) -> None:
    z = laplace_batch(seed=1)
    _, likelihoods = prior(z, training=False)
    estimated = float(bits_from_likelihoods(likelihoods.detach()))
    actual = 8 * len(prior.compress(z))
    assert estimated / z.numel() < 3.6  # the fit converged: Laplace(2) has log2(4e) = 3.44 bits per sample
    assert abs(actual - estimated) <= 0.02 * estimated + 64


def test_factorized_fit_lowers_the_rate(prior: FactorizedPrior) -> None:
    torch.manual_seed(0)
    untrained = FactorizedPrior(8)
    untrained.update()
    z = laplace_batch(seed=2)
    assert len(prior.compress(z)) < 0.8 * len(untrained.compress(z))


def test_gaussian_bytes_match_the_estimate(gaussian: GaussianConditional) -> None:
    y, means, scales = gaussian_params((1, 32, 16, 16), seed=4)
    _, likelihoods = gaussian(y, means, scales, training=False)
    estimated = float(bits_from_likelihoods(likelihoods.detach()))
    actual = 8 * len(gaussian.compress(y, means, scales))
    assert estimated <= actual <= 1.03 * estimated + 64  # the scale table rounds scales up: a small overhead


def test_bits_from_likelihoods() -> None:
    assert float(bits_from_likelihoods(torch.tensor([0.5, 0.25, 1.0]))) == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------------------------------
# Robustness to float noise between encoder and decoder (docs/DESIGN.md, section 4)
# ----------------------------------------------------------------------------------------------------------------


def test_gaussian_decodes_with_noisy_parameters(gaussian: GaussianConditional) -> None:
    y, means, scales = gaussian_params((1, 8, 16, 16), seed=5)
    data = gaussian.compress(y, means, scales)
    y_hat, _ = gaussian(y, means, scales, training=False)
    g = torch.Generator().manual_seed(6)
    noisy_means = means + 1e-6 * torch.randn(means.shape, generator=g)
    noisy_scales = scales * (1 + 1e-6 * torch.randn(scales.shape, generator=g))
    assert not torch.equal(noisy_means, means) and not torch.equal(noisy_scales, scales)

    mean_q, indexes = gaussian._coding_params(means, scales)
    noisy_mean_q, noisy_indexes = gaussian._coding_params(noisy_means, noisy_scales)
    assert torch.equal(noisy_indexes, indexes)  # no scale crossed a table boundary (1 in ~2.5e4 would, 256 levels)
    moved = noisy_mean_q != mean_q
    assert int(moved.sum()) <= 3  # a mean crossing the 1/64 grid is rare (about 1 in 2e4)

    decoded = gaussian.decompress(data, noisy_means, noisy_scales)
    assert torch.equal(decoded[~moved], y_hat[~moved])  # bit for bit
    assert torch.equal(decoded[moved] - y_hat[moved], noisy_mean_q[moved] - mean_q[moved])  # one grid step


def test_coding_params_are_exact_functions_of_the_inputs(gaussian: GaussianConditional) -> None:
    _, means, scales = gaussian_params((2, 8, 4, 4), seed=7)
    table = gaussian.scale_table
    mean_q, indexes = gaussian._coding_params(means.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), scales)
    assert torch.equal(mean_q, torch.round(means * 64) / 64)
    if isinstance(gaussian, LaplaceConditional):  # the nearest table entry, in log
        nearest = (table.double().log()[None] - scales.double().flatten()[:, None].log()).abs().argmin(dim=1)
        assert torch.equal(indexes.flatten(), nearest)
    else:  # the smallest table entry >= the scale
        assert torch.all(table[indexes] >= torch.minimum(scales, table[-1]))
        below = indexes > 0
        assert torch.all(table[indexes[below] - 1] < scales[below])
    assert torch.allclose(table.double(), gaussian.default_scale_table().float().double())


# ----------------------------------------------------------------------------------------------------------------
# Training mode
# ----------------------------------------------------------------------------------------------------------------


def test_factorized_training_forward_has_gradients() -> None:
    torch.manual_seed(1)
    model = FactorizedPrior(4).train()
    z = (torch.randn(2, 4, 6, 6) * 3).requires_grad_()
    z_tilde, likelihoods = model(z)
    assert not torch.equal(z_tilde, torch.round(z_tilde))  # noise, not rounding
    assert torch.all(likelihoods > 0) and torch.all(likelihoods <= 1)
    bits_from_likelihoods(likelihoods).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_gaussian_training_forward_has_gradients(gaussian: GaussianConditional) -> None:
    y, means, scales = (t.clone().requires_grad_() for t in gaussian_params((1, 4, 5, 5), seed=8))
    y_tilde, likelihoods = gaussian(y, means, scales, training=True)
    assert float((y_tilde - y).detach().abs().max()) <= 0.5
    bits_from_likelihoods(likelihoods).backward()
    for tensor in (y, means, scales):
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_mixed_quantization_decodes_as_the_coder_and_rates_as_the_noise(gaussian: GaussianConditional) -> None:
    """Training with "mixed" quantization: y_hat is the evaluation's rounding (what the decoder will see, mean
    included) with y's gradient passed straight through; the likelihoods are those of the noisy y, draw for draw."""
    model, reference = type(gaussian)(), type(gaussian)()
    y, means, scales = gaussian_params((1, 4, 5, 5), seed=9)
    y.requires_grad_()
    use_training_quantization(model, "mixed")
    torch.manual_seed(3)
    y_hat, likelihoods = model(y, means, scales, training=True)
    torch.manual_seed(3)
    _, noisy_likelihoods = reference(y, means, scales, training=True)
    assert torch.equal(y_hat.detach(), model(y.detach(), means, scales, training=False)[0])
    assert torch.equal(likelihoods, noisy_likelihoods)
    y_hat.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))
    with pytest.raises(ValueError, match="quantization"):
        use_training_quantization(model, "round")


def test_likelihoods_stay_float32_under_bf16_autocast(prior: FactorizedPrior, gaussian: GaussianConditional) -> None:
    """`train --mixed-precision bf16` autocasts matrix products to bf16 (8 significant bits): the entropy models
    compute their likelihoods, the rate training minimises, in float32 anyway, from widened inputs; gradients
    still reach bf16 inputs."""
    y, means, scales = gaussian_params((2, 8, 5, 7), seed=3)
    z = y / 8
    with torch.no_grad():
        expected = [gaussian(y, means, scales)[1], prior(z)[1]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            same_inputs = [gaussian(y, means, scales)[1], prior(z)[1]]
            rounded_inputs = [gaussian(y.bfloat16(), means.bfloat16(), scales.bfloat16())[1], prior(z.bfloat16())[1]]
    assert all(torch.equal(a, b) for a, b in zip(same_inputs, expected))  # the prior's products are not bf16
    assert all(p.dtype == torch.float32 for p in rounded_inputs)
    z_bf16 = z.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bits_from_likelihoods(prior(z_bf16, training=True)[1]).backward()
    assert z_bf16.grad.dtype == torch.bfloat16 and z_bf16.grad.abs().sum() > 0


def test_likelihoods_are_bounded_below(gaussian: GaussianConditional) -> None:
    y = torch.full((1, 1, 2, 2), 1e3)
    _, likelihoods = gaussian(y, torch.zeros_like(y), torch.full_like(y, 0.2), training=False)
    assert torch.allclose(likelihoods, torch.full_like(likelihoods, 1e-9))


# ----------------------------------------------------------------------------------------------------------------
# Damaged strings, determinism, state
# ----------------------------------------------------------------------------------------------------------------


def damaged_variants(data: bytes) -> list[bytes]:
    rng = np.random.default_rng(0)
    variants = [data[:-4], data[4:], data[: len(data) // 2], data[:-1], data + b"\x00\x00\x00\x00", data + data[:4]]
    variants += [bytes(rng.integers(0, 256, len(data), dtype=np.uint8)), b"", b"\x01\x00\x00\x00"]
    for position in rng.choice(8 * len(data), size=64, replace=False):
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        variants.append(bytes(flipped))
    return variants


def test_damaged_strings_raise(prior: FactorizedPrior, gaussian: GaussianConditional) -> None:
    z = laplace_batch(seed=9, shape=(1, 8, 4, 4))
    data = prior.compress(z)
    for damaged in damaged_variants(data):
        with pytest.raises(BitstreamError):
            prior.decompress(damaged, z.shape)
    with pytest.raises(BitstreamError):
        prior.decompress(data, (1, 8, 4, 5))  # more symbols than were coded

    y, means, scales = gaussian_params((1, 8, 4, 4), seed=9)
    data = gaussian.compress(y, means, scales)
    for damaged in damaged_variants(data):
        with pytest.raises(BitstreamError):
            gaussian.decompress(damaged, means, scales)
    with pytest.raises(BitstreamError):
        gaussian.decompress(data, means[:, :4], scales[:, :4])  # fewer symbols than were coded


def test_compression_is_deterministic_and_survives_a_state_dict(prior: FactorizedPrior) -> None:
    z = laplace_batch(seed=10)
    data = prior.compress(z)
    assert prior.compress(z.clone()) == data
    fresh = FactorizedPrior(8)  # different random biases, no tables yet
    with pytest.raises(RuntimeError, match="update"):
        fresh.compress(z)
    fresh.load_state_dict(prior.state_dict())
    fresh.eval()
    assert fresh.compress(z) == data
    assert torch.equal(fresh.decompress(data, z.shape), prior(z, training=False)[0])


def test_gaussian_tables_are_deterministic(gaussian: GaussianConditional) -> None:
    other = type(gaussian)()
    for name in ("_frequencies", "_lengths", "_offsets", "scale_table"):
        assert torch.equal(getattr(other, name), getattr(gaussian, name)), name
    y, means, scales = gaussian_params((1, 8, 8, 8), seed=11)
    assert other.compress(y, means, scales) == gaussian.compress(y, means, scales)


def test_non_finite_inputs_are_rejected(prior: FactorizedPrior, gaussian: GaussianConditional) -> None:
    z = torch.zeros(1, 8, 2, 2)
    z[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        prior.compress(z)
    y = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError):
        gaussian.compress(y, y, torch.full_like(y, float("inf")))


def test_quantize_pmf_is_exact_and_keeps_every_symbol() -> None:
    freqs = quantize_pmf(np.array([0.5, 0.5 - 1e-12, 1e-12, 0.0]))
    assert freqs.sum() == 1 << 24 and freqs.min() >= 1 and freqs[0] >= freqs[1]


@pytest.mark.gpu
def test_eval_forward_on_cuda_matches_cpu_decoding(prior: FactorizedPrior) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gaussian = GaussianConditional().eval().cuda()
    y, means, scales = gaussian_params((1, 16, 8, 8), seed=12)
    y_hat, _ = gaussian(y.cuda(), means.cuda(), scales.cuda(), training=False)
    data = gaussian.compress(y.cuda(), means.cuda(), scales.cuda())
    assert torch.equal(gaussian.decompress(data, means, scales), y_hat.cpu())
    prior_cuda = FactorizedPrior(8)
    prior_cuda.load_state_dict(prior.state_dict())
    prior_cuda = prior_cuda.eval().cuda()
    z = laplace_batch(seed=13)
    assert torch.equal(prior.decompress(prior_cuda.compress(z.cuda()), z.shape), prior_cuda(z.cuda())[0].cpu())
