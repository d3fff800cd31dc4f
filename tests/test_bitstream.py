"""Tests of the DVC1 container (codec/bitstream.py): round trips, varints, validation, damage messages, fuzzing.

The helpers `_split` and `_seal` re-implement the layout of docs/FORMAT.md independently of the module, so the
tests also check that the document and the code agree, and let a test craft streams whose CRCs are valid but
whose values are not.
"""

from __future__ import annotations

import random
import re
import signal
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from codec.bitstream import (
    CODEC_IDS,
    HEADER_LAYOUT,
    MAX_STRINGS,
    BitstreamError,
    FrameUnit,
    StreamHeader,
    StreamReader,
    StreamWriter,
    decode_varint,
    encode_varint,
    read_header,
    read_stream,
    write_stream,
)

PACK = bytes.fromhex("0011223344556677")


def make_header(**overrides: object) -> StreamHeader:
    """A valid DiffVC header; keyword arguments replace fields."""
    values: dict[str, object] = dict(
        codec="diffvc", width=1920, height=1080, fps_num=30000, fps_den=1001, num_frames=4, intra_period=32,
        qp=37, steps=20, tdir_k=5, strength_milli=400, flags=0b101, seed=123456789, pack_hash=PACK,
    )  # fmt: skip
    values.update(overrides)
    return StreamHeader(**values)  # type: ignore[arg-type]


def make_units(rng: random.Random, n: int, max_strings: int = 4, max_len: int = 64) -> list[FrameUnit]:
    """n units: an I-frame then P-frames, each with random strings (empty ones included)."""
    units = []
    for i in range(n):
        strings = tuple(rng.randbytes(rng.randrange(max_len + 1)) for _ in range(rng.randrange(max_strings + 1)))
        units.append(FrameUnit("I" if i == 0 or rng.random() < 0.2 else "P", rng.randrange(64), strings))
    return units


def make_stream(seed: int, n: int = 4, **overrides: object) -> bytes:
    rng = random.Random(seed)
    return write_stream(make_header(num_frames=n, **overrides), make_units(rng, n))


# --- an independent implementation of the layout in docs/FORMAT.md ---------------------------------------


def _split(data: bytes) -> tuple[bytes, list[bytes]]:
    """A stream -> (header bytes before the header CRC, unit bytes before each unit CRC), ignoring every CRC.

    Walks the structure only (no CRC or limit checks), so it also splits streams with edited values.
    """
    pos = _header_fields(data)["pack_hash"][1]
    header_body, bodies = data[:pos], []
    pos += 4
    while pos < len(data):
        start = pos
        count, pos = decode_varint(data, pos + 2)
        for _ in range(count):
            length, pos = decode_varint(data, pos)
            pos += length
        bodies.append(data[start:pos])
        pos += 4
    return header_body, bodies


def _seal(header_body: bytes, bodies: list[bytes]) -> bytes:
    """Append the CRCs FORMAT.md defines: CRC32(header bytes), CRC32(header CRC u32, index u32, unit bytes)."""
    header_crc = zlib.crc32(header_body)
    out = bytearray(header_body + struct.pack("<I", header_crc))
    for i, body in enumerate(bodies):
        out += body + struct.pack("<I", zlib.crc32(struct.pack("<II", header_crc, i) + body))
    return bytes(out)


def _header_fields(data: bytes) -> dict[str, tuple[int, int]]:
    """Field name -> (start, end) byte span in the header; magic, version and codec id included."""
    spans = {"magic": (0, 4), "version": (4, 5), "codec_id": (5, 6)}
    pos = 6
    for name, kind in HEADER_LAYOUT:
        end = pos + 1 if kind == "u8" else pos + 8 if kind == "hash" else decode_varint(data, pos)[1]
        spans[name], pos = (pos, end), end
    return spans


def _set_field(data: bytes, name: str, raw: bytes) -> bytes:
    """Replace the stored bytes of a header field and re-seal every CRC."""
    header_body, bodies = _split(data)
    start, end = _header_fields(header_body)[name]
    return _seal(header_body[:start] + raw + header_body[end:], bodies)


def _set_unit(data: bytes, index: int, body: bytes) -> bytes:
    """Replace the bytes of unit `index` (before its CRC) and re-seal."""
    header_body, bodies = _split(data)
    bodies[index] = body
    return _seal(header_body, bodies)


