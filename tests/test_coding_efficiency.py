"""Where the bits go (issue [2.1]): the padding is not coded, still frames cost no motion, the quantizer is flat,
old streams are refused, the training data has tripod shots, and the drift target's floor is read off the anchor."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import EXAMPLE_CLIP, as_if_trained, moving_clip

from codec.bitstream import FORMAT_VERSION, read_stream
from codec.diffvc.config import tiny_config
from codec.diffvc.entropy import FactorizedPrior, GaussianConditional, SegmentReader
from codec.diffvc.latent_codec import IntraLatentCodec, IntraLatentCodecConfig
from codec.diffvc.model import DiffVCModel
from codec.diffvc.qp import QPScales, QPScalesConfig, flatten_log_scales
from codec.errors import BitstreamError
from codec.registry import get_codec
from codec.video import Video, read_video
from tools.coding_efficiency import DRIFT_DROP_DB, anchor_drift

RANDOM = "pack=random-tiny"


# --- the padding is not coded ------------------------------------------------------------------------------


def test_gaussian_codes_only_the_region_and_decodes_its_mean_outside() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(1, 3, 6, 7, generator=gen) * 4
    means = torch.randn(1, 3, 6, 7, generator=gen)
    scales = torch.rand(1, 3, 6, 7, generator=gen) * 3 + 0.5
    gaussian = GaussianConditional()
    region = (4, 5)
    part = gaussian.compress(y, means, scales, region)
    whole = gaussian.compress(y, means, scales)
    assert len(part) < len(whole)
    decoded = gaussian.decompress(part, means, scales, region)
    expected, likelihoods = gaussian(y, means, scales, training=False, region=region)
    assert torch.equal(decoded, expected)
    mean_q = torch.round(means * 64) / 64
    assert torch.equal(decoded[..., 4:, :], mean_q[..., 4:, :]) and torch.equal(decoded[..., 5:], mean_q[..., 5:])
    assert torch.equal(decoded[..., :4, :5], (torch.round(y - mean_q) + mean_q)[..., :4, :5])
    assert bool((likelihoods[..., 4:, :] == 1).all()) and bool((likelihoods[..., :, 5:] == 1).all())


def test_factorized_prior_codes_only_the_region() -> None:
    prior = FactorizedPrior(4)
    prior.update()
    z = torch.randn(2, 4, 5, 3, generator=torch.Generator().manual_seed(1)) * 3
    data = prior.compress(z, (2, 2))
    decoded = prior.decompress(data, z.shape, (2, 2))
    expected, _ = prior(z, training=False, region=(2, 2))
    assert torch.equal(decoded, expected)
    assert bool((decoded[..., 2:, :] == prior.medians.view(1, -1, 1, 1)).all())
    assert len(data) < len(prior.compress(z))


def test_latent_codec_round_trip_with_a_picture_smaller_than_its_padding() -> None:
    torch.manual_seed(0)
    codec = IntraLatentCodec(IntraLatentCodecConfig.tiny()).eval()
    as_if_trained(codec)
    codec.update()
    latent = torch.rand(1, 192, 8, 16)
    valid = (5, 13)
    strings, out = codec.compress(latent, 30, valid)
    decoded = codec.decompress(strings, 30, (8, 16), valid)
    assert torch.equal(decoded.latent_hat, out.latent_hat)
    assert torch.equal(codec(latent, 30, valid).latent_hat, out.latent_hat)
    assert sum(map(len, strings)) < sum(map(len, codec.compress(latent, 30)[0]))


@pytest.fixture(scope="module")
def bbb_frame() -> Video:
    return read_video(EXAMPLE_CLIP, start=24, frames=1, size=(256, 144))


def test_a_144_row_picture_costs_less_than_its_192_row_padding(bbb_frame: Video) -> None:
    """What format version 1 coded (the replicate-padded 192 rows) against what version 2 codes (144 rows), with
    the learned intra codec (an HEVC I-frame codes its own picture size)."""
    padded = np.concatenate([bbb_frame.frames, np.repeat(bbb_frame.frames[:, -1:], 48, axis=1)], axis=1)
    codec = get_codec("condlc:intra=learned")
    picture = codec.encode(bbb_frame, 32)
    whole = codec.encode(Video(padded, bbb_frame.fps), 32)
    assert picture.num_bytes < 0.85 * whole.num_bytes
    assert np.array_equal(codec.decode(picture.bitstream).frames, picture.reconstruction.frames)


@pytest.mark.parametrize(
    ("version", "reason"),
    [(1, "padding"), (2, "motion and latent as two strings"), (3, "every diffusion step in the first P-frame")],
    ids=["v1", "v2", "v3"],
)
def test_retired_format_versions_are_refused_with_their_reason(bbb_frame: Video, version: int, reason: str) -> None:
    stream = bytearray(get_codec(f"condlc:{RANDOM}").encode(bbb_frame, 40).bitstream)
    assert stream[4] == FORMAT_VERSION == 4
    stream[4] = version
    with pytest.raises(BitstreamError, match=f"format version {version} is no longer decoded.*{reason}.*re-encode"):
        read_stream(bytes(stream))


# --- motion that costs nothing when nothing moves ----------------------------------------------------------


@pytest.mark.parametrize("spec", ["condlc", "diffvc:filter=auto"])
def test_a_still_clip_refines_its_i_frame_once_then_skips(bbb_frame: Video, spec: str) -> None:
    """Issue [2.1]'s target: on a still clip each P-frame costs at most 2 % of the I-frame. The first P-frame would
    refine the HEVC I-frame where that bought its bits' worth (the embedded pack finds it does not, at the lambda
    it was trained at); the frames after it have nothing left to code and are skipped (no strings), so the quality
    holds to the bit: no generation loss (the diffusion stage's frame is shown again too, under each filter level
    auto tries). Without skipping they code zero motion and a little latent each."""
    still = Video(np.repeat(bbb_frame.frames, 4, axis=0), bbb_frame.fps)
    codec = get_codec(spec)
    encoded = codec.encode(still, 32)
    _, units = read_stream(encoded.bitstream)
    assert [len(u.strings) for u in units][2:] == [0, 0]  # the first P-frame may refine the I-frame, if it pays
    assert encoded.frame_bits[2:] == [0, 0]
    assert max(encoded.frame_bits[1:]) <= 0.02 * encoded.frame_bits[0], encoded.frame_bits
    decoded = codec.decode(encoded.bitstream).frames
    assert np.array_equal(decoded, encoded.reconstruction.frames)
    assert np.array_equal(decoded[1], decoded[3])

    coded = get_codec(f"{spec}:skip=false").encode(still, 32)
    units = read_stream(coded.bitstream)[1]
    assert [len(u.strings) for u in units] == [1, 1, 1, 1]
    assert motion_flags(units)[1:] == [False, False]  # the P-frames on a P-frame reference: no motion
    assert coded.bitstream[: len(encoded.bitstream)] != encoded.bitstream


def motion_flags(units) -> list[bool]:
    """The motion flag that opens each P-frame's one string (docs/FORMAT.md)."""
    return [SegmentReader(u.strings[0]).read_flag() for u in units if u.frame_type == "P"]


