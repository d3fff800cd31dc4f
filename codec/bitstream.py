"""DVC1: the one container format for the neural codecs (DiffVC and its baseline `condlc`).

A stream is a header (magic, version, codec id, picture and sampling parameters, model-pack hash, CRC) followed
by exactly `num_frames` frame units (type, QP, length-prefixed entropy-coded strings, CRC). docs/FORMAT.md
holds the byte layout; this module is the only code that reads or writes it.

    data = write_stream(header, units)          # ValueError on values outside the limits
    header, units = read_stream(data)           # BitstreamError on any damage, never another exception

Reading checks every count, length and dimension against its limit and against the bytes left before it slices
anything, so damaged input cannot make the reader allocate, hang or return values outside the limits.
"""

from __future__ import annotations

import operator
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

from codec.bitio import encode_leb128, is_canonical, read_leb128
from codec.errors import BitstreamError

__all__ = [
    "CODEC_IDS",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_STRINGS",
    "BitstreamError",
    "FrameUnit",
    "StreamHeader",
    "StreamReader",
    "StreamWriter",
    "decode_varint",
    "encode_varint",
    "read_header",
    "read_stream",
    "write_stream",
]

MAGIC = b"DVC1"
FORMAT_VERSION = 4  # 4: TDIR reuses the I-frame's x0 in the first P-frame after it; docs/FORMAT.md, "Versions"
RETIRED_VERSIONS = {
    1: "version 1 coded the frame's padding; re-encode the source with this build",
    2: "version 2 coded a P-frame's motion and latent as two strings; re-encode the source with this build",
    3: "version 3 ran every diffusion step in the first P-frame after an I-frame; re-encode the source with this build",
}
CODEC_IDS: dict[str, int] = {"diffvc": 1, "condlc": 2}  # explicit ids, stored in the stream: never reorder or reuse
CODEC_NAMES: dict[int, str] = {v: k for k, v in CODEC_IDS.items()}
FRAME_TYPES = ("I", "P")  # the stored code is the index: 0 = I, 1 = P
MAX_STRINGS = 16
PACK_HASH_SIZE = 8
VARINT_MAX_BYTES = 10
U64_MAX = 2**64 - 1
MIN_UNIT_SIZE = 7  # type u8 + qp u8 + string count varint (>= 1 byte) + CRC u32

# Inclusive value limits shared by the writer (ValueError) and the reader (BitstreamError).
LIMITS: dict[str, tuple[int, int]] = {
    "width": (1, 8192),
    "height": (1, 8192),
    "fps_num": (1, 2**32 - 1),
    "fps_den": (1, 2**32 - 1),
    "num_frames": (1, 100_000),
    "intra_period": (1, 65535),  # or -1: only the first frame is an I-frame
    "qp": (0, 63),
    "steps": (0, 1000),
    "tdir_k": (0, 1000),  # and at most `steps`
    "strength_milli": (0, 1000),
    "flags": (0, 255),
    "seed": (0, U64_MAX),
}

# Header fields after magic, version and codec id, in stream order, with how each is stored:
# "varint" (LEB128), "varint+1" (LEB128 of value + 1, so that -1 stores as 0), "u8", "hash" (PACK_HASH_SIZE raw bytes).
HEADER_LAYOUT: tuple[tuple[str, str], ...] = (
    ("width", "varint"),
    ("height", "varint"),
    ("fps_num", "varint"),
    ("fps_den", "varint"),
    ("num_frames", "varint"),
    ("intra_period", "varint+1"),
    ("qp", "u8"),
    ("steps", "varint"),
    ("tdir_k", "varint"),
    ("strength_milli", "varint"),
    ("flags", "u8"),
    ("seed", "varint"),
    ("pack_hash", "hash"),
)


# --- value checks: the one place for the limits ---------------------------------------------------------


