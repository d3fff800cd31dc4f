"""Latent codecs and temporal contexts: exact decoding over a chain of P-frames (encoder and decoder each keep
their own decoded-picture buffer), rates against the likelihood estimate and the QP, training gradients, damaged
strings, context shapes. Tiny seeded models on the CPU, 64x64 frames (8x8 latents)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
import torch
from conftest import as_if_trained, moving_clip

from codec.diffvc.context import Contexts, TemporalContext, TemporalContextConfig, add_prediction
from codec.diffvc.latent import LatentSpaceConfig, PixelUnshuffleLatent
from codec.diffvc.latent_codec import (
    ContextualLatentCodec,
    ContextualLatentCodecConfig,
    IntraLatentCodec,
    IntraLatentCodecConfig,
    LatentCodingOutput,
    block_transform_matrix,
    real_bits,
)
from codec.diffvc.motion import DISFlow, MotionCodec, MotionCodecConfig
from codec.errors import BitstreamError

SIZE = 64
LATENT_HW = (SIZE // 8, SIZE // 8)


@dataclass
class Models:
    motion: MotionCodec
    context: TemporalContext
    intra: IntraLatentCodec
    inter: ContextualLatentCodec

    def contexts(self, reference: torch.Tensor, feature: torch.Tensor | None, flow: torch.Tensor) -> Contexts:
        """As `DiffVCModel.temporal_contexts`: C1..C3 and, for the residual (block) codec, the prediction."""
        contexts = self.context(reference, feature, flow)
        return add_prediction(contexts, reference, flow, PixelUnshuffleLatent(LatentSpaceConfig()).encode)


def build_models(seed: int) -> Models:
    torch.manual_seed(seed)
    models = Models(
        MotionCodec(MotionCodecConfig.tiny()),
        TemporalContext(TemporalContextConfig.tiny()),
        IntraLatentCodec(IntraLatentCodecConfig.tiny()),
        ContextualLatentCodec(ContextualLatentCodecConfig.tiny()),
    )
    for codec in (models.motion, models.intra, models.inter):
        codec.update()
    return models


@pytest.fixture(scope="module")
def models() -> Models:
    models = build_models(0)
    for module in (models.motion, models.context, models.intra, models.inter):
        module.eval()
    return models


@pytest.fixture(scope="module")
def space() -> PixelUnshuffleLatent:
    return PixelUnshuffleLatent(LatentSpaceConfig())


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """[6, 3, 64, 64] in [0, 1]: a panning textured scene with a moving square."""
    video = moving_clip(frames=6, height=SIZE, width=SIZE)
    return torch.from_numpy(video.frames).permute(0, 3, 1, 2).float() / 255


@dataclass
class Buffer:
    """What one side keeps between frames: the decoded frame, the DPB feature and the last P-frame's y_hat."""

    frame: torch.Tensor
    feature: torch.Tensor | None
    y_hat: torch.Tensor | None


def assert_same_output(a: LatentCodingOutput, b: LatentCodingOutput) -> None:
    assert torch.equal(a.latent_hat, b.latent_hat)
    assert torch.equal(a.feature, b.feature)
    assert torch.equal(a.y_hat, b.y_hat)


def assert_finite_nonzero_gradients(named_parameters) -> None:
    for name, param in named_parameters:
        assert param.grad is not None, f"{name} has no gradient"
        assert bool(torch.isfinite(param.grad).all()), f"{name} has a non-finite gradient"
        assert float(param.grad.abs().sum()) > 0, f"{name} has a zero gradient"


# ----------------------------------------------------------------------------------------------------------------
# Exact decoding over a sequence
# ----------------------------------------------------------------------------------------------------------------


