"""The bitstream fuzzer (codec/fuzz): its sandbox, parsers, mutations and verdicts, a short seeded run over every
codec, and one regression test per finding of the full run (`make fuzz`)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import time

import numpy as np
import pytest
from conftest import moving_clip

from codec.bitstream import read_stream, write_stream
from codec.errors import BitstreamError
from codec.fuzz import KINDS, FuzzConfig, fuzzed_codecs, run_fuzz
from codec.fuzz.mutate import StreamSample, mutate, reseal_dvc1
from codec.fuzz.oracle import judge
from codec.fuzz.paramsets import escape_rbsp, parse_param_set, rewrite_field, unescape_rbsp
from codec.fuzz.runner import _scheduling_kept
from codec.fuzz.sandbox import SandboxResult, run_sandboxed
from codec.registry import get_codec

RANDOM = "pack=random-tiny:device=cpu"
SYNTAX = {"x265": "hevc", "x264": "h264", "av1": "av1"}


@pytest.fixture(scope="module")
def streams() -> dict[str, list[StreamSample]]:
    """Two real streams per codec: a GOP boundary at 48x32, and an odd size (17x33) with another GOP."""
    out = {}
    for name in fuzzed_codecs():
        spec = f"{name}:{RANDOM}" if name in ("diffvc", "condlc") else name
        out[name] = [
            StreamSample(name, get_codec(f"{spec}:intra_period=2").encode(moving_clip(3, 32, 48), 40).bitstream, "a"),
            StreamSample(name, get_codec(f"{spec}:intra_period=3").encode(moving_clip(4, 17, 33), 45).bitstream, "b"),
        ]
    return out


# --- the sandbox and the verdicts ---------------------------------------------------------------------------


def _allocate(mib: int) -> int:
    return int(np.ones(mib * 2**20 // 8).sum())


def test_sandbox_reports_each_way_a_call_can_end() -> None:
    assert run_sandboxed(lambda: [1, 2], 5).value == [1, 2]
    raised = run_sandboxed(lambda: (_ for _ in ()).throw(BitstreamError("bad")), 5)
    assert (raised.status, raised.codec_error, raised.error_type) == ("raised", True, "codec.errors.BitstreamError")
    other = run_sandboxed(lambda: {}["missing"], 5)
    assert (other.status, other.codec_error, other.error_type) == ("raised", False, "builtins.KeyError")
    start = time.perf_counter()
    hung = run_sandboxed(lambda: time.sleep(60), 1.0)
    assert hung.status == "timeout" and time.perf_counter() - start < 10
    assert "sandbox.py" in hung.traceback  # the child's stack just before the kill
    crashed = run_sandboxed(lambda: os.kill(os.getpid(), signal.SIGSEGV), 5)
    assert (crashed.status, crashed.signal) == ("crash", signal.SIGSEGV)
    assert run_sandboxed(lambda: os._exit(3), 5).status == "crash"


def test_sandbox_measures_and_caps_memory() -> None:
    grown = run_sandboxed(lambda: _allocate(300), 20, memory_cap_mb=2048)
    assert grown.status == "returned" and 280 < grown.memory_mb < 400, grown
    capped = run_sandboxed(lambda: _allocate(3000), 20, memory_cap_mb=500)
    assert capped.status == "raised" and "MemoryError" in capped.error_type


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        (SandboxResult("timeout", seconds=9.0), "timeout"),
        (SandboxResult("crash", signal=11), "crash"),
        (SandboxResult("raised", error_type="codec.errors.BitstreamError", codec_error=True), "error"),
        (SandboxResult("raised", error_type="builtins.IndexError", error_message="index 1000"), "exception"),
        (SandboxResult("raised", error_type="builtins.MemoryError"), "memory"),
        (
            SandboxResult(
                "raised",
                error_type="codec.errors.BitstreamError",
                codec_error=True,
                error_message="frame 0: cannot be decoded ([enforce fail] DefaultCPUAllocator: can't allocate memory)",
            ),
            "memory",
        ),  # fmt: skip
        (SandboxResult("returned", value={"shape": [3, 32, 48, 3], "dtype": "uint8"}, memory_mb=5000), "memory"),
        (SandboxResult("returned", value={"shape": [3, 32, 48, 3], "dtype": "float32"}), "wrong_shape"),
    ],
)
def test_verdicts(streams, result: SandboxResult, outcome: str) -> None:
    assert judge("x264", streams["x264"][0].data, result, memory_mb=1024)[0] == outcome


def test_an_allocation_failure_is_a_finding_unless_the_decoder_refused_by_itself(streams) -> None:
    data = streams["x265"][0].data
    failed = SandboxResult(
        "raised",
        error_type="codec.errors.BitstreamError",
        codec_error=True,
        error_message="x265: cannot be decoded ([Errno 12] Cannot allocate memory)",
        memory_mb=280,
    )
    assert judge("x265", data, failed, 1024)[0] == "memory"  # the sandbox's cap may have caused it
    assert judge("x265", data, failed, 1024, retry=failed)[0] == "error"  # the same with 4x the room: its own
    grew = dataclasses.replace(failed, error_message="decoded further, then failed", memory_mb=3000)
    assert judge("x265", data, failed, 1024, retry=grew)[0] == "memory"


def test_verdicts_check_the_declared_size(streams) -> None:
    def decoded(shape: list[int]) -> SandboxResult:
        return SandboxResult("returned", value={"shape": shape, "dtype": "uint8"})

    dvc1 = streams["diffvc"][0].data  # 3 frames of 48x32
    assert judge("diffvc", dvc1, decoded([3, 32, 48, 3]), 1024)[0] == "decoded"
    assert judge("diffvc", dvc1, decoded([3, 64, 64, 3]), 1024)[0] == "wrong_shape"  # the padded size
    assert judge("diffvc", dvc1, decoded([2, 32, 48, 3]), 1024)[0] == "wrong_shape"
    assert judge("condlc", dvc1, decoded([3, 32, 48, 3]), 1024)[0] == "accepted_invalid"  # another codec's stream
    for name in ("x265", "x264"):
        assert judge(name, streams[name][0].data, decoded([3, 32, 48, 3]), 1024)[0] == "decoded"
        assert judge(name, streams[name][0].data, decoded([3, 32, 64, 3]), 1024)[0] == "wrong_shape"
        hinted = streams[name][1].data  # 33x17 in 4:2:0: coded 34x18 (x264) or 40x24 (x265), cropped by the hint
        assert judge(name, hinted, decoded([4, 17, 33, 3]), 1024)[0] == "decoded"
        assert judge(name, hinted, decoded([4, 18, 34, 3]), 1024)[0] == "wrong_shape"
    assert judge("av1", streams["av1"][0].data, decoded([3, 16, 48, 3]), 1024)[0] == "decoded"  # at most the max
    assert judge("av1", streams["av1"][0].data, decoded([3, 33, 48, 3]), 1024)[0] == "wrong_shape"


# --- parameter sets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "size", "declared"),
    [
        ("x265", "", (48, 32), (48, 32)),
        ("x265", "", (33, 17), (34, 18)),  # padded to even, then a conformance window to 34x18 (the hint does 33x17)
        ("x265", ":chroma=444", (33, 17), (33, 17)),
        ("x264", "", (48, 32), (48, 32)),
        ("x264", "", (40, 20), (40, 20)),  # 48x32 macroblocks, cropped
        ("x264", ":chroma=444", (33, 17), (33, 17)),
        ("av1", "", (33, 17), (33, 17)),
    ],
)
def test_parameter_sets_declare_the_coded_size(name, options, size, declared) -> None:
    data = get_codec(name + options).encode(moving_clip(2, size[1], size[0]), 30).bitstream
    sample = StreamSample(name, data)
    assert sample.param_sets, "no parameter set found"
    ps = sample.param_sets[0][1]
    assert ps.size == declared
    unit = sample.units[sample.param_sets[0][0]]
    for field in ps.fields:  # rewriting a field with its own value gives back the same unit
        assert rewrite_field(unit, ps, field, ps.fields[field].value) == unit
    height = next(f for f in ps.fields if "height" in f and "bits" not in f)
    edited = parse_param_set(rewrite_field(unit, ps, height, ps.fields[height].value + 300), SYNTAX[name])
    assert edited is not None and edited.size[1] > ps.size[1] and edited.size[0] == ps.size[0]


def test_emulation_prevention_round_trip() -> None:
    rng = random.Random(3)
    for _ in range(200):
        rbsp = bytes(rng.choice([0, 0, 0, 1, 2, 3, 4, 255]) for _ in range(rng.randrange(1, 40)))
        escaped = escape_rbsp(rbsp)
        assert unescape_rbsp(escaped) == rbsp
        assert all(escaped[i : i + 3] not in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02")
                   for i in range(len(escaped) - 2))  # fmt: skip


# --- mutations ----------------------------------------------------------------------------------------------


def test_every_kind_damages_every_codec_reproducibly(streams) -> None:
    for name in fuzzed_codecs():
        sample, others = streams[name][0], streams[name]
        for kind in KINDS:
            for seed in range(4):
                first = mutate(random.Random(f"{kind}:{seed}"), sample, kind, others)
                again = mutate(random.Random(f"{kind}:{seed}"), sample, kind, others)
                assert first == again, (name, kind)
                assert first.data != sample.data and first.kind == kind and first.detail


def test_resealed_dvc1_edits_pass_the_crcs(streams) -> None:
    """A resealed edit of a value the container accepts (the seed) reads back; an unsealed one fails its CRC."""
    sample = streams["diffvc"][0]
    start, end = sample.dvc1_fields["seed"]
    edited = sample.data[:start] + bytes([sample.data[start] ^ 1]) + sample.data[end:]
    with pytest.raises(BitstreamError, match="header: CRC mismatch"):
        read_stream(edited)
    header, units = read_stream(reseal_dvc1(edited))
    assert header.seed != read_stream(sample.data)[0].seed and len(units) == 3


# --- a short seeded run over every codec ---------------------------------------------------------------------


def test_short_fuzz_run_finds_nothing(tmp_path) -> None:
    """A few hundred mutations spread over every codec and kind: each decodes to a clear error or to frames of the
    declared size, within the limits. Steps are capped at 20 so that no case asks for minutes of diffusion."""
    config = FuzzConfig(mutations=300, seed=7, workers=2, corpus="quick", max_steps=20)
    start = time.perf_counter()
    report = run_fuzz(config)
    elapsed = time.perf_counter() - start
    summary = report.summary()
    print(report.table())
    assert not report.findings, report.findings
    assert summary["totals"]["cases"] == 300
    for name in fuzzed_codecs():
        by_kind = summary["by_codec"][name]["by_kind"]
        assert set(by_kind) == set(KINDS), name
        outcomes = summary["by_codec"][name]["outcomes"]
        assert outcomes.get("error", 0) > 10 and outcomes.get("decoded", 0) > 0, (name, outcomes)
    assert elapsed < 120, f"took {elapsed:.0f} s"
    report.write(tmp_path)
    assert len((tmp_path / "cases.jsonl").read_text().splitlines()) == 300
    table = (tmp_path / "summary.md").read_text()
    assert all(f"| {name} | 60 |" in table for name in fuzzed_codecs()), table


def test_cli_fuzz_writes_its_summary(tmp_path) -> None:
    from codec.__main__ import main

    out = tmp_path / "fuzz"
    assert main(["fuzz", "--codecs", "x264", "--mutations", "20", "--corpus", "quick", "--workers", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["cases"] == 20 and summary["totals"]["findings"] == 0
    assert main(["fuzz", "--codecs", "x999", "--out", str(out)]) == 2  # a clear error, not a traceback


def test_corpus_encoding_keeps_the_scheduling_policy() -> None:
    """libsvtav1, run as root, switches the encoding thread to SCHED_FIFO 99; the fuzzer's corpus step undoes it so
    that its workers do not inherit a real-time policy."""
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    with _scheduling_kept():
        get_codec("av1").encode(moving_clip(2, 16, 16), 40)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


# --- regressions: one per finding of the full run ----------------------------------------------------------


@pytest.fixture(scope="module")
def neural(streams) -> dict[str, tuple]:
    """Each neural codec's first stream, read: (header, units)."""
    return {name: read_stream(streams[name][0].data) for name in ("diffvc", "condlc")}