def _as_int(name: str, value: object) -> int:
    """An integer-like value (int, numpy integer) as a plain int; TypeError for bool, float, str, ..."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _check_range(name: str, value: int, lo: int | None = None, hi: int | None = None) -> None:
    """ValueError unless lo <= value <= hi (bounds default to LIMITS[name])."""
    default_lo, default_hi = LIMITS[name]
    lo = default_lo if lo is None else lo
    hi = default_hi if hi is None else hi
    if not lo <= value <= hi:
        raise ValueError(f"{name} {value} outside {lo}..{hi}")


def _as_bytes(name: str, value: object) -> bytes:
    """A bytes-like value (bytes, bytearray, memoryview) as bytes; TypeError for anything else."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


@dataclass(frozen=True)
class StreamHeader:
    """Everything a decoder needs before the first frame. Validated at construction.

    Raises ValueError for a value outside its limits, TypeError for a value of the wrong type (e.g. a float width).

    codec: "diffvc" or "condlc". width, height: the original (unpadded) picture size in pixels, 1..8192.
    fps_num / fps_den: frame rate as an exact fraction, each 1..2**32-1. num_frames: 1..100000.
    intra_period: -1 (only the first frame is an I-frame) or 1..65535. qp: 0..63.
    steps: diffusion sampling steps, 0..1000 (0 = diffusion off). tdir_k: TDIR reuse steps, 0..steps.
    strength_milli: start strength s x 1000, 0..1000. flags: 0..255 bit switches. seed: 0..2**64-1.
    pack_hash: 8 bytes, the sha256 prefix of the model pack (the codec compares it, not this module).
    """

    codec: str
    width: int
    height: int
    fps_num: int
    fps_den: int
    num_frames: int
    intra_period: int
    qp: int
    steps: int
    tdir_k: int
    strength_milli: int
    flags: int
    seed: int
    pack_hash: bytes

    def __post_init__(self) -> None:
        if self.codec not in CODEC_IDS:
            raise ValueError(f"codec {self.codec!r} unknown (known: {', '.join(CODEC_IDS)})")
        for f in fields(self):
            if f.name not in ("codec", "pack_hash"):
                object.__setattr__(self, f.name, _as_int(f.name, getattr(self, f.name)))
        for name in LIMITS:
            if name not in ("intra_period", "tdir_k"):
                _check_range(name, getattr(self, name))
        lo, hi = LIMITS["intra_period"]
        if self.intra_period != -1 and not lo <= self.intra_period <= hi:
            raise ValueError(
                f"intra_period {self.intra_period} invalid: use -1 (only the first frame is an I-frame) or {lo}..{hi}"
            )
        _check_range("tdir_k", self.tdir_k, 0, self.steps)
        pack_hash = _as_bytes("pack_hash", self.pack_hash)
        if len(pack_hash) != PACK_HASH_SIZE:
            raise ValueError(f"pack_hash must be {PACK_HASH_SIZE} bytes, got {len(pack_hash)}")
        object.__setattr__(self, "pack_hash", pack_hash)


@dataclass(frozen=True)
class FrameUnit:
    """One coded frame. frame_type: "I" or "P". qp: 0..63. strings: 0..16 entropy-coded byte strings.

    Validated at construction (ValueError for values, TypeError for types); a list of bytes-like strings is stored
    as a tuple of bytes.
    """

    frame_type: str
    qp: int
    strings: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.frame_type not in FRAME_TYPES:
            raise ValueError(f"frame_type {self.frame_type!r} unknown (use 'I' or 'P')")
        qp = _as_int("qp", self.qp)
        _check_range("qp", qp)
        object.__setattr__(self, "qp", qp)
        if isinstance(self.strings, (bytes, bytearray, memoryview, str)):
            raise TypeError("strings must be a sequence of byte strings, not a single string")
        strings = tuple(_as_bytes(f"strings[{i}]", s) for i, s in enumerate(self.strings))
        if len(strings) > MAX_STRINGS:
            raise ValueError(f"{len(strings)} strings exceed the limit of {MAX_STRINGS}")
        object.__setattr__(self, "strings", strings)


