"""Motion: warping a known translation, the two flow estimators, and the MV codec (exact round trips, rates, QP,
gradients, damaged strings). Tiny seeded models on the CPU, 64x64 frames."""

from __future__ import annotations

import pytest
import torch
from conftest import as_if_trained, moving_clip

from codec.diffvc.latent_codec import real_bits
from codec.diffvc.motion import (
    DISFlow,
    DISFlowConfig,
    FlowEstimatorConfig,
    MotionCodec,
    MotionCodecConfig,
    SpyNetFlow,
    endpoint_error,
)
from codec.diffvc.warp import warp
from codec.errors import BitstreamError

SIZE = 64


def textured(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, textured RGB image [1, 3, H, W] in [0, 1] (sines plus a little seeded noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    image = torch.stack(
        [
            0.5 + 0.25 * torch.sin(xx / 5.0) + 0.12 * torch.cos(yy / 3.0),
            0.5 + 0.2 * torch.cos((xx + yy) / 7.0) + 0.1 * torch.sin(xx / 2.3),
            0.5 + 0.2 * torch.sin(yy / 4.0 + xx / 9.0),
        ]
    )
    return (image + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)[None]


def clip_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """(cur, ref) [1, 3, 64, 64] from the shared synthetic clip: the scene pans so that cur(p) = ref(p + (2, 1)),
    except for a bright 8x8 square that moves on its own."""
    frames = torch.from_numpy(moving_clip(frames=2, height=SIZE, width=SIZE).frames).permute(0, 3, 1, 2)
    frames = frames.float() / 255
    return frames[1:2], frames[0:1]


@pytest.fixture(scope="module")
def codec() -> MotionCodec:
    torch.manual_seed(0)
    model = MotionCodec(MotionCodecConfig.tiny()).eval()
    model.update()
    return model


@pytest.fixture(scope="module")
def flow() -> torch.Tensor:
    """A realistic flow [2, 2, 64, 64]: DIS on the synthetic clip, and a second item with another motion."""
    cur, ref = clip_pair()
    first = DISFlow()(cur, ref)
    yy, xx = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij"
    )
    second = torch.stack([3 * torch.sin(yy / 9), -2 + xx / 32])[None]  # shear plus a smooth vertical field
    return torch.cat([first, second])


# ----------------------------------------------------------------------------------------------------------------
# Warping and flow estimation
# ----------------------------------------------------------------------------------------------------------------


def test_warp_of_a_known_translation_matches_the_shifted_image() -> None:
    ref = textured(48, 64)
    dx, dy = 3, -2
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0], flow[:, 1] = dx, dy
    warped = warp(ref, flow)
    # warped(y, x) = ref(y + dy, x + dx): away from the borders (where warping clamps) it is an exact copy.
    expected = ref[:, :, 2 + dy : 46 + dy, 3 + dx : 61 + dx]
    assert torch.allclose(warped[:, :, 2:46, 3:61], expected, atol=1e-5)
    # A half-pixel shift is the average of the two neighbours (bilinear).
    flow_half = torch.zeros(1, 2, 48, 64)
    flow_half[:, 0] = 0.5
    half = warp(ref, flow_half)
    assert torch.allclose(half[..., :-1], (ref[..., :-1] + ref[..., 1:]) / 2, atol=1e-5)


def test_bicubic_warp_keeps_integer_shifts_and_loses_less_detail_at_half_pixels() -> None:
    """Bicubic warping copies integer shifts as bilinear does; repeated half-pixel shifts there and back (a reference
    chain resampled frame after frame) keep more of a textured picture than bilinear's averaging."""
    ref = textured(48, 64)
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0], flow[:, 1] = 2, -1
    assert torch.allclose(warp(ref, flow, "bicubic")[:, :, 3:45, 4:60], warp(ref, flow)[:, :, 3:45, 4:60], atol=1e-5)
    half = torch.zeros(1, 2, 48, 64)
    half[:, 0] = 0.5
    errors = {}
    for mode in ("bilinear", "bicubic"):
        x = ref
        for k in range(6):
            x = warp(x, half if k % 2 == 0 else -half, mode)
        errors[mode] = float((x - ref)[..., 4:-4].square().mean())
    assert errors["bicubic"] < 0.7 * errors["bilinear"], errors  # measured 0.58
    with pytest.raises(ValueError, match="interpolation"):
        warp(ref, flow, "lanczos")


def test_dis_recovers_a_global_translation() -> None:
    big = textured(96, 112, seed=1)
    dx, dy = 3, 2
    ref = big[:, :, 8:72, 8:104]
    cur = big[:, :, 8 + dy : 72 + dy, 8 + dx : 104 + dx]  # cur(p) = ref(p + (dx, dy))
    flow = DISFlow(DISFlowConfig("medium"))(cur, ref)
    assert flow.shape == (1, 2, 64, 96) and flow.dtype == torch.float32
    interior = flow[:, :, 8:-8, 8:-8]
    assert float((interior[:, 0] - dx).abs().median()) < 0.5
    assert float((interior[:, 1] - dy).abs().median()) < 0.5
    assert float(torch.linalg.vector_norm(interior - torch.tensor([dx, dy]).view(1, 2, 1, 1), dim=1).mean()) < 0.5
    assert torch.equal(DISFlow(DISFlowConfig("medium"))(cur, ref), flow)  # deterministic