def assert_valid(header: StreamHeader, units: list[FrameUnit]) -> None:
    """What a successful read promises, checked field by field (not through the dataclass's own checks)."""
    assert header.codec in CODEC_IDS
    assert 1 <= header.width <= 8192 and 1 <= header.height <= 8192
    assert 1 <= header.fps_num < 2**32 and 1 <= header.fps_den < 2**32
    assert 1 <= header.num_frames <= 100_000
    assert header.intra_period == -1 or 1 <= header.intra_period <= 65535
    assert 0 <= header.qp <= 63 and 0 <= header.steps <= 1000 and 0 <= header.tdir_k <= header.steps
    assert 0 <= header.strength_milli <= 1000 and 0 <= header.flags <= 255 and 0 <= header.seed < 2**64
    assert type(header.pack_hash) is bytes and len(header.pack_hash) == 8
    assert len(units) == header.num_frames and units[0].frame_type == "I"
    for unit in units:
        assert unit.frame_type in ("I", "P") and 0 <= unit.qp <= 63 and len(unit.strings) <= MAX_STRINGS
        assert all(type(s) is bytes for s in unit.strings)


# --- round trips --------------------------------------------------------------------------------------------

ROUND_TRIP_CASES = {
    "diffvc-typical": (make_header(), None),
    "condlc-intra-only-first": (make_header(codec="condlc", intra_period=-1, steps=0, tdir_k=0), None),
    "max-values": (
        make_header(
            width=8192,
            height=8192,
            fps_num=2**32 - 1,
            fps_den=2**32 - 1,
            intra_period=65535,
            qp=63,
            steps=1000,
            tdir_k=1000,
            strength_milli=1000,
            flags=255,
            seed=2**64 - 1,
            pack_hash=b"\xff" * 8,
        ),
        None,
    ),
    "min-values-one-frame": (
        make_header(
            width=1,
            height=1,
            fps_num=1,
            fps_den=1,
            num_frames=1,
            intra_period=1,
            qp=0,
            steps=0,
            tdir_k=0,
            strength_milli=0,
            flags=0,
            seed=0,
            pack_hash=bytes(8),
        ),
        [FrameUnit("I", 0, ())],
    ),
    "empty-and-16-strings": (
        make_header(num_frames=3),
        [
            FrameUnit("I", 63, (b"",)),
            FrameUnit("P", 1, tuple(bytes([i]) * i for i in range(16))),
            FrameUnit("P", 2, (b"", b"", b"x" * 300)),
        ],
    ),
    "large-string": (make_header(num_frames=2), [FrameUnit("I", 5, (bytes(200_000),)), FrameUnit("I", 5, ())]),
}


@pytest.mark.parametrize("name", ROUND_TRIP_CASES)
def test_round_trip(name: str) -> None:
    header, units = ROUND_TRIP_CASES[name]
    units = units if units is not None else make_units(random.Random(name), header.num_frames)
    data = write_stream(header, units)
    for view in (data, bytearray(data), memoryview(data)):
        got_header, got_units = read_stream(view)
        assert got_header == header
        assert got_units == units
        assert_valid(got_header, got_units)
    header_only, offset = read_header(data[: len(_split(data)[0]) + 4])
    assert header_only == header and offset == len(_split(data)[0]) + 4


def test_incremental_writer_and_reader_match_the_functions() -> None:
    header, units = make_header(num_frames=5), make_units(random.Random(1), 5)
    writer = StreamWriter(header)
    for unit in units:
        writer.add(unit)
    data = writer.finish()
    assert data == write_stream(header, units)
    reader = StreamReader(memoryview(data))
    assert reader.header == header and list(reader.units()) == units


def test_numpy_like_integers_and_lists_are_normalised() -> None:
    class Index:  # stands in for numpy.int64: an integer through __index__, not an int subclass
        def __index__(self) -> int:
            return 7

    unit = FrameUnit("I", Index(), [bytearray(b"ab"), memoryview(b"c")])  # type: ignore[arg-type]
    assert unit.qp == 7 and type(unit.qp) is int and unit.strings == (b"ab", b"c")
    assert make_header(width=Index()).width == 7