def run_chain(models: Models, space, frames: torch.Tensor, qps: list[int], i_frame_feature: bool) -> None:
    """Code frames[0] as an I-frame and frames[1:] as P-frames (QP qps[t], cycled), decoding each one from its
    strings and the decoder's own buffer; assert every decoded quantity equals the encoder's, bit for bit."""
    qp = qps[0]
    strings, i_out = models.intra.compress(space.encode(frames[:1]), qp)
    i_dec = models.intra.decompress(strings, qp, LATENT_HW)
    assert_same_output(i_out, i_dec)
    encoder = Buffer(space.decode(i_out.latent_hat), i_out.feature if i_frame_feature else None, None)
    decoder = Buffer(space.decode(i_dec.latent_hat), i_dec.feature if i_frame_feature else None, None)
    estimator = DISFlow()
    with torch.no_grad():
        for t in range(1, frames.shape[0]):
            cur, qp = frames[t : t + 1], qps[t % len(qps)]
            # Encoder: estimate, code and decode the motion; contexts from its buffer; code the latent.
            mv_strings, mv = models.motion.compress(estimator(cur, encoder.frame), qp)
            flow_hat = mv.hat
            contexts = models.contexts(encoder.frame, encoder.feature, flow_hat)
            y_strings, out = models.inter.compress(space.encode(cur), contexts, encoder.y_hat, qp)
            assert real_bits(mv_strings) > 0 and real_bits(y_strings) > 0
            # Decoder: the same from the strings alone.
            flow_dec = models.motion.decompress(mv_strings, (SIZE, SIZE), qp)
            assert torch.equal(flow_dec, flow_hat)
            contexts_dec = models.contexts(decoder.frame, decoder.feature, flow_dec)
            dec = models.inter.decompress(y_strings, contexts_dec, decoder.y_hat, qp, LATENT_HW)
            assert_same_output(out, dec)
            encoder = Buffer(space.decode(out.latent_hat), out.feature, out.y_hat)
            decoder = Buffer(space.decode(dec.latent_hat), dec.feature, dec.y_hat)
    assert torch.equal(encoder.frame, decoder.frame)


@pytest.mark.parametrize("i_frame_feature", [True, False], ids=["dpb-feature", "pixels-only-after-I"])
def test_p_frame_chain_decodes_bitwise(models: Models, space, frames: torch.Tensor, i_frame_feature: bool) -> None:
    """An I-frame and 5 P-frames at changing QPs (prev_y_hat crosses QPs); the first P-frame has no previous y and,
    in one variant, no DPB feature (as after an I-frame from a classical codec)."""
    run_chain(models, space, frames, [12, 30, 7, 50, 12, 63], i_frame_feature)


def test_long_p_frame_chain_decodes_bitwise(models: Models, space) -> None:
    """docs/DESIGN.md section 4: exact decoding over a long sequence (an I-frame and 47 P-frames)."""
    video = moving_clip(frames=48, height=SIZE, width=SIZE, seed=5)
    frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2).float() / 255
    run_chain(models, space, frames, [0, 20, 40, 63, 33], i_frame_feature=True)


def test_eval_forward_is_the_coded_reconstruction(models: Models, space, frames: torch.Tensor) -> None:
    """The evaluation-mode forward (used for validation) is exactly what compress and the decoder produce."""
    flow = torch.zeros(1, 2, SIZE, SIZE)
    with torch.no_grad():
        contexts = models.contexts(frames[:1], None, flow)
        prev = models.inter(space.encode(frames[1:2]), contexts, None, 20).y_hat
        latent = space.encode(frames[2:3])
        _, out = models.inter.compress(latent, contexts, prev, 20)
        assert_same_output(models.inter(latent, contexts, prev, 20), out)
        _, out = models.intra.compress(latent, 20)
        assert_same_output(models.intra(latent, 20), out)