def test_moving_and_zero_motion_p_frames_mix_in_one_exact_stream() -> None:
    frames = moving_clip(frames=5, height=48, width=80, seed=3).frames.copy()
    frames[2] = frames[1]  # a repeated frame among moving ones
    clip = Video(frames, 25)
    codec = get_codec(f"diffvc:{RANDOM}:skip=false")
    encoded = codec.encode(clip, 20)
    units = read_stream(encoded.bitstream)[1]
    assert [len(u.strings) for u in units] == [1] * 5
    assert set(motion_flags(units)) == {False, True}
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)


def test_a_p_frame_of_more_than_one_string_is_refused() -> None:  # one string: flag, motion, latent
    from codec.bitstream import FrameUnit, write_stream

    encoded = get_codec(f"condlc:{RANDOM}:skip=false").encode(moving_clip(frames=2, height=32, width=32, seed=1), 30)
    header, units = read_stream(encoded.bitstream)
    broken = write_stream(header, [units[0], FrameUnit("P", units[1].qp, units[1].strings * 2)])
    with pytest.raises(BitstreamError, match="P-frame with 2 strings"):
        get_codec(f"condlc:{RANDOM}").decode(broken)


@pytest.mark.parametrize("spec", ["condlc", "diffvc", "diffvc:reference=diffusion"])
def test_a_p_frame_of_no_strings_shows_the_last_frame_again_and_the_chain_goes_on(spec: str) -> None:
    """docs/FORMAT.md: a P-frame with no strings is skipped. Streams with frames blanked out by hand decode each
    skipped frame as the one shown before it (the diffusion stage's output too), and the coded frames after a skip
    refer to the same picture as before it (without a diffusion stage, whose noise follows the frame's index, they
    decode as where they were coded)."""
    from codec.bitstream import FrameUnit, write_stream

    codec = get_codec(f"{spec}:{RANDOM}:skip=false")
    encoded = codec.encode(moving_clip(frames=4, height=32, width=48, seed=2), 30)
    header, units = read_stream(encoded.bitstream)
    blank = FrameUnit("P", units[1].qp, ())
    frames = codec.decode(write_stream(header, [units[0], units[1], blank, blank])).frames
    assert np.array_equal(frames[:2], encoded.reconstruction.frames[:2])
    assert np.array_equal(frames[2], frames[1]) and np.array_equal(frames[3], frames[1])
    first_skipped = codec.decode(write_stream(header, [units[0], blank, units[1], blank])).frames
    assert np.array_equal(first_skipped[1], first_skipped[0])
    if spec == "condlc":
        assert np.array_equal(first_skipped[2], encoded.reconstruction.frames[1])


