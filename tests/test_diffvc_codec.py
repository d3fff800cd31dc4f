"""DiffVC and condlc as sequence codecs on tiny random-init models: exact round trips, TDIR, QP, damage, packs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import moving_clip

from codec.bitstream import read_stream
from codec.diffvc.codec import frame_qp, frame_type
from codec.diffvc.config import tiny_config
from codec.diffvc.model import DiffVCModel
from codec.diffvc.pack import write_pack
from codec.errors import BitstreamError, CodecUnavailableError, SpecError
from codec.registry import detect_codec, get_codec

RANDOM = "pack=random-tiny:skip=false"  # every P-frame coded: a random pack would skip them all


@pytest.fixture(scope="module")
def clip():
    return moving_clip(frames=6, height=48, width=80, seed=5)  # odd multiple: padded to 64x128 inside


@pytest.fixture(scope="module")
def encoded(clip):
    return get_codec(f"diffvc:{RANDOM}:intra_period=4").encode(clip, 30)


def test_decode_reproduces_the_encoder_exactly_across_a_gop_boundary(clip, encoded):
    assert encoded.frame_types == ["I", "P", "P", "P", "I", "P"]
    decoded = get_codec(f"diffvc:{RANDOM}").decode(encoded.bitstream)
    assert decoded.frames.shape == clip.frames.shape and decoded.fps == clip.fps
    assert np.abs(decoded.frames.astype(int) - encoded.reconstruction.frames.astype(int)).max() == 0


@pytest.mark.parametrize(
    "spec",
    [
        f"diffvc:{RANDOM}:tdir=off",
        f"diffvc:{RANDOM}:reuse=step:reuse_warp=off",
        f"condlc:{RANDOM}:intra_period=-1",
        f"condlc:{RANDOM}:intra=learned:deadzone=0.3",
    ],
)
def test_exact_round_trip_with_other_switches(clip, spec):
    codec = get_codec(spec)
    enc = codec.encode(moving_clip(frames=4, height=64, width=64, seed=2), 40)
    assert np.array_equal(codec.decode(enc.bitstream).frames, enc.reconstruction.frames)


def test_a_deadzone_is_the_encoders_choice(clip):
    """A dead zone codes fewer bits and the decoder, which reads no option, still reproduces the encoder."""
    plain = get_codec(f"condlc:{RANDOM}").encode(clip, 30)
    dead = get_codec(f"condlc:{RANDOM}:deadzone=0.3").encode(clip, 30)
    assert sum(dead.frame_bits[1:]) < sum(plain.frame_bits[1:])
    assert np.array_equal(get_codec(f"condlc:{RANDOM}").decode(dead.bitstream).frames, dead.reconstruction.frames)


def test_a_filter_level_travels_in_the_header_and_decodes_exactly(tmp_path, clip, encoded):
    """`filter=G` writes its level into the header's flag bits 5-7 and the stage restores by (1 + G): on a stage
    whose anchor filter acts, other frames; the decoder, which takes no option, reads the level and reproduces
    them. Level 0 (the default) leaves the bits as streams had them before."""
    from codec.diffvc import STREAM_FILTER_GAINS
    from codec.diffvc.codec import FILTER_LEVEL_SHIFT, FLAG_FILTER_LEVEL

    model, _ = DiffVCModel.random(tiny_config(), seed=0)
    with torch.no_grad():
        model.diffusion.anchor_filter.weight.normal_(0.0, 0.02)  # random-tiny's filter is zero: nothing to scale
    pack = write_pack(tmp_path / "filtering", tiny_config().to_dict(), model.trainable_state(), "test\n").path
    half, trained = (get_codec(f"diffvc:pack={pack}:filter={g}").encode(clip, 30) for g in ("-0.5", "0"))
    flags = read_stream(half.bitstream)[0].flags
    assert STREAM_FILTER_GAINS[(flags & FLAG_FILTER_LEVEL) >> FILTER_LEVEL_SHIFT] == -0.5
    assert half.params["filter_gain"] == -0.5 and half.bitstream != trained.bitstream
    assert not np.array_equal(half.reconstruction.frames, trained.reconstruction.frames)
    assert np.array_equal(get_codec(f"diffvc:pack={pack}").decode(half.bitstream).frames, half.reconstruction.frames)
    assert read_stream(encoded.bitstream)[0].flags & FLAG_FILTER_LEVEL == 0
    assert get_codec(f"diffvc:{RANDOM}:filter=.5").options.filter == "0.5"  # one spelling, one cache key


def test_filter_minus_one_switches_the_stage_off_for_the_stream(clip):
    """Level 1 (gain -1): the stream shows the latent codec's frames, condlc's own, and runs no U-Net; the decoder
    does the same from the header alone."""
    off = get_codec(f"diffvc:{RANDOM}:filter=-1").encode(clip, 30)
    assert off.stats["unet_evals"] == 0
    assert np.array_equal(
        off.reconstruction.frames, get_codec(f"condlc:{RANDOM}").encode(clip, 30).reconstruction.frames
    )
    assert np.array_equal(get_codec(f"diffvc:{RANDOM}").decode(off.bitstream).frames, off.reconstruction.frames)


def test_tdir_halves_the_unet_evaluations(encoded):
    per_frame = encoded.stats["unet_evals_per_frame"]
    full = per_frame[0]
    # I-frames run every step; P-frames reuse half (tdir_ratio 0.5), the first after an I-frame the I-frame's x0
    assert full > 0 and per_frame == [full, full // 2, full // 2, full // 2, full, full // 2]
    header, _ = read_stream(encoded.bitstream)
    assert header.tdir_k == full // 2


def test_tdir_off_and_condlc_evaluation_counts(clip):
    off = get_codec(f"diffvc:{RANDOM}:tdir=off").encode(clip, 30)
    assert len(set(off.stats["unet_evals_per_frame"])) == 1
    assert get_codec(f"condlc:{RANDOM}").encode(clip, 30).stats["unet_evals"] == 0


def test_rates_fall_from_qp_0_to_qp_63(clip):
    codec = get_codec(f"condlc:{RANDOM}")
    sizes = [len(codec.encode(clip, qp).bitstream) for qp in (0, 32, 63)]
    assert sizes[0] > sizes[2]  # random init: QPScales spans 16x in step size between QP 0 and 63


def test_timings_and_stats_are_reported(encoded):
    for stage in ("motion", "latent", "entropy", "diffusion", "vae"):
        assert encoded.timings[stage] >= 0
    assert encoded.timings["diffusion"] > 0 and encoded.timings["entropy"] > 0
    assert sum(encoded.frame_bits) < 8 * len(encoded.bitstream)
    assert encoded.params["pack"] == "random-tiny"


def test_stream_is_recognised_and_deterministic(clip, encoded):
    assert detect_codec(encoded.bitstream) == "diffvc"
    again = get_codec(f"diffvc:{RANDOM}:intra_period=4").encode(clip, 30)
    assert again.bitstream == encoded.bitstream


def test_damaged_streams_raise_bitstream_error(encoded):
    codec = get_codec(f"diffvc:{RANDOM}")
    data = encoded.bitstream
    rng = np.random.default_rng(0)
    for cut in (3, 30, len(data) // 2, len(data) - 1):
        with pytest.raises(BitstreamError):
            codec.decode(data[:cut])
    for _ in range(20):
        flipped = bytearray(data)
        pos = int(rng.integers(0, len(data)))
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(BitstreamError):
            codec.decode(bytes(flipped))


def test_condlc_stream_with_diffvc_decoder(clip):
    enc = get_codec(f"condlc:{RANDOM}").encode(moving_clip(frames=2), 30)
    with pytest.raises(BitstreamError, match="condlc stream"):
        get_codec(f"diffvc:{RANDOM}").decode(enc.bitstream)


def test_wrong_pack_names_both(tmp_path, encoded):
    model, _ = DiffVCModel.random(tiny_config(), seed=1)
    info = write_pack(tmp_path / "other-pack", tiny_config().to_dict(), model.trainable_state(), "test pack\n")
    with pytest.raises(BitstreamError) as err:
        get_codec(f"diffvc:pack={info.path}").decode(encoded.bitstream)
    message = str(err.value)
    assert "other-pack" in message and info.hash_prefix.hex() in message
    assert read_stream(encoded.bitstream)[0].pack_hash.hex() in message


def test_saved_pack_codes_like_the_model_it_came_from(tmp_path, clip):
    model, info = DiffVCModel.random(tiny_config(), seed=0)
    saved = write_pack(tmp_path / "random-copy", tiny_config().to_dict(), model.trainable_state(), "copy\n")
    assert saved.sha256 == info.sha256
    a = get_codec(f"condlc:{RANDOM}").encode(clip, 30)
    b = get_codec(f"condlc:pack={saved.path}").decode(a.bitstream)  # same hash: decodes
    assert np.array_equal(a.reconstruction.frames, b.frames)


def test_options_are_checked():
    with pytest.raises(SpecError):
        get_codec(f"diffvc:{RANDOM}:intra_period=0")
    with pytest.raises(SpecError):
        get_codec(f"diffvc:{RANDOM}:qp_offsets=a,b")
    with pytest.raises(SpecError, match="deadzone"):
        get_codec(f"condlc:{RANDOM}:deadzone=0.5")
    with pytest.raises(SpecError, match="filter"):
        get_codec(f"diffvc:{RANDOM}:filter=0.3")
    with pytest.raises(SpecError, match="reference=codec"):
        get_codec(f"diffvc:{RANDOM}:filter=auto:reference=diffusion")
    with pytest.raises(CodecUnavailableError, match="not found"):
        get_codec("diffvc:pack=no-such-pack")


def test_gop_structure_and_qp_offsets():
    assert [frame_type(t, 4) for t in range(6)] == ["I", "P", "P", "P", "I", "P"]
    assert [frame_type(t, -1) for t in range(3)] == ["I", "P", "P"]
    assert [frame_qp(30, t, 5, (0, 4, 2, 4)) for t in range(6)] == [30, 30, 34, 32, 34, 30]
    assert frame_qp(62, 2, 32, (5,)) == 63


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("intra", ["learned", "hevc"])
def test_exact_round_trip_on_cuda_fast_path(clip, intra):
    """bf16 autocast in the diffusion stage, SDPA, channels-last: decoding still reproduces the encoder. HEVC
    I-frames need PyAV's x265, which a lent GPU machine does not get (tools/gpu_wheels.py)."""
    if intra == "hevc":
        pytest.importorskip("av", reason="HEVC I-frames need PyAV's x265")
    codec = get_codec(f"diffvc:{RANDOM}:device=cuda:intra_period=4:intra={intra}")
    enc = codec.encode(clip, 30)
    assert np.array_equal(codec.decode(enc.bitstream).frames, enc.reconstruction.frames)


