"""Seeded mutations of real bitstreams, aimed at each container's structure.

Three stream syntaxes: DVC1 (docs/FORMAT.md: header fields, frame units, length-prefixed strings, CRCs), Annex-B
(HEVC, H.264: start codes, NAL units, the SPS size fields) and AV1 low-overhead OBUs (OBU sizes, the sequence
header's size fields). Every kind of mutation applies to every syntax:

* truncate: a cut anywhere, at a unit / access-unit boundary, inside the header or a parameter set, in the last
  bytes.
* bit_flip: 1-16 flipped bits (for DVC1 a third of the time in the header).
* byte_run: a run overwritten with random bytes, zeros, 0xFF or one repeated byte.
* insert_delete: bytes inserted or removed.
* length_field: DVC1 string counts and lengths set to other values (+-1, 0, huge, overlong varints); Annex-B
  start codes removed, added, shortened or lengthened, NAL header bytes changed; AV1 OBU size fields edited.
* dimension_field: DVC1 width / height set to edge values; the SPS / sequence-header size fields (and cropping
  windows) rewritten.
* header_field: any other DVC1 header field (fps, frame count, intra period, QP, steps, strength, TDIR K, flags,
  seed, pack hash, codec id, version, magic); bits inside the anchors' non-picture units (VPS/SPS/PPS/SEI,
  sequence header).
* frame_reorder: units / access units swapped, moved, duplicated, dropped, reversed.
* payload: DVC1 entropy-coded strings damaged (flipped, cut, extended, zeroed, swapped, dropped, added), frame
  type or QP changed; bytes inside one picture's slice / tile data.
* splice: DVC1 units or the header of another stream of the same codec; the start of one elementary stream with
  the end of another.

DVC1 edits are "resealed" for about two thirds of the cases: every CRC is recomputed along the structure the
damaged bytes now have, so the damage reaches the codec's value checks, the entropy decoder and the model instead
of stopping at a CRC. The detail string of a `Mutation` says what was done ("resealed" included).
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass
from functools import cached_property

from codec.baselines.ffmpeg import AV1_LEB128_MAX_BYTES, AV1_OBUS, H264_ANNEX_B, HEVC_ANNEX_B, StreamSyntax
from codec.bitio import encode_leb128, read_leb128
from codec.bitstream import (
    HEADER_LAYOUT,
    LIMITS,
    MAGIC,
    PACK_HASH_SIZE,
    BitstreamError,
    _unit_crc,  # the container's own unit CRC rule (docs/FORMAT.md), for resealing damaged streams
    decode_varint,
    encode_varint,
    read_stream,
)
from codec.fuzz.paramsets import SIZE_FIELDS, ParamSet, parse_param_set, rewrite_field

__all__ = ["KINDS", "Mutation", "NotApplicable", "StreamSample", "mutate", "reseal_dvc1", "stream_syntax"]

KINDS = (
    "truncate", "bit_flip", "byte_run", "insert_delete", "length_field",
    "dimension_field", "header_field", "frame_reorder", "payload", "splice",
)  # fmt: skip
SYNTAXES: dict[str, StreamSyntax] = {"hevc": HEVC_ANNEX_B, "h264": H264_ANNEX_B, "av1": AV1_OBUS}
HUGE = (2**64 - 1, 2**63, 2**32, 2**32 - 1, 2**31, 10**9, 2**20, 100_001, 65_536, 8193, 1001, 256)
RESEAL_P = 2 / 3


class NotApplicable(Exception):
    """This kind of mutation has nothing to act on in this stream (e.g. no second unit to swap)."""


def stream_syntax(codec: str) -> str:
    """How the codec's streams are read ("hevc", "h264", "av1", "dvc1" or "opaque"): what the codec declares."""
    from codec.registry import get_entry

    return get_entry(codec).bitstream_syntax


@dataclass(frozen=True)
class Mutation:
    kind: str
    detail: str
    data: bytes


# --- the streams being mutated ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSpan:
    """Byte spans of one DVC1 frame unit: [start, end) including its CRC; the count varint; each string's length
    varint and data."""

    start: int
    end: int
    count: tuple[int, int]
    lengths: tuple[tuple[int, int], ...]
    strings: tuple[tuple[int, int], ...]