def test_golden_bytes_match_format_doc() -> None:
    """The worked example in docs/FORMAT.md: a change to the layout must change this test and the document."""
    header = StreamHeader("diffvc", 64, 48, 25, 1, 2, -1, 32, 4, 2, 500, 3, 12345, bytes(range(8)))
    units = [FrameUnit("I", 32, (b"abc", b"")), FrameUnit("P", 30, ())]
    expected = bytes.fromhex(
        "44564331 04 01 40 30 19 01 02 00 20 04 02 f403 03 b960 0001020304050607 a9ec4c75"
        " 00 20 02 03 616263 00 fe3315bc"
        " 01 1e 00 65e98b63"
    )
    assert write_stream(header, units) == expected
    assert read_stream(expected) == (header, units)


# --- varints ------------------------------------------------------------------------------------------------

VARINT_EDGES = [
    (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16383, "ff7f"), (16384, "808001"),
    (2**32 - 1, "ffffffff0f"), (2**63, "80808080808080808001"), (2**64 - 1, "ffffffffffffffffff01"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "hex_bytes"), VARINT_EDGES)
def test_varint_edges(value: int, hex_bytes: str) -> None:
    encoded = encode_varint(value)
    assert encoded == bytes.fromhex(hex_bytes)
    assert decode_varint(b"\xaa" + encoded + b"\xbb", 1) == (value, 1 + len(encoded))