def _rewrite(parsed: tuple, **changes: object) -> bytes:
    header, units = parsed
    return write_stream(dataclasses.replace(header, **changes), units)


def test_unknown_flag_bits_are_rejected(neural) -> None:
    """condlc defines bits 8 and 16 only; diffvc defines all eight (bits 32-128: the stream's filter level, any of
    the eight decodes)."""
    from codec.diffvc.codec import DiffVC

    for bit in (1, 2, 4, 32, 64, 128):
        with pytest.raises(BitstreamError, match="flags"):
            get_codec(f"condlc:{RANDOM}").decode(_rewrite(neural["condlc"], flags=neural["condlc"][0].flags | bit))
    assert DiffVC.defined_flags == 0xFF
    level_7 = _rewrite(neural["diffvc"], flags=neural["diffvc"][0].flags | 0b11100000)
    assert get_codec(f"diffvc:{RANDOM}").decode(level_7).num_frames == neural["diffvc"][0].num_frames


@pytest.mark.parametrize("changes", [{"steps": 4}, {"strength_milli": 206}, {"steps": 10, "tdir_k": 2}])
def test_condlc_rejects_diffusion_parameters(neural, changes) -> None:
    with pytest.raises(BitstreamError, match="diffusion"):
        get_codec(f"condlc:{RANDOM}").decode(_rewrite(neural["condlc"], **changes))