# --- varints and fixed-size integers ----------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit = more bytes follow.

    0 <= value <= 2**64-1 (at most 10 bytes); ValueError otherwise.
    """
    value = _as_int("varint value", value)
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"varint value {value} outside 0..2**64-1")
    return encode_leb128(value)


def _read_varint(view: memoryview, pos: int, where: str, field: str) -> tuple[int, int]:
    """Decode the canonical LEB128 varint at view[pos]; (value, position after it). BitstreamError if invalid."""
    read = read_leb128(view, pos, VARINT_MAX_BYTES)
    if read is None:
        if len(view) - pos < VARINT_MAX_BYTES:  # the data ends inside the number
            raise BitstreamError(f"truncated: {where} ends inside {field} (varint at byte {pos})")
        read = (U64_MAX + 1, pos + VARINT_MAX_BYTES)  # ten continuation bytes: too long
    value, end = read
    if value > U64_MAX:
        raise BitstreamError(
            f"{where}: {field} (varint at byte {pos}) is longer than 10 bytes or above 2**64-1 (stream damaged)"
        )
    if not is_canonical(view, pos, end):
        raise BitstreamError(f"{where}: {field} (varint at byte {pos}) is overlong, not canonical (stream damaged)")
    return value, end


def decode_varint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode the unsigned LEB128 varint at data[offset]; returns (value, offset after it).

    Raises BitstreamError on truncation, on more than 10 bytes, on values above 2**64-1 and on overlong
    (non-canonical) encodings such as b"\\x80\\x00" for 0, so every value has exactly one encoding.
    """
    offset = _as_int("offset", offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return _read_varint(_as_view(data), offset, "input", "the varint")


def _as_view(data: object) -> memoryview:
    """A flat unsigned-byte view of any bytes-like object; TypeError for anything that is not bytes-like."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"expected a bytes-like DVC1 stream, got {type(data).__name__}") from None
    if view.ndim != 1 or view.format != "B" or not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view


def _count(n: int, noun: str) -> str:
    """'1 byte', '3 bytes'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class _Cursor:
    """Reads fixed-size integers, varints and byte runs from a memoryview, checking the bytes left first.

    `where` names the part being read ("header", "frame 3") for error messages; positions are absolute.
    """

    def __init__(self, view: memoryview, pos: int = 0, where: str = "header") -> None:
        self.view = view
        self.pos = pos
        self.where = where

    @property
    def remaining(self) -> int:
        return len(self.view) - self.pos

    def need(self, n: int, field: str) -> None:
        """BitstreamError unless n more bytes are left."""
        if n > self.remaining:
            missing = _count(n - self.remaining, "more byte")
            raise BitstreamError(f"truncated: {self.where} needs {missing} for {field} at byte {self.pos}")

    def take(self, n: int, field: str) -> memoryview:
        """The next n bytes (a view, no copy)."""
        self.need(n, field)
        start, self.pos = self.pos, self.pos + n
        return self.view[start : self.pos]

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u32(self, field: str) -> int:
        """Unsigned 32-bit little-endian."""
        return struct.unpack("<I", self.take(4, field))[0]

    def varint(self, field: str) -> int:
        value, self.pos = _read_varint(self.view, self.pos, self.where, field)
        return value


def _u8(value: int) -> bytes:
    return bytes((value,))


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


# --- CRCs -----------------------------------------------------------------------------------------------


def _unit_crc(header_crc: int, index: int, unit_bytes: bytes | memoryview) -> int:
    """CRC32 of (header CRC u32 LE, frame index u32 LE, unit bytes before the CRC).

    Binding each unit to its stream and position makes swapped, dropped or spliced-in units fail their CRC.
    """
    return zlib.crc32(unit_bytes, zlib.crc32(struct.pack("<II", header_crc, index)))


# --- writing --------------------------------------------------------------------------------------------


def _encode_header(header: StreamHeader) -> bytes:
    """Header bytes including the trailing CRC."""
    out = bytearray(MAGIC + _u8(FORMAT_VERSION) + _u8(CODEC_IDS[header.codec]))
    for name, kind in HEADER_LAYOUT:
        value = getattr(header, name)
        if kind == "varint":
            out += encode_varint(value)
        elif kind == "varint+1":
            out += encode_varint(value + 1)
        elif kind == "u8":
            out += _u8(value)
        else:
            out += value
    return bytes(out + _u32(zlib.crc32(out)))


def _encode_unit(unit: FrameUnit, header_crc: int, index: int) -> bytes:
    """Unit bytes including the trailing CRC."""
    out = bytearray(_u8(FRAME_TYPES.index(unit.frame_type)) + _u8(unit.qp) + encode_varint(len(unit.strings)))
    for s in unit.strings:
        out += encode_varint(len(s)) + s
    return bytes(out + _u32(_unit_crc(header_crc, index, out)))


class StreamWriter:
    """Builds a DVC1 stream one unit at a time: `add(unit)` num_frames times, then `finish()` -> bytes.

    Raises ValueError on an invalid header or unit, a first unit that is not an I-frame, or a unit count
    different from header.num_frames.
    """

    def __init__(self, header: StreamHeader) -> None:
        if not isinstance(header, StreamHeader):
            raise TypeError(f"header must be a StreamHeader, got {type(header).__name__}")
        self.header = header
        head = _encode_header(header)
        self._header_crc = struct.unpack("<I", head[-4:])[0]
        self._parts = [head]
        self._count = 0

    def add(self, unit: FrameUnit) -> None:
        if not isinstance(unit, FrameUnit):
            raise TypeError(f"unit must be a FrameUnit, got {type(unit).__name__}")
        if self._count >= self.header.num_frames:
            raise ValueError(f"header.num_frames is {self.header.num_frames}: no room for another unit")
        if self._count == 0 and unit.frame_type != "I":
            raise ValueError("the first unit must be an I-frame")
        self._parts.append(_encode_unit(unit, self._header_crc, self._count))
        self._count += 1

    def finish(self) -> bytes:
        if self._count != self.header.num_frames:
            raise ValueError(f"header.num_frames is {self.header.num_frames} but {self._count} units were added")
        return b"".join(self._parts)


def write_stream(header: StreamHeader, units: Sequence[FrameUnit]) -> bytes:
    """The DVC1 bytes of `header` followed by `units` (exactly header.num_frames of them, the first an I-frame)."""
    writer = StreamWriter(header)
    if len(units) != header.num_frames:
        raise ValueError(f"header.num_frames is {header.num_frames} but {len(units)} units were given")
    for unit in units:
        writer.add(unit)
    return writer.finish()


# --- reading --------------------------------------------------------------------------------------------


def _read_magic_version_codec(cur: _Cursor) -> str:
    """Check magic and version, return the codec name; messages say what the bytes are instead."""
    view = cur.view
    if len(view) == 0:
        raise BitstreamError("empty input: not a DVC1 stream (0 bytes)")
    head = bytes(view[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        raise BitstreamError(f"not a DVC1 stream (magic {head!r})")
    cur.take(len(MAGIC), "magic")
    version = cur.u8("format version")
    if version in RETIRED_VERSIONS:
        raise BitstreamError(
            f"format version {version} is no longer decoded (this build reads {FORMAT_VERSION}): "
            f"{RETIRED_VERSIONS[version]}"
        )
    if version != FORMAT_VERSION:
        raise BitstreamError(f"unsupported format version {version} (this build reads {FORMAT_VERSION})")
    codec_id = cur.u8("codec id")
    if codec_id not in CODEC_NAMES:
        known = ", ".join(f"{i}={n}" for i, n in CODEC_NAMES.items())
        raise BitstreamError(f"unknown codec id {codec_id} at byte {cur.pos - 1} (this build knows {known})")
    return CODEC_NAMES[codec_id]


def _read_header(cur: _Cursor) -> tuple[StreamHeader, int]:
    """Parse the header at cur.pos, verify its CRC, then its values; (header, header CRC)."""
    codec = _read_magic_version_codec(cur)
    values: dict[str, object] = {"codec": codec}
    for name, kind in HEADER_LAYOUT:
        if kind == "varint":
            values[name] = cur.varint(name)
        elif kind == "varint+1":
            values[name] = cur.varint(name) - 1
        elif kind == "u8":
            values[name] = cur.u8(name)
        else:
            values[name] = bytes(cur.take(PACK_HASH_SIZE, name))
    covered = cur.view[: cur.pos]
    stored = cur.u32("header CRC")
    if stored != zlib.crc32(covered):
        raise BitstreamError("header: CRC mismatch (stream damaged)")
    try:
        header = StreamHeader(**values)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        raise BitstreamError(f"header: invalid value: {e} (stream damaged or written by another encoder)") from None
    return header, stored


def read_header(data: bytes | bytearray | memoryview) -> tuple[StreamHeader, int]:
    """Parse and check the header; returns it and the byte offset of the first frame unit.

    Reads only the header, so it works on the first bytes of a stream. BitstreamError on any damage.
    """
    cur = _Cursor(_as_view(data))
    header, _ = _read_header(cur)
    return header, cur.pos


def _read_unit(cur: _Cursor, header_crc: int, index: int) -> FrameUnit:
    """Parse, CRC-check and validate the unit at cur.pos. Counts and lengths are checked before any slicing."""
    cur.where = f"frame {index}"
    start = cur.pos
    type_code = cur.u8("frame type")
    qp = cur.u8("qp")
    count = cur.varint("string count")
    if count > MAX_STRINGS:
        raise BitstreamError(f"frame {index}: string count {count} exceeds the limit {MAX_STRINGS} (stream damaged)")
    strings = []
    for i in range(count):
        length = cur.varint(f"string {i} length")
        if length > cur.remaining:
            raise BitstreamError(
                f"frame {index}: string {i} claims {_count(length, 'byte')} but only {_count(cur.remaining, 'byte')} "
                f"remain at byte {cur.pos} (stream damaged or truncated)"
            )
        strings.append(cur.take(length, f"string {i}"))
    covered = cur.view[start : cur.pos]
    if cur.u32("frame CRC") != _unit_crc(header_crc, index, covered):
        raise BitstreamError(
            f"frame {index}: CRC mismatch (stream damaged, or units out of order; unit starts at byte {start})"
        )
    if type_code >= len(FRAME_TYPES):
        raise BitstreamError(f"frame {index}: unknown frame type {type_code} (0=I, 1=P)")
    try:
        return FrameUnit(FRAME_TYPES[type_code], qp, tuple(bytes(s) for s in strings))
    except (ValueError, TypeError) as e:
        raise BitstreamError(f"frame {index}: invalid value: {e}") from None


class StreamReader:
    """Reads a DVC1 stream incrementally: the header at construction, then `units()` yields each frame unit.

    `units()` raises BitstreamError at the first damaged unit, and after the last one if bytes trail the stream.
    """

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._cur = _Cursor(_as_view(data))
        self.header, self._header_crc = _read_header(self._cur)
        self.units_offset = self._cur.pos
        n, left = self.header.num_frames, self._cur.remaining
        if n * MIN_UNIT_SIZE > left:
            raise BitstreamError(
                f"truncated: header promises {n} frames but only {_count(left, 'byte')} follow "
                f"(each frame needs at least {MIN_UNIT_SIZE})"
            )

    def units(self) -> Iterator[FrameUnit]:
        cur = self._cur
        cur.pos = self.units_offset
        for index in range(self.header.num_frames):
            unit = _read_unit(cur, self._header_crc, index)
            if index == 0 and unit.frame_type != "I":
                raise BitstreamError("frame 0: the stream starts with a P-frame; the first frame must be an I-frame")
            yield unit
        if cur.remaining:
            raise BitstreamError(
                f"trailing data: {_count(cur.remaining, 'byte')} after the last frame (stream ends at byte {cur.pos})"
            )


def read_stream(data: bytes | bytearray | memoryview) -> tuple[StreamHeader, list[FrameUnit]]:
    """Parse a whole DVC1 stream: (header, units). BitstreamError on any damage, truncation or trailing data."""
    reader = StreamReader(data)
    return reader.header, list(reader.units())
