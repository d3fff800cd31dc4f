"""Unsigned LEB128, the variable-length integers of DVC1 headers and of AV1's OBU sizes: one writer, one reader.

7 bits per byte, least significant group first, the high bit set on every byte but the last. Callers add their
format's rules on top: DVC1 (`codec.bitstream`) allows 10 bytes and only canonical encodings, AV1 (`codec.baselines`)
8 bytes, and the fuzzer rewrites both.
"""

from __future__ import annotations


def encode_leb128(value: int) -> bytes:
    """The shortest (canonical) LEB128 encoding of `value` >= 0."""
    if value < 0:
        raise ValueError(f"LEB128 codes values >= 0, got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_leb128(data: bytes | bytearray | memoryview, at: int, max_bytes: int) -> tuple[int, int] | None:
    """(value, offset after it) of the LEB128 number at data[at], or None when the data ends inside it or it runs
    past `max_bytes` bytes. Overlong encodings are read as what they say (`is_canonical` tells them apart)."""
    value = 0
    for i in range(max_bytes):
        if at + i >= len(data):
            return None
        byte = data[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, at + i + 1
    return None


def is_canonical(data: bytes | bytearray | memoryview, at: int, end: int) -> bool:
    """Whether the LEB128 number in data[at:end] is its value's shortest encoding (no trailing zero group)."""
    return end - at == 1 or data[end - 1] != 0