def test_varint_random_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        value = rng.getrandbits(rng.randrange(1, 65))
        encoded = encode_varint(value)
        assert decode_varint(encoded) == (value, len(encoded))
        assert len(encoded) == max(1, -(-value.bit_length() // 7))


@pytest.mark.parametrize(
    ("hex_bytes", "fragment"),
    [
        ("8000", "overlong"),  # 0 in two bytes
        ("ff00", "overlong"),  # 127 in two bytes
        ("8180808000", "overlong"),
        ("ffffffffffffffffff02", "above 2**64-1"),  # 2**64
        ("ffffffffffffffffff7f", "above 2**64-1"),
        ("8080808080808080808001", "longer than 10 bytes"),  # 11 bytes
        ("", "truncated"),
        ("80", "truncated"),
        ("ffffffff", "truncated"),
    ],
)
def test_varint_rejects(hex_bytes: str, fragment: str) -> None:
    with pytest.raises(BitstreamError, match=fragment.replace("*", r"\*")):
        decode_varint(bytes.fromhex(hex_bytes))


@pytest.mark.parametrize("value", [-1, 2**64, 2**70])
def test_varint_encode_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="outside 0..2"):
        encode_varint(value)


# --- validation on write ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"codec": "h264"}, "codec 'h264' unknown"),
        ({"width": 0}, "width 0 outside 1..8192"),
        ({"height": 8193}, "height 8193 outside 1..8192"),
        ({"fps_num": 0}, "fps_num 0"),
        ({"fps_den": -1}, "fps_den -1"),
        ({"num_frames": 100_001}, "num_frames 100001"),
        ({"intra_period": 0}, "intra_period 0"),
        ({"intra_period": -2}, "intra_period -2"),
        ({"intra_period": 65536}, "intra_period 65536"),
        ({"qp": 64}, "qp 64"),
        ({"steps": 1001}, "steps 1001"),
        ({"tdir_k": 21}, "tdir_k 21 outside 0..20"),
        ({"strength_milli": 1001}, "strength_milli 1001"),
        ({"flags": 256}, "flags 256"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed -1"),
        ({"pack_hash": b"1234567"}, "pack_hash must be 8 bytes, got 7"),
    ],
)
def test_header_rejects_invalid_values(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_header(**overrides)


@pytest.mark.parametrize("overrides", [{"width": 64.0}, {"qp": True}, {"seed": "1"}, {"pack_hash": "01234567"}])
def test_header_rejects_wrong_types(overrides: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        make_header(**overrides)


def test_unit_and_writer_reject_invalid_values() -> None:
    with pytest.raises(ValueError, match="frame_type 'B'"):
        FrameUnit("B", 0, ())
    with pytest.raises(ValueError, match="qp 64"):
        FrameUnit("I", 64, ())
    with pytest.raises(ValueError, match="17 strings exceed the limit of 16"):
        FrameUnit("I", 0, (b"",) * 17)
    with pytest.raises(TypeError, match="single string"):
        FrameUnit("I", 0, b"abc")  # type: ignore[arg-type]
    header = make_header(num_frames=2)
    with pytest.raises(ValueError, match="num_frames is 2 but 1 units"):
        write_stream(header, [FrameUnit("I", 0, ())])
    with pytest.raises(ValueError, match="first unit must be an I-frame"):
        write_stream(header, [FrameUnit("P", 0, ()), FrameUnit("P", 0, ())])
    writer = StreamWriter(make_header(num_frames=1))
    writer.add(FrameUnit("I", 0, ()))
    with pytest.raises(ValueError, match="no room"):
        writer.add(FrameUnit("P", 0, ()))


# --- specific damage, specific message -------------------------------------------------------------------

BASE = make_stream(seed=3, n=4)


def _unit_starts(data: bytes) -> list[int]:
    header_body, bodies = _split(data)
    starts, pos = [], len(header_body) + 4
    for body in bodies:
        starts.append(pos)
        pos += len(body) + 4
    return starts


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def _swap_units(data: bytes, i: int, j: int) -> bytes:
    header_body, bodies = _split(data)
    raw = [data[s : s + len(b) + 4] for s, b in zip(_unit_starts(data), bodies, strict=True)]
    raw[i], raw[j] = raw[j], raw[i]
    return data[: len(header_body) + 4] + b"".join(raw)


def _body(frame_type: int, qp: int, strings: list[bytes], count: int | None = None) -> bytes:
    """Unit bytes before the CRC, with an optional (wrong) string count."""
    out = bytes([frame_type, qp]) + encode_varint(len(strings) if count is None else count)
    return out + b"".join(encode_varint(len(s)) + s for s in strings)


DAMAGES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda d: b"", "empty input"),
    "wrong magic": (lambda d: b"RIFF" + d[4:], r"not a DVC1 stream \(magic b'RIFF'\)"),
    "short junk": (lambda d: b"\x00", r"not a DVC1 stream \(magic b'\\x00'\)"),
    "future version": (lambda d: d[:4] + b"\x07" + d[5:], r"unsupported format version 7 \(this build reads 4\)"),
    "unknown codec": (lambda d: d[:5] + b"\x09" + d[6:], "unknown codec id 9 at byte 5"),
    "header cut": (lambda d: d[:30], "truncated: header needs 5 more bytes for pack_hash at byte 27"),
    "header cut in varint": (lambda d: d[:7], "truncated: header ends inside width"),
    "header bit flip": (lambda d: _flip(d, 17, 3), "header: CRC mismatch"),
    "header CRC flip": (lambda d: _flip(d, len(_split(d)[0])), "header: CRC mismatch"),
    "frame 2 bit flip": (lambda d: _flip(d, _unit_starts(d)[2] + 1), "frame 2: CRC mismatch"),
    "units swapped": (lambda d: _swap_units(d, 1, 2), "frame 1: CRC mismatch"),
    "frame 3 cut": (lambda d: d[: _unit_starts(d)[3] + 2], "truncated: frame 3"),
    "last byte missing": (lambda d: d[:-1], "truncated: frame 3 needs 1 more byte for frame CRC"),
    "trailing junk": (lambda d: d + b"abc", "trailing data: 3 bytes after the last frame"),
    "trailing copy": (lambda d: d + d, "trailing data"),
    "huge string length": (
        lambda d: _set_unit(d, 0, _body(0, 1, [b"ab"])[:3] + encode_varint(2**63) + b"ab"),
        "frame 0: string 0 claims 9223372036854775808 bytes but only",
    ),
    "huge string count": (lambda d: _set_unit(d, 0, _body(0, 1, [], count=2**40)), "string count 1099511627776"),
    "count one too many": (lambda d: _set_unit(d, 0, _body(0, 1, [b"x"], count=2)), "frame 0"),
    "huge frame count": (
        lambda d: _set_field(d, "num_frames", encode_varint(100_000)),
        "truncated: header promises 100000 frames but only",
    ),
    "frame count too large": (
        lambda d: _set_field(d, "num_frames", encode_varint(100_001)),
        "header: invalid value: num_frames 100001 outside 1..100000",
    ),
    "width too large": (lambda d: _set_field(d, "width", encode_varint(9000)), "width 9000 outside 1..8192"),
    "intra period 0": (
        lambda d: _set_field(d, "intra_period", b"\x01"),
        "intra_period 0 invalid: use -1 .* or 1..65535",
    ),
    "tdir_k above steps": (lambda d: _set_field(d, "tdir_k", encode_varint(21)), "tdir_k 21 outside 0..20"),
    "overlong width": (lambda d: _set_field(d, "width", b"\x80\x8f\x00"), "header: width .* overlong"),
    "seed 2**64": (lambda d: _set_field(d, "seed", bytes.fromhex("ffffffffffffffffff02")), "seed .* above 2"),
    "frame type 5": (lambda d: _set_unit(d, 1, _body(5, 1, [])), "frame 1: unknown frame type 5"),
    "frame qp 64": (lambda d: _set_unit(d, 2, _body(1, 64, [])), "frame 2: invalid value: qp 64 outside 0..63"),
    "first frame P": (lambda d: _set_unit(d, 0, _body(1, 1, [])), "first frame must be an I-frame"),
    "unit dropped": (lambda d: d[: _unit_starts(d)[3]], "truncated: frame 3 needs 1 more byte for frame type"),
}