# --- a quantizer that stays sane ---------------------------------------------------------------------------


def test_flat_quantizer_shares_one_step_and_keeps_the_decoder_gain() -> None:
    scales = QPScales(QPScalesConfig(channels=6, per_channel=False))
    enc, dec = scales(torch.tensor([0, 40, 63]))
    assert enc.shape == (3, 1, 1, 1) and dec.shape == (3, 6, 1, 1)
    log_enc = torch.randn(4, 6)
    log_dec = torch.randn(4, 6)
    shared, new_dec = flatten_log_scales(log_enc, log_dec)
    assert shared.shape == (4, 1)
    torch.testing.assert_close(shared + new_dec, log_enc + log_dec)  # what the synthesis sees is kept


def test_the_tiny_preset_has_a_flat_quantization_matrix() -> None:
    config = tiny_config()
    assert not config.intra.qp_per_channel and not config.inter.qp_per_channel
    model = DiffVCModel(config)
    assert model.intra.qp_scales.log_enc.shape[1] == 1 and model.inter.qp_scales.log_enc.shape[1] == 1


def test_with_flat_quantizer_converts_a_per_channel_model() -> None:
    from dataclasses import replace

    from codec.train.stages import with_flat_quantizer

    config = tiny_config()
    per_channel = replace(
        config, intra=replace(config.intra, qp_per_channel=True), inter=replace(config.inter, qp_per_channel=True)
    )
    torch.manual_seed(0)
    model = DiffVCModel(per_channel)
    flat = with_flat_quantizer(model)
    assert not flat.config.intra.qp_per_channel and flat.intra.qp_scales.log_enc.shape == (4, 1)
    before = model.inter.qp_scales.log_enc + model.inter.qp_scales.log_dec
    after = flat.inter.qp_scales.log_enc + flat.inter.qp_scales.log_dec
    torch.testing.assert_close(after, before)
    assert torch.equal(flat.motion.qp_scales.log_enc, model.motion.qp_scales.log_enc)
    assert with_flat_quantizer(flat) is flat


# --- rate control --------------------------------------------------------------------------------------------


def test_intra_qp_offset_sets_the_i_frames_qp() -> None:
    clip = moving_clip(frames=4, height=32, width=32, seed=2)
    encoded = get_codec(f"condlc:{RANDOM}:intra_period=2:intra_qp_offset=-6").encode(clip, 30)
    assert [(u.frame_type, u.qp) for u in read_stream(encoded.bitstream)[1]] == [
        ("I", 24),
        ("P", 30),
        ("I", 24),
        ("P", 30),
    ]


# --- training data ---------------------------------------------------------------------------------------


def test_tripod_shots_without_patches_are_still(tmp_path) -> None:
    import cv2

    from codec.train.data import MotionRanges, SyntheticMotionClips

    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), moving_clip(frames=1, height=200, width=240, seed=4).frames[0][..., ::-1])
    clips = SyntheticMotionClips([photo], num_frames=4, crop=64, motion=MotionRanges(static_prob=1.0, max_patches=0))
    sample = clips[0]
    frames = sample["frames"]
    assert torch.equal(frames[0], frames[3]) and float(sample["flow"].abs().max()) == 0.0


