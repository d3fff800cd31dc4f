"""The classical anchors x265, x264 and AV1 (SVT-AV1) through PyAV: round trips, rates, GOP structure, damage."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from conftest import moving_clip

from codec.baselines.ffmpeg import SIZE_HINT_UUID, X265, FFmpegCodec
from codec.errors import BitstreamError, SpecError
from codec.registry import detect_codec, get_codec, list_codecs
from codec.video import DEFAULT_FPS, Video

ANCHORS = ("x265", "x264", "av1")
QP_LADDER = {"x265": (22, 32, 42), "x264": (22, 32, 42), "av1": (20, 40, 60)}
MID_QP = {"x265": 32, "x264": 32, "av1": 40}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels of two uint8 arrays of one shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("name", ANCHORS)
@pytest.mark.parametrize("size", [(64, 48), (33, 17), (6, 4)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_decode_gives_the_reconstruction_at_the_input_size(name: str, size: tuple[int, int]) -> None:
    video = moving_clip(frames=6, height=size[1], width=size[0])
    codec = get_codec(name)
    encoded = codec.encode(video, MID_QP[name])
    decoded = codec.decode(encoded.bitstream)

    assert decoded.frames.shape == video.frames.shape == encoded.reconstruction.frames.shape
    assert np.array_equal(decoded.frames, encoded.reconstruction.frames)
    assert encoded.reconstruction.fps == video.fps
    assert len(encoded.frame_bits) == len(encoded.frame_types) == video.num_frames
    assert sum(encoded.frame_bits) == 8 * len(encoded.bitstream)
    assert psnr(video.frames, decoded.frames) > 20  # a picture of the input, not garbage
    assert set(encoded.timings) == {"encode", "decode"} and all(t > 0 for t in encoded.timings.values())


@pytest.mark.parametrize("name", ANCHORS)
def test_the_rate_is_the_elementary_stream(name: str) -> None:
    encoded = get_codec(name).encode(moving_clip(frames=4), MID_QP[name])
    stream = encoded.bitstream
    if name == "av1":
        assert stream[:2] == b"\x12\x00"  # a temporal delimiter OBU opens the low-overhead format
    else:
        assert stream.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01"))  # Annex-B, no mp4 box
    assert b"ftyp" not in stream[:16]
    # no encoder settings text is counted: x265 runs with info=0; x264's settings SEI is removed
    assert b"x265 (build" not in stream and b"x264 - core" not in stream
    if name == "x264":
        assert encoded.stats["removed_bytes"] > 300


@pytest.mark.parametrize("name", ANCHORS)
def test_rate_and_quality_fall_as_qp_rises(name: str) -> None:
    video = moving_clip(frames=8, height=48, width=64)
    codec = get_codec(name)
    results = [codec.encode(video, qp) for qp in QP_LADDER[name]]
    bpp = [r.bpp(video) for r in results]
    quality = [psnr(video.frames, r.reconstruction.frames) for r in results]
    assert bpp[0] > bpp[1] > bpp[2], bpp
    assert quality[0] > quality[1] > quality[2], quality


@pytest.mark.parametrize("name", ANCHORS)
def test_frame_types_follow_the_intra_period(name: str) -> None:
    video = moving_clip(frames=20, height=24, width=32)
    codec = get_codec(f"{name}:intra_period=8")
    types = codec.encode(video, MID_QP[name]).frame_types
    assert types == ["I" if i % 8 == 0 else "P" for i in range(20)]

    only_first = codec.encode(video, MID_QP[name], intra_period=-1).frame_types  # a per-call override
    assert only_first == ["I"] + ["P"] * 19
    assert codec.options.intra_period == 8


@pytest.mark.parametrize("name", ANCHORS)
def test_params_record_how_the_stream_was_made(name: str) -> None:
    codec = get_codec(f"{name}:intra_period=4:rc=crf")
    params = codec.encode(moving_clip(frames=3), 30).params
    assert params["codec"] == name and params["qp"] == 30 and params["rc"] == "crf"
    assert params["intra_period"] == 4 and params["pix_fmt"] == "yuv420p"
    library_params = next(v for k, v in params["encoder_options"].items() if k.endswith("-params"))
    assert "crf=30" in library_params and "keyint=4" in library_params
    assert params["versions"]["libavcodec"] in codec.identity()


@pytest.mark.parametrize(
    ("name", "intra_period", "expected"),
    [
        ("x265", 16, {"bframes=0", "keyint=16", "min-keyint=16", "scenecut=0", "open-gop=0", "info=0", "qp=30"}),
        ("x264", 16, {"bframes=0", "keyint=16", "min-keyint=16", "scenecut=0", "qp=30"}),
        ("x264", -1, {"bframes=0", "keyint=infinite", "scenecut=0", "qp=30"}),
        ("av1", -1, {"pred-struct=1", "keyint=-1", "irefresh-type=2", "rc=0", "aq-mode=0", "qp=30"}),
    ],
)
def test_low_delay_settings_reach_the_library(name: str, intra_period: int, expected: set[str]) -> None:
    codec = get_codec(name)
    options = codec.encoder_options(codec.Options(intra_period=intra_period), 30)
    library_params = next(v for k, v in options.items() if k.endswith("-params"))
    assert expected <= set(library_params.split(":"))
    assert options.get("tune", "zerolatency") == "zerolatency"


@pytest.mark.parametrize("name", ["x265", "x264"])
def test_444_keeps_the_chroma(name: str) -> None:
    video = moving_clip(frames=4, height=17, width=33)
    e420 = get_codec(name).encode(video, 27)
    e444 = get_codec(f"{name}:chroma=444").encode(video, 27)
    assert (e420.params["pix_fmt"], e444.params["pix_fmt"]) == ("yuv420p", "yuv444p")
    assert e444.params["coded_size"] == [33, 17]  # odd sizes need no padding in 4:4:4
    decoded = get_codec(f"{name}:chroma=444").decode(e444.bitstream)
    assert np.array_equal(decoded.frames, e444.reconstruction.frames)
    assert psnr(video.frames, e444.reconstruction.frames) > psnr(video.frames, e420.reconstruction.frames)


@pytest.mark.parametrize(
    ("name", "size", "hinted"),
    [
        ("x265", (34, 18), False),
        ("x265", (33, 17), True),  # 4:2:0 HEVC cannot code an odd size
        ("x265", (6, 4), True),  # x265 needs 16x16
        ("x264", (33, 17), True),
        ("x264", (2, 2), False),
        ("av1", (33, 17), False),  # AV1 codes odd sizes itself
        ("av1", (3, 2), True),  # SVT-AV1 needs 4x4
    ],
)
def test_size_hint_only_when_frames_were_padded(name: str, size: tuple[int, int], hinted: bool) -> None:
    video = moving_clip(frames=3, height=size[1], width=size[0])
    codec = get_codec(name)
    encoded = codec.encode(video, MID_QP[name])
    assert (SIZE_HINT_UUID in encoded.bitstream) == hinted
    assert (encoded.stats["size_hint_bytes"] > 0) == hinted
    assert codec.decode(encoded.bitstream).frames.shape == video.frames.shape


@pytest.mark.parametrize("name", ANCHORS)
def test_frame_rate(name: str) -> None:
    video = Video(moving_clip(frames=3).frames, Fraction(30000, 1001))
    codec = get_codec(name)
    encoded = codec.encode(video, MID_QP[name])
    assert encoded.reconstruction.fps == video.fps
    # x265 and x264 write the rate in the VUI; SVT-AV1 writes no timing info
    assert codec.decode(encoded.bitstream).fps == (DEFAULT_FPS if name == "av1" else video.fps)


@pytest.mark.parametrize("name", ANCHORS)
def test_damaged_streams_raise_bitstream_error(name: str) -> None:
    codec = get_codec(name)
    stream = codec.encode(moving_clip(frames=6), MID_QP[name]).bitstream
    rng = np.random.default_rng(1)
    other = "x264" if name != "x264" else "av1"
    for bad in (
        b"",
        bytes(200),
        rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        b"\x00\x00\x00\x01" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        stream[:10],  # cut inside the first headers
        stream[: len(stream) // 5] + bytes(200),  # cut and zero-filled, as a file whose writing was interrupted
        get_codec(other).encode(moving_clip(frames=2), 30).bitstream,
    ):
        with pytest.raises(BitstreamError):
            codec.decode(bad)
    with pytest.raises(BitstreamError):
        codec.decode("not bytes")  # type: ignore[arg-type]

    # Elementary streams carry no checksum or frame count: a cut or a flipped bit is caught when the structure or
    # the decoder shows it (always for AV1 cuts: OBU sizes); otherwise a shorter or concealed video comes back.
    # Either way, never another exception type.
    for cut in (len(stream) // 3, len(stream) // 2, len(stream) - 3):
        for damaged in (stream[:cut], stream[:cut] + bytes([stream[cut] ^ 0x40]) + stream[cut + 1 :]):
            try:
                codec.decode(damaged)
            except BitstreamError:
                pass
        if name == "av1":
            with pytest.raises(BitstreamError, match="truncated"):
                codec.decode(stream[:cut])


def test_each_stream_is_recognised_as_its_own_codec() -> None:
    for name in ANCHORS:
        stream = get_codec(name).encode(moving_clip(frames=2, height=17, width=33), MID_QP[name]).bitstream
        assert detect_codec(stream) == name
        assert [get_codec(other).recognizes(stream) for other in ANCHORS].count(True) == 1
    for junk in (b"", b"DVC1\x01", bytes(64), np.random.default_rng(2).integers(0, 256, 64, dtype=np.uint8).tobytes()):
        assert not any(get_codec(name).recognizes(junk) for name in ANCHORS)


def test_spec_strings_parse() -> None:
    codec = get_codec("x265:preset=ultrafast:rc=crf")
    assert (codec.options.preset, codec.options.rc, codec.options.tune) == ("ultrafast", "crf", "zerolatency")
    assert get_codec("av1:preset=4:intra_period=-1").options.preset == 4
    assert get_codec("x264", chroma="444").options.chroma == "444"


@pytest.mark.parametrize(
    "spec",
    [
        "x265:preset=bogus",
        "x265:tune=film",  # an x264 tune
        "x264:rc=cbr",
        "x265:intra_period=0",
        "x264:intra_period=many",
        "av1:preset=14",
        "av1:chroma=444",  # SVT-AV1 codes 4:2:0 only
        "av1:tune=zerolatency",
        "x264:nosuch=1",
    ],
)
def test_invalid_options_raise_spec_error(spec: str) -> None:
    with pytest.raises(SpecError):
        get_codec(spec)


@pytest.mark.parametrize(("name", "bad_qp"), [("x265", 52), ("x264", -1), ("av1", 0), ("av1", 64)])
def test_qp_outside_the_range_raises_spec_error(name: str, bad_qp: int) -> None:
    with pytest.raises(SpecError):
        get_codec(name).encode(moving_clip(frames=2), bad_qp)


def test_invalid_per_call_override_raises_spec_error() -> None:
    with pytest.raises(SpecError):
        get_codec("x265").encode(moving_clip(frames=2), 30, preset="bogus")


def test_options_validate_when_built_directly() -> None:
    with pytest.raises(ValueError, match="preset"):
        X265.Options(preset="bogus")
    with pytest.raises(ValueError, match="intra_period"):
        X265.Options(intra_period=-2)


def test_registry_and_availability() -> None:
    entries = {entry.name: entry for entry in list_codecs()}
    assert set(ANCHORS) <= set(entries)
    for name in ANCHORS:
        assert entries[name].unavailable_reason() is None
        assert issubclass(entries[name].cls, FFmpegCodec)
    assert (entries["x265"].cls.qp_range, entries["x264"].cls.qp_range, entries["av1"].cls.qp_range) == (
        (0, 51),
        (0, 51),
        (1, 63),
    )

    class Missing(X265):
        encoder = "libnothing"

    assert "libnothing" in Missing.unavailable_reason()


def test_encoding_av1_leaves_the_scheduling_policy_as_it_was():
    """SVT-AV1 run as root switches the calling thread to real-time priority and never back; the wrapper restores
    it (otherwise every later CPU-heavy process on the machine starves)."""
    import os

    before = os.sched_getscheduler(0), os.sched_getparam(0)
    get_codec("av1").encode(moving_clip(frames=2, height=64, width=64), 40)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