def test_intra_round_trip_is_bitwise_for_a_batch(models: Models, space, frames: torch.Tensor) -> None:
    latents = space.encode(frames[:3])
    qps = [0, 30, 63]
    strings, out = models.intra.compress(latents, qps)
    assert_same_output(models.intra.decompress(strings, qps, LATENT_HW), out)
    assert out.latent_hat.shape == latents.shape and out.feature.shape == (3, 64, 8, 8)
    assert out.y_hat.shape == (3, 192, 8, 8)  # the block transform: y at the latent's resolution


# ----------------------------------------------------------------------------------------------------------------
# Rates
# ----------------------------------------------------------------------------------------------------------------


def check_rates(code) -> None:
    """code(qp) -> (strings, output with eval likelihoods). Real bits near the estimate; fewer bits at higher QP."""
    sizes = []
    for qp in (0, 21, 42, 63):
        strings, out = code(qp)
        bits, estimate = real_bits(strings), float(out.estimated_bits())
        assert bits > 0
        assert 0.5 * estimate <= bits <= 1.5 * estimate + 256, (qp, bits, estimate)
        sizes.append(bits)
    assert sizes[0] > sizes[-1]
    assert all(a >= b for a, b in zip(sizes, sizes[1:])), sizes


def test_intra_rates(models: Models, space, frames: torch.Tensor) -> None:
    latent = space.encode(frames[:1])
    check_rates(lambda qp: models.intra.compress(latent, qp))


def test_contextual_rates(models: Models, space, frames: torch.Tensor) -> None:
    ref, cur = frames[0:1], frames[1:2]
    flow = torch.zeros(1, 2, SIZE, SIZE)
    flow[:, 0], flow[:, 1] = -2.0, -1.0  # an approximate flow is enough for the contexts
    with torch.no_grad():
        contexts = models.contexts(ref, None, flow)
    latent = space.encode(cur)
    check_rates(lambda qp: models.inter.compress(latent, contexts, None, qp))


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def test_p_frame_training_has_finite_nonzero_gradients(space, frames: torch.Tensor) -> None:
    """Two P-frames trained jointly, as a P-frame stage would: the first builds its contexts from pixels (no DPB
    feature) and has no previous y; the second uses the first's feature and y_hat. So every branch is used."""
    models = build_models(1)
    as_if_trained(models.motion, models.inter)
    for module in (models.motion, models.context, models.inter):
        module.train()
    qps = [10, 50]  # on both sides of the middle anchors: every QP-scale row gets a gradient
    batch = frames[:3].repeat(2, 1, 1, 1).view(2, 3, 3, SIZE, SIZE).transpose(0, 1)  # [t, N, 3, H, W]
    flow = DISFlow()(batch[1], batch[0])
    lam = 0.05
    ref, feature, prev_y = batch[0], None, None
    loss = torch.zeros(())
    for t in (1, 2):
        motion = models.motion(flow, qps)
        contexts = models.contexts(ref, feature, motion.hat)
        latent = space.encode(batch[t])
        out = models.inter(latent, contexts, prev_y, qps)
        rate = (motion.estimated_bits() + out.estimated_bits()) / (2 * SIZE * SIZE)  # bits per pixel
        loss = loss + rate + lam * torch.mean((out.latent_hat - latent) ** 2)
        ref, feature, prev_y = space.decode(out.latent_hat), out.feature, out.y_hat
    assert bool(torch.isfinite(loss))
    loss.backward()
    # The block codec (tiny) reads C1 only, the fusion of all three scales: the C2/C3 output heads get no gradient.
    unused = ("out2.", "out3.") if models.inter.config.transform == "block" else ()
    for prefix, module in (("motion", models.motion), ("context", models.context), ("inter", models.inter)):
        assert_finite_nonzero_gradients(
            (f"{prefix}.{n}", p)
            for n, p in module.named_parameters()
            if not (prefix == "context" and n.startswith(unused))
        )