@pytest.mark.parametrize("name", ["diffvc", "condlc"])
def test_a_schedule_past_the_noise_schedule_is_a_bitstream_error(neural, name: str) -> None:
    """1000 steps at strength 1 started at timestep 1000 of a 1000-step schedule: IndexError, now BitstreamError."""
    stream = _rewrite(neural[name], steps=1000, strength_milli=1000, tdir_k=0)
    with pytest.raises(BitstreamError, match="schedule" if name == "diffvc" else "diffusion"):
        get_codec(f"{name}:{RANDOM}").decode(stream)


@pytest.mark.parametrize("which", ["first", "second"])
def test_a_huge_declared_hevc_picture_fails_before_libavcodec_allocates_it(streams, which: str) -> None:
    """A 450-byte HEVC stream whose SPS declares 8192x8192 made libavcodec allocate over 1 GB (1131 MiB measured
    here) before failing; the decoder's max_pixels now refuses it first (11 MiB). The second SPS (at the GOP
    boundary) takes another path: 559 MiB before, 283 MiB now, where libavcodec refuses the buffers itself."""
    sample = streams["x265"][1]
    index, ps = sample.param_sets[0 if which == "first" else 1]
    units = list(sample.units)
    edited = rewrite_field(units[index], ps, "pic_width_in_luma_samples", 8192)
    units[index] = rewrite_field(edited, parse_param_set(edited, "hevc"), "pic_height_in_luma_samples", 8192)
    decoder = get_codec("x265")
    result = run_sandboxed(lambda: decoder.decode(b"".join(units)), 60)
    assert result.status == "raised" and result.codec_error, result
    assert result.memory_mb < 400, f"{result.memory_mb:.0f} MiB"