@pytest.mark.parametrize("name", DAMAGES)
def test_damage_gives_clear_error(name: str) -> None:
    damage, fragment = DAMAGES[name]
    with pytest.raises(BitstreamError, match=fragment):
        read_stream(damage(BASE))


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        read_stream("DVC1")  # type: ignore[arg-type]


def test_every_truncation_and_every_single_bit_flip_is_detected() -> None:
    data = make_stream(seed=11, n=3)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            read_stream(data[:cut])
    for pos in range(len(data)):
        for bit in range(8):
            with pytest.raises(BitstreamError):
                read_stream(_flip(data, pos, bit))


# --- fuzzing ------------------------------------------------------------------------------------------------

FUZZ_CASES = 20_000
PER_CASE_LIMIT_S = 2.0
FUZZ_BASES = [
    make_stream(seed=21, n=6),
    make_stream(seed=22, n=3, codec="condlc", intra_period=-1, steps=0, tdir_k=0),
    write_stream(make_header(num_frames=2, seed=2**64 - 1), make_units(random.Random(23), 2, MAX_STRINGS, 8)),
    write_stream(make_header(num_frames=1, width=1, height=1), [FrameUnit("I", 0, (b"",))]),
]
HUGE = [2**63, 2**64 - 1, 2**32, 2**31 - 1, 10**9, 100_001, 65536, 8193, 1001, 256, 64, 17, 0]


class _CaseTimeout(BaseException):
    """Raised by the per-case alarm; a BaseException so that no `except Exception` can swallow it."""


@contextmanager
def _alarm_guard() -> Iterator[Callable[[float], None]]:
    """Yields `arm(seconds)`: (re)start an alarm raising _CaseTimeout, 0 disarms. A no-op without SIGALRM."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield lambda seconds: None
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise _CaseTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _category(message: str) -> str:
    """'frame 3: CRC mismatch (stream damaged ...)' -> 'frame N: CRC mismatch', for the fuzz summary."""
    return re.split(r" \(| at byte| for ", re.sub(r"\b\d+\b", "N", message))[0]


def _varint_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte spans of every varint in a valid stream: header fields, string counts, string lengths."""
    fields = _header_fields(data)
    spans = [fields[name] for name, kind in HEADER_LAYOUT if kind.startswith("varint")]
    for start in _unit_starts(data):
        count, pos = decode_varint(data, start + 2)
        spans.append((start + 2, pos))
        for _ in range(count):
            length, end = decode_varint(data, pos)
            spans.append((pos, end))
            pos = end + length
    return spans