def test_intra_training_has_finite_nonzero_gradients(space, frames: torch.Tensor) -> None:
    torch.manual_seed(2)
    model = IntraLatentCodec(IntraLatentCodecConfig.tiny()).train()
    as_if_trained(model)
    latent = space.encode(frames[:2])
    out = model(latent, [10, 50])
    loss = out.estimated_bits() / (2 * SIZE * SIZE) + 0.05 * torch.mean((out.latent_hat - latent) ** 2)
    assert bool(torch.isfinite(loss))
    loss.backward()
    assert_finite_nonzero_gradients(model.named_parameters())


# ----------------------------------------------------------------------------------------------------------------
# Damaged strings and bad arguments
# ----------------------------------------------------------------------------------------------------------------


def damaged_versions(strings: list[bytes]) -> list[list[bytes]]:
    (s,) = strings  # one string per frame: z's symbols, then y's
    assert len(s) >= 16
    return [
        [s[:-4]],
        [s[4:]],
        [s + b"\0\0\0\0"],
        [bytes([s[0] ^ 0x5A]) + s[1:]],
        [s[:1] + bytes([s[1] ^ 0xFF]) + s[2:]],
        [],
        [s, b""],
        [b""],
    ]


def test_damaged_strings_raise_bitstream_errors(models: Models, space, frames: torch.Tensor) -> None:
    latent = space.encode(frames[:1])
    strings, _ = models.intra.compress(latent, 5)
    for case in damaged_versions(strings):
        with pytest.raises(BitstreamError):
            models.intra.decompress(case, 5, LATENT_HW)
    with torch.no_grad():
        contexts = models.contexts(frames[:1], None, torch.zeros(1, 2, SIZE, SIZE))
    strings, _ = models.inter.compress(space.encode(frames[1:2]), contexts, None, 5)
    for case in damaged_versions(strings):
        with pytest.raises(BitstreamError):
            models.inter.decompress(case, contexts, None, 5, LATENT_HW)


def test_contextual_codec_checks_its_conditions(models: Models, space, frames: torch.Tensor) -> None:
    latent = space.encode(frames[:1])
    with torch.no_grad():
        contexts = models.contexts(frames[:1], None, torch.zeros(1, 2, SIZE, SIZE))
    with pytest.raises(ValueError):
        models.inter(latent, Contexts(contexts.c1, contexts.c3, contexts.c3), None, 5)
    with pytest.raises(ValueError):
        models.inter(latent, contexts, torch.zeros(1, 7, 2, 2), 5)
    with pytest.raises(ValueError, match="prediction"):
        models.inter(latent, Contexts(contexts.c1, contexts.c2, contexts.c3), None, 5)
    with pytest.raises(ValueError):
        models.intra(latent, 64)


# ----------------------------------------------------------------------------------------------------------------
# Temporal contexts
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("warped_frame", [True, False])
def test_temporal_context_shapes(warped_frame: bool) -> None:
    torch.manual_seed(3)
    config = TemporalContextConfig(feature_channels=16, channels=(24, 32, 40), use_warped_frame=warped_frame)
    context = TemporalContext(config)
    frame = torch.rand(2, 3, 64, 96)
    flow = torch.randn(2, 2, 64, 96)
    for feature in (None, torch.randn(2, 16, 8, 12)):
        out = context(frame, feature, flow)
        assert out.c1.shape == (2, 24, 8, 12)  # 1/8: the latent's resolution
        assert out.c2.shape == (2, 32, 4, 6)  # 1/16
        assert out.c3.shape == (2, 40, 2, 3)  # 1/32
    with pytest.raises(ValueError):
        context(frame, torch.randn(2, 8, 8, 12), flow)


