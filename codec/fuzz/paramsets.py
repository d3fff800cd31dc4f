"""Where the picture size sits in the anchors' parameter sets, and what size they declare.

The fuzzer (codec/fuzz) edits these fields and checks a decoded video against them, so it needs both the bit
position of each size field and the size the whole set declares after cropping:

* H.264 sequence parameter set (ITU-T H.264 section 7.3.2.1.1): pic_width_in_mbs_minus1,
  pic_height_in_map_units_minus1 (ue(v)), then the frame cropping window (frame_crop_*_offset, when present).
* HEVC sequence parameter set (ITU-T H.265 section 7.3.2.2.1): pic_width_in_luma_samples,
  pic_height_in_luma_samples (ue(v)), then the conformance window (conf_win_*_offset, when present).
* AV1 sequence header OBU (AV1 spec section 5.5): frame_width_bits_minus_1, frame_height_bits_minus_1 (f(4)) and
  max_frame_width_minus_1, max_frame_height_minus_1 (f(n)). A frame may be smaller than this maximum.

Positions are bit offsets into the RBSP: the payload after the NAL or OBU header (and the OBU size field), with
H.264/HEVC emulation-prevention bytes removed. `rewrite_field` splices a new value in and rebuilds the unit, so an
edit that changes a field's length (Exp-Golomb) shifts what follows and keeps the trailing bits valid.
Parsers return None for syntax they do not cover (scaling lists in HEVC, AV1 operating-point timing); that is fine
for a fuzzer, which then simply has fewer targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from codec.baselines.ffmpeg import AV1_LEB128_MAX_BYTES
from codec.bitio import encode_leb128, read_leb128

__all__ = ["SIZE_FIELDS", "BitField", "ParamSet", "escape_rbsp", "parse_param_set", "rewrite_field", "unescape_rbsp"]

SIZE_FIELDS = {  # per kind of parameter set: the fields that code the picture width and height
    "h264_sps": ("pic_width_in_mbs_minus1", "pic_height_in_map_units_minus1"),
    "hevc_sps": ("pic_width_in_luma_samples", "pic_height_in_luma_samples"),
    "av1_seq": ("max_frame_width_minus_1", "max_frame_height_minus_1"),
}


@dataclass(frozen=True)
class BitField:
    """One syntax element: its name, bit offset in the RBSP, bit length, coding ("ue" or "u") and value."""

    name: str
    offset: int
    length: int
    coding: str
    value: int


@dataclass(frozen=True)
class ParamSet:
    """A parsed parameter set. kind: "h264_sps", "hevc_sps" or "av1_seq". header_len: bytes before the RBSP
    (start code, NAL header; OBU header and size). fields: the size fields by name. size: (width, height) the set
    declares, cropped (for AV1 the largest frame size). exact: whether decoded frames must have exactly `size`
    (H.264, HEVC) or at most it (AV1). `SIZE_FIELDS` says which fields are the picture width and height."""

    kind: str
    header_len: int
    fields: dict[str, BitField]
    size: tuple[int, int]
    exact: bool


# --- RBSP and bits ----------------------------------------------------------------------------------------


def unescape_rbsp(data: bytes) -> bytes:
    """Remove H.264/HEVC emulation-prevention bytes (the 03 of every 00 00 03)."""
    out = bytearray()
    zeros = 0
    for byte in data:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes: 00 00 followed by 00..03 becomes 00 00 03 xx (and a final 00 00)."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    if zeros >= 2:
        out.append(3)
    return bytes(out)


class _Bits:
    """MSB-first bit reader over bytes; raises _End past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        if self.pos + n > 8 * len(self.data):
            raise _End
        value = 0
        for _ in range(n):
            value = value << 1 | (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise _End
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)

    def uvlc(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros >= 32:
                raise _End
        return (1 << zeros) - 1 + self.u(zeros)

    def field(self, name: str, coding: str, n: int = 0) -> BitField:
        start = self.pos
        value = self.ue() if coding == "ue" else self.u(n)
        return BitField(name, start, self.pos - start, coding, value)


class _End(Exception):
    """The bits ran out (or an Exp-Golomb code is longer than 32 bits): not a set this module can read."""


def _to_bits(data: bytes) -> str:
    return "".join(f"{b:08b}" for b in data)


def _from_bits(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def _ue_bits(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


# --- parsers ----------------------------------------------------------------------------------------------


def _h264_sps(rbsp: bytes) -> tuple[dict[str, BitField], tuple[int, int]]:
    r = _Bits(rbsp)
    profile = r.u(8)
    r.u(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = r.ue()
        if chroma == 3:
            r.u(1)
        r.ue(), r.ue(), r.u(1)  # bit depths, qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1), r.se(), r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue(), r.u(1)  # max_num_ref_frames, gaps_in_frame_num_value_allowed_flag
    width = r.field("pic_width_in_mbs_minus1", "ue")
    height = r.field("pic_height_in_map_units_minus1", "ue")
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)
    r.u(1)  # direct_8x8_inference_flag
    crop = _window(r, "frame_crop")
    sub_w, sub_h = (2, 2) if chroma == 1 else (2, 1) if chroma == 2 else (1, 1)
    unit_x, unit_y = sub_w, sub_h * (2 - frame_mbs_only)
    left, right, top, bottom = (f.value for f in crop) if crop else (0, 0, 0, 0)
    w = (width.value + 1) * 16 - unit_x * (left + right)
    h = (height.value + 1) * 16 * (2 - frame_mbs_only) - unit_y * (top + bottom)
    return {f.name: f for f in (width, height, *crop)}, (w, h)


def _window(r: _Bits, prefix: str) -> list[BitField]:
    """A cropping window after its flag: the left, right, top and bottom offsets (ue(v)); [] when the flag is 0."""
    if not r.u(1):
        return []
    return [r.field(f"{prefix}_{side}_offset", "ue") for side in ("left", "right", "top", "bottom")]


def _hevc_sps(rbsp: bytes) -> tuple[dict[str, BitField], tuple[int, int]]:
    r = _Bits(rbsp)
    r.u(4)  # sps_video_parameter_set_id
    sub_layers = r.u(3)
    r.u(1)
    r.u(96)  # general profile_tier_level: 88 bits of profile, 8 of level
    present = [(r.u(1), r.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        r.u(2 * (8 - sub_layers))
    for profile, level in present:
        r.u(88 * profile + 8 * level)
    r.ue()  # sps_seq_parameter_set_id
    chroma = r.ue()
    if chroma == 3:
        r.u(1)
    width = r.field("pic_width_in_luma_samples", "ue")
    height = r.field("pic_height_in_luma_samples", "ue")
    crop = _window(r, "conf_win")
    sub_w, sub_h = (2, 2) if chroma == 1 else (2, 1) if chroma == 2 else (1, 1)
    left, right, top, bottom = (f.value for f in crop) if crop else (0, 0, 0, 0)
    w = width.value - sub_w * (left + right)
    h = height.value - sub_h * (top + bottom)
    return {f.name: f for f in (width, height, *crop)}, (w, h)


def _av1_sequence_header(rbsp: bytes) -> tuple[dict[str, BitField], tuple[int, int]]:
    r = _Bits(rbsp)
    r.u(3)  # seq_profile
    r.u(1)  # still_picture
    if r.u(1):  # reduced_still_picture_header
        r.u(5)
    else:
        decoder_model = False
        buffer_delay_bits = 0
        if r.u(1):  # timing_info_present_flag
            r.u(32), r.u(32)
            if r.u(1):
                r.uvlc()
            decoder_model = bool(r.u(1))
            if decoder_model:
                buffer_delay_bits = r.u(5) + 1
                r.u(32), r.u(5), r.u(5)
        display_delay = r.u(1)
        for _ in range(r.u(5) + 1):  # operating points
            r.u(12)
            if r.u(5) > 7:
                r.u(1)
            if decoder_model and r.u(1):
                r.u(2 * buffer_delay_bits + 1)
            if display_delay and r.u(1):
                r.u(4)
    wbits = r.field("frame_width_bits_minus_1", "u", 4)
    hbits = r.field("frame_height_bits_minus_1", "u", 4)
    width = r.field("max_frame_width_minus_1", "u", wbits.value + 1)
    height = r.field("max_frame_height_minus_1", "u", hbits.value + 1)
    return {f.name: f for f in (wbits, hbits, width, height)}, (width.value + 1, height.value + 1)


def _leb128(data: bytes, at: int) -> tuple[int, int] | None:
    return read_leb128(data, at, AV1_LEB128_MAX_BYTES)


def parse_param_set(unit: bytes, syntax: str) -> ParamSet | None:
    """The size fields of `unit` when it is a sequence parameter set / header of `syntax` ("h264", "hevc",
    "av1"), else None (also for a set damaged past reading). `unit` is a whole NAL unit with its start code, or a
    whole OBU."""
    try:
        if syntax == "av1":
            if not unit or (unit[0] >> 3) & 15 != 1 or unit[0] & 0x81 or not unit[0] & 0x02:
                return None
            at = 1 + ((unit[0] >> 2) & 1)
            size = _leb128(unit, at)
            if size is None:
                return None
            fields, declared = _av1_sequence_header(unit[size[1] : size[1] + size[0]])
            return ParamSet("av1_seq", size[1], fields, declared, exact=False)
        start = unit.find(b"\x00\x00\x01")
        if start < 0:
            return None
        header = start + 3
        if syntax == "h264" and len(unit) > header and unit[header] & 0x1F == 7:
            fields, declared = _h264_sps(unescape_rbsp(unit[header + 1 :]))
            return ParamSet("h264_sps", header + 1, fields, declared, exact=True)
        if syntax == "hevc" and len(unit) > header and (unit[header] >> 1) & 0x3F == 33:
            fields, declared = _hevc_sps(unescape_rbsp(unit[header + 2 :]))
            return ParamSet("hevc_sps", header + 2, fields, declared, exact=True)
    except _End:
        return None
    return None


def rewrite_field(unit: bytes, ps: ParamSet, name: str, value: int, length: int | None = None) -> bytes:
    """`unit` with the field `name` set to `value` (for "u" fields in `length` bits, default its own length).

    The RBSP is re-assembled: bits before the field, the new code, the bits after it up to the stop bit, a new
    stop bit and alignment, then emulation prevention (H.264/HEVC) or a new OBU size (AV1).
    """
    f = ps.fields[name]
    av1 = ps.kind == "av1_seq"
    if av1:
        header_end = 1 + ((unit[0] >> 2) & 1)  # OBU header and its extension byte
        size = _leb128(unit, header_end)
        assert size is not None
        rbsp = unit[size[1] : size[1] + size[0]]
    else:
        rbsp = unescape_rbsp(unit[ps.header_len :])
    bits = _to_bits(rbsp).rstrip("0")[:-1]  # drop the trailing one bit and the alignment zeros
    n = f.length if length is None else length
    code = _ue_bits(value) if f.coding == "ue" else format(value & ((1 << n) - 1), f"0{n}b")
    new = _from_bits(bits[: f.offset] + code + bits[f.offset + f.length :] + "1")
    if av1:
        return unit[:header_end] + encode_leb128(len(new)) + new
    return unit[: ps.header_len] + escape_rbsp(new)