@dataclass
class StreamSample:
    """A valid stream of one codec, with its structure parsed once (lazily) for targeted mutations."""

    codec: str
    data: bytes
    label: str = ""

    @property
    def syntax(self) -> str:
        return stream_syntax(self.codec)

    # DVC1 ----------------------------------------------------------------------------------------------------

    @cached_property
    def dvc1_fields(self) -> dict[str, tuple[int, int]]:
        """Byte span of each header field by name (HEADER_LAYOUT's names plus magic, version, codec_id,
        header_crc)."""
        data = self.data
        spans = {"magic": (0, 4), "version": (4, 5), "codec_id": (5, 6)}
        pos = 6
        for name, kind in HEADER_LAYOUT:
            if kind.startswith("varint"):
                end = decode_varint(data, pos)[1]
            elif kind == "u8":
                end = pos + 1
            else:
                end = pos + PACK_HASH_SIZE
            spans[name], pos = (pos, end), end
        spans["header_crc"] = (pos, pos + 4)
        return spans

    @cached_property
    def dvc1_units(self) -> tuple[UnitSpan, ...]:
        read_stream(self.data)  # a sample must be valid
        data, pos, units = self.data, self.dvc1_fields["header_crc"][1], []
        while pos < len(data):
            start = pos
            count, after = decode_varint(data, pos + 2)
            lengths, strings, p = [], [], after
            for _ in range(count):
                length, end = decode_varint(data, p)
                lengths.append((p, end))
                strings.append((end, end + length))
                p = end + length
            units.append(UnitSpan(start, p + 4, (pos + 2, after), tuple(lengths), tuple(strings)))
            pos = p + 4
        return tuple(units)

    # Annex-B and OBU ---------------------------------------------------------------------------------------

    @cached_property
    def units(self) -> list[bytes]:
        """NAL units (with their start codes) or OBUs."""
        return list(SYNTAXES[self.syntax].units(self.data))

    @cached_property
    def access_units(self) -> list[list[int]]:
        """Indexes into `units` grouped per picture: the non-picture units before a picture belong to it."""
        syntax = SYNTAXES[self.syntax]
        groups: list[list[int]] = []
        pending: list[int] = []
        for i, unit in enumerate(self.units):
            if syntax.starts_picture(unit):
                groups.append(pending + [i])
                pending = []
            elif groups and (self.syntax == "av1" or syntax.is_picture(unit)):
                groups[-1].append(i)
            else:
                pending.append(i)
        if pending and groups:
            groups[-1].extend(pending)
        return groups

    @cached_property
    def param_sets(self) -> list[tuple[int, ParamSet]]:
        found = [(i, parse_param_set(u, self.syntax)) for i, u in enumerate(self.units)]
        return [(i, ps) for i, ps in found if ps is not None]

    @cached_property
    def picture_units(self) -> list[int]:
        syntax = SYNTAXES[self.syntax]
        return [i for i, u in enumerate(self.units) if syntax.is_picture(u)]


# --- DVC1 resealing ---------------------------------------------------------------------------------------


def _dvc1_header_end(data: bytes | bytearray) -> int:
    pos = 6
    for _, kind in HEADER_LAYOUT:
        if kind.startswith("varint"):
            pos = decode_varint(data, pos)[1]
        else:
            pos += 1 if kind == "u8" else PACK_HASH_SIZE
    return pos


def reseal_dvc1(data: bytes) -> bytes:
    """`data` with the header CRC and every unit CRC recomputed along the structure the bytes have now, as far as
    it parses (at most 64 strings are walked per unit); the rest is left as it is."""
    out = bytearray(data)
    try:
        pos = _dvc1_header_end(out)
    except BitstreamError:
        return bytes(out)
    if pos + 4 > len(out):
        return bytes(out)
    header_crc = zlib.crc32(out[:pos])
    out[pos : pos + 4] = struct.pack("<I", header_crc)
    pos += 4
    index = 0
    while pos < len(out):
        start = pos
        try:
            count, p = decode_varint(out, pos + 2)
            for _ in range(min(count, 64)):
                length, p = decode_varint(out, p)
                p += length
        except BitstreamError:
            break
        if p + 4 > len(out):
            break
        out[p : p + 4] = struct.pack("<I", _unit_crc(header_crc, index, bytes(out[start:p])))
        pos, index = p + 4, index + 1
    return bytes(out)


def _maybe_reseal(rng: random.Random, data: bytes, detail: str) -> tuple[bytes, str]:
    if rng.random() < RESEAL_P:
        return reseal_dvc1(data), detail + ", resealed"
    return data, detail