def test_every_seed_the_format_allows_decodes(neural) -> None:
    """Seeds from 2**63 (the format allows up to 2**64-1) raised struct.error in the sampler's noise seeding, which
    packed them signed; it packs them unsigned now (the same noise for every seed below 2**63)."""
    for seed in (2**63, 2**64 - 1):
        video = get_codec(f"diffvc:{RANDOM}").decode(_rewrite(neural["diffvc"], seed=seed))
        assert video.frames.shape == (3, 32, 48, 3)
    condlc = _rewrite(neural["condlc"], seed=2**64 - 1)  # no diffusion stage: the seed is never used
    assert get_codec(f"condlc:{RANDOM}").decode(condlc).frames.shape == (3, 32, 48, 3)


@pytest.mark.parametrize(("name", "size"), [("x264", (40, 24)), ("x265", (33, 17))])
def test_an_unaligned_cropping_window_is_applied_exactly(name: str, size: tuple[int, int]) -> None:
    """An SPS whose cropping window starts one pixel in from the left declares one pixel less than the clip;
    libavcodec dropped the unaligned left offset (and returned the wider frames) unless told to apply it."""
    width, height = size
    data = get_codec(f"{name}:chroma=444").encode(moving_clip(2, height, width), 30).bitstream
    sample = StreamSample(name, data)
    index, ps = sample.param_sets[0]
    left = "frame_crop_left_offset" if name == "x264" else "conf_win_left_offset"
    units = list(sample.units)
    units[index] = rewrite_field(units[index], ps, left, 1)
    edited = b"".join(units)
    assert StreamSample(name, edited).param_sets[0][1].size == (width - 1, height)
    video = get_codec(name).decode(edited)
    assert video.frames.shape == (2, height, width - 1, 3)
    assert np.array_equal(video.frames, get_codec(name).decode(data).frames[:, :, 1:])