def test_temporal_context_follows_the_flow() -> None:
    """Warping is applied at every scale: for a reference moved by 32 pixels (a whole pixel at 1/8, 1/16 and
    1/32), the flow that compensates the move brings each context, in its central half, far closer to that of the
    unmoved reference than no flow does. (Not equal: the two crops' features differ near their borders, and the
    fusion's receptive field reaches far across these small maps.)"""
    torch.manual_seed(4)
    context = TemporalContext(TemporalContextConfig(feature_channels=8, channels=(16, 16, 16))).eval()
    big = textured_batch(256, 288)
    ref, shifted = big[..., :, :256], big[..., :, 32:]  # shifted(p) = ref(p + (32, 0))
    zero = torch.zeros(1, 2, 256, 256)
    back = zero.clone()
    back[:, 0] = -32.0  # warp(shifted, back)(p) = shifted(p - (32, 0)) = ref(p)
    with torch.no_grad():
        pairs = ((ref, zero), (shifted, back), (shifted, zero))
        still, moved, unaligned = (context(frame, None, flow) for frame, flow in pairs)
    for name in ("c1", "c2", "c3"):
        target = getattr(still, name)
        k = target.shape[-1] // 4
        window = (..., slice(k, -k), slice(k, -k))  # the central half, away from the crops' borders
        aligned_error = (getattr(moved, name) - target)[window].abs().mean()
        unaligned_error = (getattr(unaligned, name) - target)[window].abs().mean()
        assert float(aligned_error) < 0.25 * float(unaligned_error), name


def textured_batch(height: int, width: int) -> torch.Tensor:
    """A smooth textured image [1, 3, H, W] in [0, 1] whose content varies along x (so a shift shows)."""
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    image = torch.stack(
        [
            0.5 + 0.4 * torch.sin(xx / 7.0 + yy / 11.0),
            0.5 + 0.4 * torch.cos(xx / 13.0),
            0.5 + 0.3 * torch.sin(xx / 5.0) * torch.cos(yy / 9.0),
        ]
    )
    return image[None]


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


def test_full_configs_run_on_the_four_channel_latent() -> None:
    torch.manual_seed(5)
    context = TemporalContext(TemporalContextConfig.full())
    inter = ContextualLatentCodec(ContextualLatentCodecConfig.full())
    intra = IntraLatentCodec(IntraLatentCodecConfig.full())
    assert inter.config.latent_channels == intra.config.latent_channels == 4
    assert inter.config.context_channels == context.config.channels
    latent = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        contexts = context(torch.rand(1, 3, 64, 64), None, torch.zeros(1, 2, 64, 64))
        assert inter(latent, contexts, None, 30).latent_hat.shape == latent.shape
        assert intra(latent, 30).feature.shape == (1, intra.config.feature_channels, 8, 8)


def test_configs_round_trip_through_dicts() -> None:
    import json

    for cls in (IntraLatentCodecConfig, ContextualLatentCodecConfig, TemporalContextConfig):
        for config in (cls.tiny(), cls.full()):
            assert cls.from_dict(json.loads(json.dumps(asdict(config)))) == config
    with pytest.raises(ValueError):
        IntraLatentCodecConfig.from_dict({"latent_channel": 4})


def test_block_transform_is_orthonormal_and_puts_flat_grey_in_one_coefficient():
    """The tiny preset's skeleton: JPEG-like, an orthonormal colour transform Kronecker the 8x8 DCT-II."""
    transform = block_transform_matrix(192)
    torch.testing.assert_close(transform @ transform.T, torch.eye(192), atol=1e-5, rtol=0)
    grey = PixelUnshuffleLatent(LatentSpaceConfig()).encode(torch.full((1, 3, 8, 8), 0.75))[0, :, 0, 0]  # [192]
    coefficients = transform @ grey
    assert coefficients.abs().argmax() == 0  # the luma-like DC
    torch.testing.assert_close(coefficients[1:], torch.zeros(191), atol=1e-5, rtol=0)
    torch.testing.assert_close(coefficients[0], torch.tensor(0.5 * 8 * 3**0.5))  # 0.5 in [-1, 1]; 64 px, 3 colours
    assert torch.equal(block_transform_matrix(100), torch.eye(100))  # not a PixelUnshuffle(8) latent: identity