def test_the_encoder_refuses_a_schedule_its_decoder_would_refuse(clip):
    """1000 DDIM steps at strength 1 start one past SD's 1000-step noise schedule: a SpecError, not an IndexError."""
    with pytest.raises(SpecError, match="schedule"):
        get_codec(f"diffvc:{RANDOM}:steps=1000:strength=1.0").encode(clip, 30)


def test_the_qpp_checks_condlc_twin_keeps_only_the_options_the_codecs_share():
    """`tools.qpp_check` compares a diffvc spec with its latent codec alone: the stage's options (reference, filter,
    TDIR) are dropped, the codec's kept, and condlc takes the result."""
    from tools.qpp_check import condlc_twin

    twin = condlc_twin(f"diffvc:{RANDOM}:reference=diffusion:filter=-0.5:tdir=off:intra_qp_offset=-12")
    assert twin == "condlc:pack=random-tiny:skip=false:intra_qp_offset=-12"
    assert get_codec(twin).options.intra_qp_offset == -12


def test_the_qpp_check_keeps_the_level_auto_picked_with_the_true_prompt():
    from tools.qpp_check import with_filter

    assert with_filter(f"diffvc:{RANDOM}:filter=auto:tdir=off", 0.5) == f"diffvc:{RANDOM}:filter=0.5:tdir=off"
    assert get_codec(with_filter("diffvc", -1.0)).options.filter == "-1"


def test_frames_shown_at_other_levels_need_the_codec_as_reference():
    """`FrameCoder.also_show` shares one coding between filter levels: only where the latent codec's reconstruction
    is the reference (so the strings do not depend on the level) and only plans that differ in the level alone."""
    from dataclasses import replace

    from codec.diffvc.model import FrameCoder, SamplingPlan
    from codec.diffvc.timing import StageTimer

    model, _ = DiffVCModel.random(tiny_config(), seed=0)
    plan = SamplingPlan(10, 0.4, 2, "final", True, 0, codec_reference=True)
    FrameCoder(model, plan, StageTimer(torch.device("cpu")), also_show=[replace(plan, filter_level=3)])
    for other_plan, other in [
        (replace(plan, codec_reference=False), replace(plan, codec_reference=False, filter_level=3)),
        (plan, replace(plan, filter_level=3, seed=1)),
    ]:
        with pytest.raises(ValueError, match="differ only in their filter level"):
            FrameCoder(model, other_plan, StageTimer(torch.device("cpu")), also_show=[other])