# --- the reference chain (issue [2.2], item 1) -----------------------------------------------------------------


def test_codec_reference_decodes_exactly_and_refers_to_condlcs_reconstruction() -> None:
    """reference=codec: the DPB holds the latent codec's reconstruction, so the rate and the references are
    condlc's (same pack, same QP), while the frames shown are the diffusion stage's."""
    from codec.diffvc.codec import FLAG_CODEC_REFERENCE

    clip = moving_clip(frames=4, height=48, width=64, seed=6)
    codec = get_codec(f"diffvc:{RANDOM}:reference=codec")
    encoded = codec.encode(clip, 30)
    header, units = read_stream(encoded.bitstream)
    assert header.flags & FLAG_CODEC_REFERENCE
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)
    condlc = get_codec(f"condlc:{RANDOM}").encode(clip, 30)
    assert [u.strings for u in units] == [u.strings for u in read_stream(condlc.bitstream)[1]]
    assert read_stream(get_codec(f"diffvc:{RANDOM}").encode(clip, 30).bitstream)[0].flags & FLAG_CODEC_REFERENCE
    chained = get_codec(f"diffvc:{RANDOM}:reference=diffusion").encode(clip, 30)
    assert not read_stream(chained.bitstream)[0].flags & FLAG_CODEC_REFERENCE
    assert np.array_equal(get_codec(f"diffvc:{RANDOM}").decode(chained.bitstream).frames, chained.reconstruction.frames)


# --- HEVC-intra I-frames --------------------------------------------------------------------------------------


def test_hevc_intra_qp_matches_the_trade_off_of_the_learned_codec() -> None:
    from codec.diffvc.hevc_intra import hevc_qp

    qps = [hevc_qp(q) for q in range(64)]
    assert qps == sorted(qps) and qps[0] == 28 and qps[-1] == 49


@pytest.mark.parametrize("spec", [f"condlc:{RANDOM}:intra=hevc:intra_period=3", f"diffvc:{RANDOM}:intra=hevc"])
def test_hevc_intra_streams_decode_exactly(spec: str) -> None:
    from codec.diffvc.codec import FLAG_HEVC_INTRA

    clip = moving_clip(frames=4, height=36, width=52, seed=8)  # odd multiples: padded inside, not in the HEVC
    codec = get_codec(spec)
    encoded = codec.encode(clip, 30)
    header, units = read_stream(encoded.bitstream)
    assert header.flags & FLAG_HEVC_INTRA
    assert [u.strings[0][:4] for u in units if u.frame_type == "I"] == [b"\0\0\0\1"] * (1 + ("period=3" in spec))
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)


def test_a_damaged_hevc_i_frame_is_a_bitstream_error() -> None:
    """(libavcodec conceals a picture cut short, as in the anchors' streams; the unit CRC guards against that.)"""
    from codec.bitstream import FrameUnit, write_stream

    codec = get_codec(f"condlc:{RANDOM}:intra=hevc")
    header, units = read_stream(codec.encode(moving_clip(frames=2, height=32, width=32, seed=9), 30).bitstream)
    cut = FrameUnit("I", units[0].qp, (units[0].strings[0][:24],))  # parameter sets only, no picture
    for damaged in ([cut, units[1]], [FrameUnit("I", units[0].qp, (b"",)), units[1]]):
        with pytest.raises(BitstreamError):
            codec.decode(write_stream(header, damaged))


def test_hevc_i_frames_cost_less_than_learned_ones_at_a_matched_quality(bbb_frame: Video) -> None:
    """The measured reason for the switch (docs/RESULTS.md): at the same DiffVC QP the HEVC I-frame is both
    smaller and closer to the source than the learned one, with the embedded pack."""
    from codec.metrics import psnr

    learned = get_codec("condlc:intra=learned").encode(bbb_frame, 16)
    hevc = get_codec("condlc:intra=hevc").encode(bbb_frame, 16)
    quality = [float(psnr(bbb_frame.frames, e.reconstruction.frames).mean()) for e in (learned, hevc)]
    assert hevc.num_bytes < learned.num_bytes and quality[1] > quality[0]