def _splice(data: bytes, start: int, end: int, new: bytes) -> bytes:
    return data[:start] + new + data[end:]


# --- value choices ----------------------------------------------------------------------------------------


def _int_value(rng: random.Random, current: int, lo: int, hi: int, valid_p: float = 0.75) -> int:
    """Mostly a value within lo..hi (edges, neighbours of `current`, log-uniform draws), else one outside it."""
    if rng.random() < valid_p:
        choices = [lo, hi, lo + 1, hi - 1, current - 1, current + 1, current * 2, current // 2]
        choices = [v for v in choices if lo <= v <= hi and v != current]
        if rng.random() < 0.3 or not choices:
            span = max(1, hi - lo)
            return lo + min(span, int(2 ** rng.uniform(0, span.bit_length())) - 1)
        return rng.choice(choices)
    return rng.choice([hi + 1, hi + 2, *(v for v in HUGE if v > hi), *([lo - 1] if lo > 0 else [])])


def _varint_bytes(rng: random.Random, value: int) -> tuple[bytes, str]:
    """The canonical varint of `value` (clipped to 64 bits), now and then an overlong or over-long form."""
    value = min(max(value, 0), 2**64 - 1)
    r = rng.random()
    if r < 0.05:
        return encode_varint(value)[:-1] + bytes([encode_varint(value)[-1] | 0x80, 0]), "overlong"
    if r < 0.08:
        return b"\xff" * rng.randint(10, 12), "over 10 bytes"
    return encode_varint(value), str(value)


# --- DVC1 mutations ---------------------------------------------------------------------------------------


def _dvc1_length_field(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    unit_index = rng.randrange(len(s.dvc1_units))
    unit = s.dvc1_units[unit_index]
    spans = [("string count", unit.count)] + [(f"string {i} length", sp) for i, sp in enumerate(unit.lengths)]
    name, (start, end) = rng.choice(spans)
    current = decode_varint(s.data, start)[0]
    value = rng.choice([current + 1, current - 1, 0, current * 2, current + rng.randint(2, 64),
                        len(s.data), len(s.data) - start, *HUGE, 17, 16])  # fmt: skip
    raw, shown = _varint_bytes(rng, value)
    return _maybe_reseal(rng, _splice(s.data, start, end, raw), f"frame {unit_index} {name} {current}->{shown}")


def _header_value(rng: random.Random, s: StreamSample, name: str, kind: str, max_steps: int) -> tuple[bytes, str]:
    """New bytes for the header field `name` (stored as `kind`) and how to show the edit."""
    start, end = s.dvc1_fields[name]
    old = s.data[start:end]
    if kind == "hash":
        new = bytearray(old)
        if rng.random() < 0.5:
            new[rng.randrange(len(new))] ^= 1 << rng.randrange(8)
        else:
            new = bytearray(rng.randbytes(PACK_HASH_SIZE))
        return bytes(new), "changed"
    if kind == "u8":
        if name == "flags" and rng.random() < 0.5:
            value = old[0] ^ (1 << rng.randrange(8))
        else:
            lo, hi = LIMITS[name]
            value = _int_value(rng, old[0], lo, min(hi, 255), valid_p=0.8 if hi < 255 else 1.0) & 0xFF
        return bytes([value]), str(value)
    current = decode_varint(s.data, start)[0]
    lo, hi = LIMITS[name]
    if kind == "varint+1":
        stored = 0 if rng.random() < 0.15 else 1 if rng.random() < 0.1 else _int_value(rng, current - 1, lo, hi) + 1
        raw, shown = _varint_bytes(rng, stored)
        return raw, f"{shown} (stored +1)"
    if name in ("width", "height"):
        value = rng.choice([1, 2, 3, 7, 8, 63, 64, 65, 127, 128, 4095, 4096, 4097, 8191, 8192, 8193,
                            current - 1, current + 1, current * 2, _int_value(rng, current, lo, hi)])  # fmt: skip
    elif name == "steps":
        value = min(max_steps, rng.choice([0, 1, 2, 3, 10, 50, current + 1, current * 2, 999, 1000]))
    else:
        value = _int_value(rng, current, lo, hi)
    return _varint_bytes(rng, value)


def _dvc1_diffusion(rng: random.Random, s: StreamSample, max_steps: int) -> tuple[bytes, str]:
    """steps, tdir_k and strength_milli set together, mostly to a combination the container accepts."""
    steps = min(max_steps, rng.choice([1, 2, 4, 10, 50, 999, 1000, rng.randint(0, 1000)]))
    strength = rng.choice([0, 1, 500, 999, 1000, rng.randint(0, 1000)])
    tdir_k = rng.choice([0, steps, steps // 2, rng.randint(0, steps), steps + 1])
    data, parts = s.data, []
    for name, value in sorted(
        (("steps", steps), ("tdir_k", tdir_k), ("strength_milli", strength)),
        key=lambda item: s.dvc1_fields[item[0]][0],
        reverse=True,
    ):
        start, end = s.dvc1_fields[name]
        data = _splice(data, start, end, encode_varint(value))
        parts.append(f"{name}={value}")
    return _maybe_reseal(rng, data, ", ".join(reversed(parts)))


def _dvc1_set_fields(rng: random.Random, s: StreamSample, names: list[str], max_steps: int) -> tuple[bytes, str]:
    """Replace the header fields `names` (back to front, so that spans stay valid), then maybe reseal."""
    kinds = dict(HEADER_LAYOUT)
    data, parts = s.data, []
    for name in sorted(names, key=lambda n: s.dvc1_fields[n][0], reverse=True):
        start, end = s.dvc1_fields[name]
        if name == "magic":
            raw = rng.choice([b"DVC0", b"DVC2", b"dvc1", rng.randbytes(4), MAGIC[:3] + b"\x00"])
            shown = repr(raw)
        elif name in ("version", "codec_id"):
            value = rng.choice([0, 2, 3, 255, 1] if name == "codec_id" else [0, 2, 255])
            raw, shown = bytes([value]), str(value)
        else:
            raw, shown = _header_value(rng, s, name, kinds[name], max_steps)
        data = _splice(data, start, end, raw)
        parts.append(f"{name}={shown}")
    return _maybe_reseal(rng, data, ", ".join(reversed(parts)))


def _dvc1_header_field(rng: random.Random, s: StreamSample, max_steps: int) -> tuple[bytes, str]:
    names = [n for n, _ in HEADER_LAYOUT if n not in ("width", "height")] + ["magic", "version", "codec_id"]
    if rng.random() < 0.25:
        return _dvc1_diffusion(rng, s, max_steps)
    return _dvc1_set_fields(rng, s, [rng.choice(names)], max_steps)


def _dvc1_dimension_field(rng: random.Random, s: StreamSample, max_steps: int) -> tuple[bytes, str]:
    names = rng.choice([["width"], ["height"], ["width", "height"]])
    return _dvc1_set_fields(rng, s, names, max_steps)


def _dvc1_unit_bytes(s: StreamSample) -> list[bytes]:
    return [s.data[u.start : u.end] for u in s.dvc1_units]


def _reorder(rng: random.Random, n: int) -> tuple[list[int], str]:
    """A new order of n items (indexes may repeat or be missing) and its description."""
    ops = ["duplicate", "drop", "reverse"] + (["swap", "move"] if n > 1 else [])
    op = rng.choice(ops)
    order = list(range(n))
    if op == "swap":
        i, j = rng.sample(range(n), 2)
        order[i], order[j] = order[j], order[i]
        return order, f"swap {i},{j}"
    if op == "move":
        i = rng.randrange(n)
        order.pop(i)
        j = rng.randrange(n)
        order.insert(j, i)
        return order, f"move {i} to {j}"
    if op == "duplicate":
        i = rng.randrange(n)
        order.insert(rng.randrange(n + 1), i)
        return order, f"duplicate {i}"
    if op == "drop":
        if n == 1:
            return [], "drop the only unit"
        i = rng.randrange(n)
        order.pop(i)
        return order, f"drop {i}"
    if n == 1:
        return [0, 0], "duplicate 0"
    return order[::-1], "reverse"


def _dvc1_with_units(rng: random.Random, s: StreamSample, units: list[bytes], detail: str) -> tuple[bytes, str]:
    """The header of `s` followed by `units` (raw bytes); resealed with num_frames set to their count, or raw."""
    header_end = s.dvc1_fields["header_crc"][1]
    if rng.random() < RESEAL_P and units:
        start, end = s.dvc1_fields["num_frames"]
        head = _splice(s.data[:header_end], start, end, encode_varint(len(units)))
        return reseal_dvc1(head + b"".join(units)), detail + ", num_frames updated, resealed"
    return s.data[:header_end] + b"".join(units), detail


def _dvc1_frame_reorder(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    units = _dvc1_unit_bytes(s)
    order, detail = _reorder(rng, len(units))
    return _dvc1_with_units(rng, s, [units[i] for i in order], detail)


def _damage_string(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    """One damaged entropy-coded string."""
    op = rng.choice(["flip", "cut", "extend", "zero word", "random", "other string", "empty"])
    if op == "flip" and data:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out), "bits flipped"
    if op == "cut" and data:
        cut = rng.choice([len(data) - 1, len(data) - 4, len(data) // 2, rng.randrange(len(data))])
        return data[: max(cut, 0)], f"cut to {max(cut, 0)} bytes"
    if op == "extend":
        extra = rng.choice([b"\x00" * 4, rng.randbytes(4), rng.randbytes(rng.randint(1, 9)), data[:8]])
        return data + extra, f"{len(extra)} bytes appended"
    if op == "zero word" and len(data) >= 4:
        at = 4 * rng.randrange(len(data) // 4)
        return data[:at] + b"\x00" * 4 + data[at + 4 :], f"word {at // 4} zeroed"
    if op == "random":
        return rng.randbytes(len(data) or 4), "random bytes"
    if op == "other string" and other != data:
        return other, "replaced by another string"
    return b"", "emptied"


def _dvc1_payload(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    """Damage inside one unit (strings, type, QP), written back with the unit's CRC recomputed (always)."""
    _, units = read_stream(s.data)
    index = rng.randrange(len(units))
    unit = units[index]
    strings = list(unit.strings)
    every = [x for u in units for x in u.strings]
    op = rng.choice(["string", "string", "string", "swap strings", "drop string", "add string", "type", "qp"])
    if op == "string" and strings:
        i = rng.randrange(len(strings))
        strings[i], how = _damage_string(rng, strings[i], rng.choice(every))
        detail = f"string {i} {how}"
    elif op == "swap strings" and len(strings) > 1:
        i, j = rng.sample(range(len(strings)), 2)
        strings[i], strings[j] = strings[j], strings[i]
        detail = f"strings {i},{j} swapped"
    elif op == "drop string" and strings:
        i = rng.randrange(len(strings))
        strings.pop(i)
        detail = f"string {i} dropped"
    elif op == "add string":
        i = rng.randrange(len(strings) + 1)
        strings.insert(i, rng.choice([b"", rng.randbytes(8), rng.choice(every)]))
        detail = f"string added at {i}"
    elif op == "type":
        new_type = 1 - ("I", "P").index(unit.frame_type)
        body = bytes([new_type, unit.qp]) + _strings_bytes(strings)
        return _dvc1_replace_unit(s, index, body), f"frame {index} type -> {'IP'[new_type]}, resealed"
    else:
        qp = rng.choice([0, 63, (unit.qp + rng.randint(1, 63)) % 64])
        body = bytes([0 if unit.frame_type == "I" else 1, qp]) + _strings_bytes(strings)
        return _dvc1_replace_unit(s, index, body), f"frame {index} qp {unit.qp}->{qp}, resealed"
    body = bytes([0 if unit.frame_type == "I" else 1, unit.qp]) + _strings_bytes(strings)
    return _dvc1_replace_unit(s, index, body), f"frame {index} {detail}, resealed"


def _strings_bytes(strings: list[bytes]) -> bytes:
    return encode_varint(len(strings)) + b"".join(encode_varint(len(x)) + x for x in strings)


def _dvc1_replace_unit(s: StreamSample, index: int, body: bytes) -> bytes:
    """`s` with unit `index` replaced by `body` (type .. last string) and a placeholder CRC, then resealed."""
    unit = s.dvc1_units[index]
    return reseal_dvc1(_splice(s.data, unit.start, unit.end, body + b"\x00" * 4))


def _dvc1_splice(rng: random.Random, s: StreamSample, others: list[StreamSample]) -> tuple[bytes, str]:
    """Units or the header of another stream of the same codec (another size, QP or GOP)."""
    candidates = [o for o in others if o.data != s.data]
    if not candidates:
        raise NotApplicable("no other stream to splice from")
    other = rng.choice(candidates)
    op = rng.choice(["their header", "their unit", "their tail"])
    units = _dvc1_unit_bytes(s)
    theirs = _dvc1_unit_bytes(other)
    if op == "their header":
        n = len(units)
        start, end = other.dvc1_fields["num_frames"]
        head = _splice(other.data[: other.dvc1_fields["header_crc"][1]], start, end, encode_varint(n))
        return reseal_dvc1(head + b"".join(units)), f"header of {other.label} on these units, resealed"
    if op == "their unit":
        i, j = rng.randrange(len(units)), rng.randrange(len(theirs))
        units[i] = theirs[j]
        return _dvc1_with_units(rng, s, units, f"unit {i} replaced by unit {j} of {other.label}")
    cut = rng.randrange(1, len(units) + 1)
    tail = theirs[rng.randrange(len(theirs)) :]
    return _dvc1_with_units(rng, s, units[:cut] + tail, f"units 0..{cut - 1} then {len(tail)} of {other.label}")


# --- Annex-B / OBU mutations ------------------------------------------------------------------------------


def _es_length_field(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    if s.syntax == "av1":
        return _obu_size_field(rng, s)
    data = s.data
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\x00\x00\x01"]
    op = rng.choice(["remove start code", "add start code", "short start code", "long start code", "nal header"])
    if op == "remove start code" and len(starts) > 1:
        at = rng.choice(starts[1:])
        begin = at - 1 if data[at - 1] == 0 else at
        return data[:begin] + data[at + 3 :], f"start code at byte {begin} removed"
    if op == "add start code":
        at = rng.randrange(1, len(data))
        code = rng.choice([b"\x00\x00\x01", b"\x00\x00\x00\x01"])
        return data[:at] + code + data[at:], f"start code inserted at byte {at}"
    if op == "short start code":
        four = [i - 1 for i in starts if i > 0 and data[i - 1] == 0]
        if four:
            at = rng.choice(four)
            return data[:at] + data[at + 1 :], f"4-byte start code at {at} cut to 3"
    if op == "long start code":
        at = rng.choice(starts)
        return data[:at] + b"\x00" + data[at:], f"start code at {at} given a leading zero"
    at = rng.choice(starts) + 3
    value = rng.choice([0x00, 0x80, data[at] ^ (1 << rng.randrange(8)), rng.randrange(256)])
    return data[:at] + bytes([value]) + data[at + 1 :], f"NAL header byte at {at} -> {value:#04x}"


def _obu_size_field(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    index = rng.randrange(len(s.units))
    unit = s.units[index]
    at = sum(map(len, s.units[:index]))
    header_len = 1 + ((unit[0] >> 2) & 1)
    if not unit[0] & 0x02 or rng.random() < 0.15:
        new = bytes([unit[0] ^ 0x02]) + unit[1:]
        return _splice(s.data, at, at + len(unit), new), f"OBU {index} has_size_field flipped"
    size, end = _read_leb(unit, header_len)
    value = rng.choice([size + 1, size - 1, 0, size * 2, size + rng.randint(2, 300), 2**32 - 1, 2**56 - 1,
                        len(s.data)])  # fmt: skip
    value = max(value, 0)
    raw = encode_leb128(value)
    if rng.random() >= 0.85:  # an overlong encoding of the same value
        raw = raw[:-1] + bytes([raw[-1] | 0x80, 0])
    new = unit[:header_len] + raw + unit[end:]
    return _splice(s.data, at, at + len(unit), new), f"OBU {index} size {size}->{value}"


def _read_leb(data: bytes, at: int) -> tuple[int, int]:
    read = read_leb128(data, at, AV1_LEB128_MAX_BYTES)
    if read is None:
        raise ValueError("bad leb128 in a sample stream")
    return read


def _es_join(units: list[bytes]) -> bytes:
    return b"".join(units)


def _es_dimension_field(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    """Size fields of one or every parameter set rewritten: one field to an edge value, or (a third of the time)
    both to a large picture, the "huge declared size in a tiny file"."""
    if not s.param_sets:
        raise NotApplicable("no parameter set parsed")
    targets = s.param_sets if rng.random() < 0.5 else [rng.choice(s.param_sets)]
    fields = targets[0][1].fields
    sizes = list(SIZE_FIELDS[targets[0][1].kind])
    if rng.random() < 1 / 3:
        big = rng.choice([511, 1023, 4095, 4096, 8191, 8192, 16383, 65535])
        edits = [(n, big, 16 if s.syntax == "av1" else None) for n in sizes]  # AV1: 16-bit sizes
        if s.syntax == "av1":
            edits = [e for n in sizes for e in ((n.replace("max_", "").replace("_minus_1", "_bits_minus_1"), 15, None),
                                                (n, big, 16))]  # fmt: skip
    else:
        others = [n for n in fields if n not in sizes]  # AV1's bit counts, the H.264/HEVC cropping windows
        name = rng.choice(others if others and rng.random() < 0.25 else sizes)
        old = fields[name]
        if old.coding == "ue":
            value = rng.choice([0, 1, 2, old.value - 1, old.value + 1, old.value + 8, old.value * 2, 255, 1023,
                                4095, 8191, 65535, 2**20, 2**31, 2**32 - 2])  # fmt: skip
            edits = [(name, max(value, 0), None)]
        else:
            width = max(1, old.length + rng.choice([0, 0, 0, 1, -1, 4]) if "bits" not in name else old.length)
            value = rng.choice([0, 1, old.value - 1, old.value + 1, old.value * 2, (1 << width) - 1,
                                rng.getrandbits(width)])  # fmt: skip
            edits = [(name, max(value, 0), width)]
    units = list(s.units)
    for i, ps in targets:
        for name, value, length in edits:
            if ps is None or name not in ps.fields:  # the previous edit left a set that reads otherwise
                break
            units[i] = rewrite_field(units[i], ps, name, value, length)
            ps = parse_param_set(units[i], s.syntax)
    which = "every" if len(targets) > 1 else f"unit {targets[0][0]}"
    shown = ", ".join(f"{name}={value}" for name, value, _ in edits)
    return _es_join(units), f"{shown} in {which} parameter set"


def _es_header_field(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    """Bits flipped inside parameter sets (VPS/SPS/PPS, sequence header) or any unit's header byte."""
    syntax = SYNTAXES[s.syntax]
    non_picture = [i for i, u in enumerate(s.units) if not syntax.is_picture(u)]
    units = list(s.units)
    i = rng.choice(non_picture)
    unit = bytearray(units[i])
    body = 0 if s.syntax == "av1" else unit.find(b"\x00\x00\x01") + 3
    flips = rng.randint(1, 3)
    for _ in range(flips):
        at = rng.randrange(body, len(unit))
        unit[at] ^= 1 << rng.randrange(8)
    units[i] = bytes(unit)
    return _es_join(units), f"{flips} bits flipped in unit {i} (non-picture)"


def _es_frame_reorder(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    groups = [[s.units[i] for i in g] for g in s.access_units]
    order, detail = _reorder(rng, len(groups))
    return b"".join(b"".join(groups[i]) for i in order), f"access units: {detail}"


def _es_payload(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    units = list(s.units)
    i = rng.choice(s.picture_units)
    unit = bytearray(units[i])
    body = 3 if s.syntax == "av1" else unit.find(b"\x00\x00\x01") + 3 + (2 if s.syntax == "hevc" else 1)
    if body >= len(unit):
        raise NotApplicable("picture unit without payload")
    op = rng.choice(["flip", "run", "random tail"])
    if op == "flip":
        for _ in range(rng.randint(1, 8)):
            unit[rng.randrange(body, len(unit))] ^= 1 << rng.randrange(8)
    elif op == "run":
        at = rng.randrange(body, len(unit))
        n = min(rng.randint(1, 16), len(unit) - at)
        unit[at : at + n] = rng.randbytes(n)
    else:
        at = rng.randrange(body, len(unit))
        unit[at:] = rng.randbytes(len(unit) - at)
    units[i] = bytes(unit)
    return _es_join(units), f"picture unit {i}: {op}"


def _es_splice(rng: random.Random, s: StreamSample, others: list[StreamSample]) -> tuple[bytes, str]:
    candidates = [o for o in others if o.data != s.data]
    if not candidates:
        raise NotApplicable("no other stream to splice from")
    other = rng.choice(candidates)
    mine = [b"".join(s.units[i] for i in g) for g in s.access_units]
    theirs = [b"".join(other.units[i] for i in g) for g in other.access_units]
    cut = rng.randrange(1, len(mine) + 1)
    start = rng.randrange(len(theirs))
    if rng.random() < 0.5:
        return b"".join(mine[:cut] + theirs[start:]), f"access units 0..{cut - 1} then from {start} of {other.label}"
    at = rng.randrange(len(s.data))
    other_at = rng.randrange(len(other.data))
    return s.data[:at] + other.data[other_at:], f"bytes 0..{at} then {other.label} from byte {other_at}"


# --- the mutations every syntax shares --------------------------------------------------------------------


def _truncate(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    data = s.data
    if s.syntax == "dvc1":
        bounds = [u.start for u in s.dvc1_units] + [s.dvc1_fields["header_crc"][0] + 2, len(data) - 2]
    elif s.syntax == "opaque":
        bounds = []
    else:
        bounds = [sum(map(len, s.units[: g[0]])) for g in s.access_units[1:]]
        bounds += [sum(map(len, s.units[:i])) + len(s.units[i]) // 2 for i, _ in s.param_sets]
    r = rng.random()
    if r < 0.4 and bounds:
        cut = rng.choice(bounds)
    elif r < 0.55:
        cut = len(data) - rng.randint(1, min(8, len(data)))
    else:
        cut = rng.randrange(len(data))
    return data[:cut], f"cut at byte {cut} of {len(data)}"


def _bit_flip(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    out = bytearray(s.data)
    n = rng.choice([1, 1, 1, 2, 3, 4, 8, 16])
    limit = s.dvc1_fields["header_crc"][1] if s.syntax == "dvc1" and rng.random() < 1 / 3 else len(out)
    for _ in range(n):
        out[rng.randrange(limit)] ^= 1 << rng.randrange(8)
    return bytes(out), f"{n} bit(s)" + (" in the header" if limit < len(out) else "")


def _byte_run(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    out = bytearray(s.data)
    start = rng.randrange(len(out))
    n = min(rng.choice([1, 2, 4, 8, 16, 64, 256]), len(out) - start)
    fill = rng.choice(["random", "zeros", "0xff", "repeat"])
    run = {"random": rng.randbytes(n), "zeros": bytes(n), "0xff": b"\xff" * n,
           "repeat": bytes([rng.randrange(256)]) * n}[fill]  # fmt: skip
    out[start : start + n] = run
    return bytes(out), f"{n} bytes at {start} set to {fill}"


def _insert_delete(rng: random.Random, s: StreamSample) -> tuple[bytes, str]:
    data = s.data
    at = rng.randrange(len(data) + 1)
    n = rng.choice([1, 2, 3, 4, 7, 16, 100])
    if rng.random() < 0.5:
        return data[:at] + rng.randbytes(n) + data[at:], f"{n} bytes inserted at {at}"
    return data[:at] + data[at + n :], f"{min(n, len(data) - at)} bytes removed at {at}"


_TARGETED = {
    "dvc1": {
        "length_field": _dvc1_length_field, "dimension_field": _dvc1_dimension_field,
        "header_field": _dvc1_header_field, "frame_reorder": _dvc1_frame_reorder, "payload": _dvc1_payload,
    },
    "es": {
        "length_field": _es_length_field, "dimension_field": _es_dimension_field, "header_field": _es_header_field,
        "frame_reorder": _es_frame_reorder, "payload": _es_payload,
    },
}  # fmt: skip
_GENERIC = {"truncate": _truncate, "bit_flip": _bit_flip, "byte_run": _byte_run, "insert_delete": _insert_delete}


def mutate(
    rng: random.Random, sample: StreamSample, kind: str, others: list[StreamSample], max_steps: int = 1000
) -> Mutation:
    """One damaged copy of `sample` of the given kind (see the module docstring), different from the original.

    `others`: the other samples of the same codec, for splicing. max_steps: the largest diffusion step count a
    DVC1 header edit writes (the stream's decode time grows with it). Raises NotApplicable when the kind has
    nothing to act on in this sample, or when ten draws all gave back the original bytes.
    """
    family = "dvc1" if sample.syntax == "dvc1" else "es"
    if sample.syntax == "opaque" and kind not in _GENERIC:
        raise NotApplicable(f"{kind}: {sample.codec}'s streams have no structure the fuzzer reads")
    for _ in range(10):
        if kind == "splice":
            data, detail = (_dvc1_splice if family == "dvc1" else _es_splice)(rng, sample, others)
        elif kind in _GENERIC:
            data, detail = _GENERIC[kind](rng, sample)
        elif kind in ("header_field", "dimension_field") and family == "dvc1":
            data, detail = _TARGETED[family][kind](rng, sample, max_steps)
        else:
            data, detail = _TARGETED[family][kind](rng, sample)
        if data != sample.data:
            return Mutation(kind, detail, data)
    raise NotApplicable(f"{kind}: ten draws left {sample.label} unchanged")