def test_dis_follows_the_panning_clip() -> None:
    cur, ref = clip_pair()
    flow = DISFlow()(cur, ref)
    pan = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)
    error = torch.linalg.vector_norm(flow - pan, dim=1)
    assert float(error[:, 8:-8, 8:-8].median()) < 0.5
    # The flow aligns the reference: warping with it is closer to cur than no motion at all.
    assert float((warp(ref, flow) - cur)[..., 8:-8, 8:-8].abs().mean()) < 0.5 * float((ref - cur).abs().mean())


def test_spynet_gives_a_flow_of_the_input_size_and_trains_on_ground_truth() -> None:
    torch.manual_seed(0)
    net = SpyNetFlow(FlowEstimatorConfig.tiny()).train()
    cur, ref = textured(50, 70, seed=2), textured(50, 70, seed=3)  # not a multiple of the pyramid's 16
    flow = net(cur, ref)
    assert flow.shape == (1, 2, 50, 70) and bool(torch.isfinite(flow).all())
    target = torch.ones(1, 2, 50, 70)
    loss = endpoint_error(flow, target)
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name
        assert float(param.grad.abs().sum()) > 0, name


def test_endpoint_error() -> None:
    flow = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0], target[0, 1, 0, 0] = 3.0, 4.0  # one pixel off by a 3-4-5 vector
    assert float(endpoint_error(flow, target)) == pytest.approx(5 / 4)
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    assert float(endpoint_error(flow, target, mask)) == pytest.approx(5.0)


# ----------------------------------------------------------------------------------------------------------------
# MV codec
# ----------------------------------------------------------------------------------------------------------------


def test_motion_round_trip_is_bitwise(codec: MotionCodec, flow: torch.Tensor) -> None:
    qps = [5, 40]
    strings, coded = codec.compress(flow, qps)
    flow_hat = coded.hat
    assert flow_hat.dtype == torch.float32 and flow_hat.shape == flow.shape
    decoded = codec.decompress(strings, (SIZE, SIZE), qps)
    assert torch.equal(decoded, flow_hat)
    assert torch.equal(codec(flow, qps).hat, flow_hat)  # the evaluation-mode forward is the same decoder
    # Frame by frame, as a decoder meets them, gives the same result too.
    for i, qp in enumerate(qps):
        one_strings, one = codec.compress(flow[i : i + 1], qp)
        one_hat = one.hat
        assert torch.equal(codec.decompress(one_strings, (SIZE, SIZE), qp), one_hat)


def test_motion_bytes_match_the_estimate_and_fall_with_qp(codec: MotionCodec, flow: torch.Tensor) -> None:
    sizes = []
    for qp in (0, 21, 42, 63):
        strings, _ = codec.compress(flow[:1], qp)
        bits = real_bits(strings)
        with torch.no_grad():
            estimate = float(codec(flow[:1], qp).estimated_bits())
        assert bits > 0
        assert 0.5 * estimate <= bits <= 1.5 * estimate + 256, (qp, bits, estimate)
        sizes.append(bits)
    assert sizes[0] > sizes[-1]
    assert all(a >= b for a, b in zip(sizes, sizes[1:])), sizes


def test_motion_training_forward_has_finite_nonzero_gradients(flow: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = MotionCodec(MotionCodecConfig.tiny()).train()
    as_if_trained(model)
    out = model(flow, [10, 50])  # QPs on both sides of the middle anchors: every QP-scale row is used
    assert not torch.equal(out.hat, model.eval()(flow, [10, 50]).hat)  # noise in training, rounding in eval
    model.train()
    out = model(flow, [10, 50])
    lam = 0.01
    loss = out.estimated_bits() / flow[:, :1].numel() + lam * torch.mean((out.hat - flow) ** 2)
    assert bool(torch.isfinite(loss))
    loss.backward()
    # Every trainable parameter moves, the factorized prior's included (its quantiles are not parameters here:
    # update() finds them by bisection, so there is no auxiliary loss and no parameter without a gradient).
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name
        assert float(param.grad.abs().sum()) > 0, name


def test_motion_damaged_strings_raise_bitstream_errors(codec: MotionCodec, flow: torch.Tensor) -> None:
    strings, _ = codec.compress(flow[:1], 10)
    (s,) = strings  # one string: z's symbols, then y's
    assert len(s) >= 16
    damaged = [
        [s[:-4]],  # truncated
        [s[4:]],  # first word missing
        [s + b"\0\0\0\0"],  # trailing words
        [bytes([s[0] ^ 0x5A]) + s[1:]],  # flipped bits in the last-pushed word
        [s[:1] + bytes([s[1] ^ 0xFF]) + s[2:]],
        [],  # the string missing
        [s, b""],  # one string too many
        [s[:-1]],  # a byte missing
    ]
    for case in damaged:
        with pytest.raises(BitstreamError):
            codec.decompress(case, (SIZE, SIZE), 10)


def test_motion_rejects_sizes_that_are_not_padded() -> None:
    model = MotionCodec(MotionCodecConfig.tiny())
    with pytest.raises(ValueError):
        model(torch.zeros(1, 2, 48, 64), 10)


def test_full_config_is_wider() -> None:
    tiny, full = MotionCodecConfig.tiny(), MotionCodecConfig.full()
    assert full.channels > tiny.channels and full.y_channels > tiny.y_channels
    assert MotionCodecConfig.from_dict({**tiny.__dict__}) == tiny
    assert FlowEstimatorConfig.from_dict({"levels": 3, "widths": [8, 8]}).widths == (8, 8)