def test_update_moves_a_pack_to_the_dense_scale_table_and_old_tables_still_load() -> None:
    from codec.diffvc.entropy import SCALE_TABLE, get_scale_table

    old = GaussianConditional(scale_table=get_scale_table(levels=64))
    new = GaussianConditional()
    new.load_state_dict(old.state_dict())  # a pack written with CompressAI's 64 levels keeps them
    assert new.scale_table.numel() == 64
    y = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 2
    means, scales = torch.zeros_like(y), torch.full_like(y, 0.8)
    assert torch.equal(new.decompress(old.compress(y, means, scales), means, scales), old(y, means, scales, False)[0])
    torch.manual_seed(0)
    codec = IntraLatentCodec(IntraLatentCodecConfig.tiny())
    codec.gaussian.load_state_dict(old.state_dict())
    codec.update()
    assert codec.gaussian.scale_table.numel() == SCALE_TABLE[2] == 256


def test_an_hevc_i_frame_below_qp_0_is_finer_than_at_qp_0() -> None:
    """intra_qp_offset reaches below QP 0 for HEVC I-frames (the trade-off's line extended); the unit keeps QP 0."""
    from codec.diffvc.hevc_intra import hevc_qp

    assert hevc_qp(-16) < hevc_qp(-8) < hevc_qp(0) == 28
    clip = moving_clip(frames=1, height=32, width=32, seed=3)
    at_zero = get_codec(f"condlc:{RANDOM}:intra_qp_offset=0").encode(clip, 0)
    below = get_codec(f"condlc:{RANDOM}:intra_qp_offset=-16").encode(clip, 0)
    assert read_stream(below.bitstream)[1][0].qp == 0 and below.num_bytes > at_zero.num_bytes


def test_mode_decisions_weigh_the_pictures_error_as_training_does() -> None:
    """J = bits + lambda * pixels * MSE of RGB in [0, 1], over the picture (the padding left out): the term the codec
    stage's loss weighs. The tiny preset's latent (2x - 1) would weigh it 4x."""
    from codec.diffvc.latent import LatentSpaceConfig, build_latent_space
    from codec.diffvc.model import distortion_cost

    x = torch.full((1, 3, 16, 24), 0.5)
    picture = x.clone()
    picture[..., :8, :16] += 0.1  # the picture's 8 x 16 area, all off by 0.1; the padding around it exact
    assert distortion_cost(x, picture, 100.0, (8, 16)) == pytest.approx(100.0 * 8 * 16 * 0.01, rel=1e-4)
    latents = build_latent_space(LatentSpaceConfig(kind="pixel_unshuffle", factor=8))
    latent_error = (latents.encode(picture) - latents.encode(x)).square().mean() * 16 * 24
    assert float(latent_error) == pytest.approx(4 * distortion_cost(x, picture, 1.0, None), rel=1e-4)


# --- the drift target's floor, read off the anchor -------------------------------------------------------------


def _gop_row(qp: int, first: tuple[float, float], last: tuple[float, float]) -> SimpleNamespace:
    """A 32-frame GOP's row: P-frames 1-23 at `first` (bytes, PSNR), the last 8 at `last`."""
    frames = [(10 * first[0], first[1] + 3)] + [first] * 23 + [last] * 8
    return SimpleNamespace(
        qp=qp, frame_bits=[int(8 * b) for b, _ in frames], per_frame={"psnr": [p for _, p in frames]}
    )


@pytest.mark.parametrize("harder", [1.0, 4.0])
def test_anchor_drift_floor_is_what_harder_last_frames_cost(harder: float) -> None:
    # each half: PSNR = 10 + 3 ln(bytes), the last 8 needing `harder` x the bytes for the same PSNR; with the last
    # 8 held to 1.2x the first 8's bytes the least drop is 3 ln(harder / 1.2), at one QP 3 ln(harder)
    def psnr(b: float, factor: float) -> float:
        return 10 + 3 * math.log(b / factor)

    rows = [_gop_row(qp, (b, psnr(b, 1)), (b, psnr(b, harder))) for qp, b in enumerate((2000, 800, 300, 120, 50))]
    figures = anchor_drift(rows, first_psnr=psnr(300, 1))
    assert figures["anchor_drop"] == pytest.approx(3 * math.log(harder))
    assert figures["anchor_least_drop"] == pytest.approx(3 * math.log(harder / 1.2))
    # the alike halves meet the target (a negative drop: 1.2x the bytes buy PSNR); 4x harder ones cannot
    assert (figures["anchor_least_drop"] <= DRIFT_DROP_DB) == (harder == 1.0)