def _mutate(rng: random.Random, data: bytes, kind: str) -> bytes:
    """One damaged copy of `data`."""
    out = bytearray(data)
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "bit flip":
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == "multi bit flip":
        for _ in range(rng.randint(2, 16)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == "overwrite run":
        start = rng.randrange(len(out))
        out[start : start + rng.randint(1, 32)] = rng.randbytes(rng.randint(1, 32))
    elif kind == "huge varint":
        start, end = rng.choice(_varint_spans(data))
        raw = rng.choice([encode_varint(rng.choice(HUGE)), b"\xff" * rng.randint(9, 12), b"\x80\x00"])
        out[start:end] = raw
    elif kind == "resealed huge varint":
        return _reseal(_mutate(rng, data, "huge varint"))
    elif kind == "resealed header field":
        name, field_kind = rng.choice(HEADER_LAYOUT)
        value = rng.choice([*HUGE, rng.getrandbits(rng.randrange(1, 65))])
        raw = {"u8": bytes([value & 0xFF]), "hash": rng.randbytes(8)}.get(field_kind, encode_varint(value))
        return _set_field(data, name, raw)
    elif kind == "resealed unit edit":
        index = rng.randrange(len(_split(data)[1]))
        strings = [rng.randbytes(rng.randrange(5)) for _ in range(rng.randrange(18))]
        return _set_unit(data, index, _body(rng.choice([0, 0, 1, 2, 255]), rng.randrange(70), strings))
    elif kind == "swap units":
        n = len(_split(data)[1])
        return _swap_units(data, *rng.sample(range(n), 2)) if n > 1 else data + b"\x00"
    elif kind == "append junk":
        return data + rng.randbytes(rng.randint(1, 64))
    elif kind == "insert bytes":
        pos = rng.randrange(len(out) + 1)
        out[pos:pos] = rng.randbytes(rng.randint(1, 16))
    return bytes(out)


def _reseal(damaged: bytes) -> bytes:
    """Recompute every CRC of `damaged` where its structure still parses; otherwise return it unchanged."""
    try:
        return _seal(*_split(damaged))
    except BitstreamError:
        return damaged


MUTATIONS = [
    "truncate", "bit flip", "multi bit flip", "overwrite run", "huge varint", "resealed huge varint",
    "resealed header field", "resealed unit edit", "swap units", "append junk", "insert bytes",
]  # fmt: skip


def test_fuzz_damaged_streams_raise_bitstream_error_or_decode_validly() -> None:
    """Each damaged stream either raises BitstreamError or decodes to values within the limits.

    A stream that decodes must also be canonical: writing what was read gives back the same bytes.
    """
    rng = random.Random(20240601)
    outcomes: Counter[tuple[str, str]] = Counter()
    slowest = 0.0
    t0 = time.perf_counter()
    with _alarm_guard() as arm:
        for case in range(FUZZ_CASES):
            kind = MUTATIONS[case % len(MUTATIONS)]
            base = FUZZ_BASES[rng.randrange(len(FUZZ_BASES))]
            damaged = _mutate(rng, base, kind)
            view = rng.choice([bytes, bytearray, memoryview])(damaged)
            start = time.perf_counter()
            arm(PER_CASE_LIMIT_S)
            try:
                header, units = read_stream(view)
            except BitstreamError as e:
                outcomes[(kind, _category(str(e)))] += 1
            except _CaseTimeout:
                pytest.fail(f"case {case} ({kind}) ran past {PER_CASE_LIMIT_S} s: {damaged.hex()}")
            except Exception as e:  # noqa: BLE001 - any other exception is the failure this test looks for
                pytest.fail(f"case {case} ({kind}) raised {type(e).__name__}: {e}; input {damaged.hex()}")
            else:
                assert_valid(header, units)
                assert write_stream(header, units) == damaged, f"case {case} ({kind}) decoded a non-canonical stream"
                outcomes[(kind, "decoded")] += 1
            finally:
                arm(0)
            slowest = max(slowest, time.perf_counter() - start)
    elapsed = time.perf_counter() - t0

    by_kind = Counter(kind for kind, _ in outcomes.elements())
    print(f"\nfuzz: {FUZZ_CASES} cases in {elapsed:.2f} s, slowest case {slowest * 1000:.2f} ms")
    for (kind, outcome), n in sorted(outcomes.items()):
        print(f"  {kind:24s} {outcome:40s} {n}")
    assert sum(outcomes.values()) == FUZZ_CASES
    assert set(by_kind) == set(MUTATIONS)
    assert outcomes[("resealed header field", "decoded")] > 0  # the validity checks ran on decodable streams too
    assert sum(n for (_, o), n in outcomes.items() if o != "decoded") > FUZZ_CASES // 2
    assert elapsed < 30, f"fuzz took {elapsed:.1f} s"
    assert slowest < PER_CASE_LIMIT_S


def test_one_leb128_reader_and_writer_serve_dvc1_and_av1():
    from codec.bitio import encode_leb128, is_canonical, read_leb128

    for value in (0, 1, 127, 128, 300, 2**32, 2**64 - 1):
        data = b"\xaa" + encode_leb128(value) + b"\x55"
        value_read, end = read_leb128(data, 1, 10)
        assert value_read == value and end == len(data) - 1 and is_canonical(data, 1, end)
        assert encode_varint(value) == encode_leb128(value)
    assert read_leb128(b"\x80\x80", 0, 10) is None  # ends inside the number
    assert read_leb128(b"\x80" * 9 + b"\x01", 0, 8) is None  # longer than AV1's 8 bytes
    assert read_leb128(b"\x80\x00", 0, 10) == (0, 2) and not is_canonical(b"\x80\x00", 0, 2)
