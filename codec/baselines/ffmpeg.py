"""Classical anchors: x265 (HEVC), x264 (H.264) and AV1 (SVT-AV1), encoded and decoded in memory through PyAV.

One wrapper, `FFmpegCodec`, drives a libavcodec encoder and decoder pair with no container; the registered
subclasses `X265`, `X264` and `AV1` declare only what differs: library names, their options and how those map
onto the library's own options (DESIGN.md section 5).

Pipeline of `encode`:  RGB frames [T, H, W, 3] uint8
    -> replicate-pad to a size the encoder accepts (`codec.video.pad_to_multiple`)
    -> YUV (`codec.video.rgb_to_av_frame`, the one place for colour conversion)
    -> encoder packets, one per frame (low delay: no B-frames, so decode order = display order)
    -> packet edits: drop encoder settings text (x264's SEI), insert the size hint when the frames were padded
    -> bitstream = packets concatenated: the elementary stream (Annex-B NAL units or AV1 low-overhead OBUs)
    -> reconstruction = `decode(bitstream)`, so the encoder side sees exactly what a decoder will.

Counting bits fairly: the rate is the elementary stream, no mp4 around it. x265 runs with `info=0`; x264 has
no such switch, so its settings SEI (about 560 bytes, the text "x264 - core ...") is removed from the first
packet. Neither carries anything a decoder needs.

Sizes: 4:2:0 HEVC/H.264 cannot code an odd width or height, and x265 needs at least 16x16 (SVT-AV1 4x4). Such a
clip is padded, and the true size travels in-band in one small "size hint" unit placed before the first picture
(`SIZE_HINT_UUID`, then ASCII "WxH"): a user-data-unregistered SEI (payload type 5) in HEVC/H.264, a metadata OBU
of the unregistered-private type 6 in AV1. Decoders that do not know it ignore it (ffmpeg plays the padded
frames); `decode` crops to it. About 25-30 bytes, counted in the rate, and only present when padding was needed:
even sizes (4:2:0), any size in 4:4:4 (the SPS conformance window carries it) and odd sizes in AV1 need none.

Damage: `decode` raises `BitstreamError` when the structure is wrong (no start code; in Annex-B a run of zero
bytes, which x265/x264 never write and a cut, zero-filled file has; an OBU running past the end), the decoder
rejects the data, no frame comes out, or fewer frames come out than the stream starts pictures (slices
with first_slice_segment_in_pic_flag / first_mb_in_slice = 0, AV1 temporal units). Elementary streams carry no
frame count, checksum or frame rate, so a stream cut at a frame boundary is a valid shorter stream, and damage
inside a picture's coded data may decode with concealment. The frame rate comes from the VUI that x265 and x264
write; SVT-AV1 writes no timing info, so AV1 streams decode at `codec.video.DEFAULT_FPS`.

Without PyAV installed the anchors are registered but unavailable (`unavailable_reason` says why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal

import numpy as np

try:
    import av
    from av.video.frame import PictureType
except ImportError:  # every anchor says it is unavailable (FFmpegCodec.unavailable_reason)
    av = PictureType = None

from codec.bitio import encode_leb128, read_leb128
from codec.errors import BitstreamError, CodecError, VideoError
from codec.registry import CodecBase, Encoded, options_dict, parse_options, register_codec
from codec.video import DEFAULT_FPS, DEFAULT_LIMITS, Video, av_frame_to_rgb, crop, pad_to_multiple, rgb_to_av_frame

SIZE_HINT_UUID = bytes.fromhex("f2ca54c561254c768c60258cf5c3258d")  # ours; no zero byte, so no emulation bytes
X264_INFO_UUID = bytes.fromhex("dc45e9bde6d948b7962cd820d923eeef")  # x264's settings SEI ("x264 - core ...")
PIX_FMTS = {"420": "yuv420p", "444": "yuv444p"}
_LIBAV_ERRORS = (ValueError, RuntimeError, OSError) + ((av.FFmpegError,) if av else ())


# --- elementary-stream syntax: units, pictures, user data -------------------------------------------------


class StreamSyntax(ABC):
    """How an elementary stream splits into units (NAL units or OBUs), which carry pictures, and user data."""

    name: str

    @abstractmethod
    def units(self, data: bytes) -> Iterator[bytes]:
        """Split `data` into whole units (headers included); joining them gives back `data` exactly."""

    @abstractmethod
    def is_picture(self, unit: bytes) -> bool:
        """Whether `unit` carries coded picture data (a slice, a frame or a tile group)."""

    @abstractmethod
    def starts_picture(self, unit: bytes) -> bool:
        """Whether `unit` begins a new output picture (counting them tells how many frames the stream holds)."""

    @abstractmethod
    def user_data_unit(self, uuid: bytes, payload: bytes) -> bytes:
        """A complete unit that decoders ignore, carrying a 16-byte `uuid` and a `payload`."""

    @abstractmethod
    def read_user_data(self, unit: bytes) -> tuple[bytes, bytes] | None:
        """(uuid, payload) when `unit` is a user-data unit as `user_data_unit` writes it, else None."""

    @abstractmethod
    def recognizes(self, data: bytes) -> bool:
        """Whether `data` opens the way an encoder's stream of this kind opens (never raises)."""

    @abstractmethod
    def validate(self, data: bytes) -> None:
        """Raise BitstreamError when `data` is structurally not a stream of this kind as its encoder writes it."""


_START_CODE = re.compile(rb"\x00?\x00\x00\x01")
_ZERO_RUN = re.compile(rb"\x00{4,}")  # longer than any start code; emulation prevention keeps NAL units shorter
_EMULATION = re.compile(rb"\x00\x00(?=[\x00-\x03])")


@dataclass(frozen=True)
class AnnexB(StreamSyntax):
    """Annex-B byte stream (H.264, HEVC): NAL units, each after a 00 00 01 or 00 00 00 01 start code.

    nal_type = (first header byte >> type_shift) & type_mask; vcl_types: the types that carry slices;
    sei_header: the NAL header bytes of a (prefix) SEI unit, as long as every NAL header. A slice begins a picture
    when the first bit after its header is 1 (HEVC first_slice_segment_in_pic_flag; H.264 first_mb_in_slice = 0).
    opening_headers: the possible first NAL headers of a stream (parameter sets, access unit delimiter, SEI).
    """

    name: str
    type_shift: int
    type_mask: int
    vcl_types: range
    sei_header: bytes
    opening_headers: frozenset[bytes]

    def units(self, data: bytes) -> Iterator[bytes]:
        first = _START_CODE.match(data)
        begin = 0
        for m in _START_CODE.finditer(data, first.end() if first else 1):
            yield data[begin : m.start()]
            begin = m.start()
        if data:
            yield data[begin:]

    def nal_type(self, unit: bytes) -> int | None:
        m = _START_CODE.match(unit)
        if not m or len(unit) <= m.end():
            return None
        return (unit[m.end()] >> self.type_shift) & self.type_mask

    def is_picture(self, unit: bytes) -> bool:
        return self.nal_type(unit) in self.vcl_types

    def starts_picture(self, unit: bytes) -> bool:
        if not self.is_picture(unit):
            return False
        first_payload_byte = _START_CODE.match(unit).end() + len(self.sei_header)
        return first_payload_byte < len(unit) and bool(unit[first_payload_byte] & 0x80)

    def user_data_unit(self, uuid: bytes, payload: bytes) -> bytes:
        sei = _sei_number(5) + _sei_number(len(uuid) + len(payload)) + uuid + payload + b"\x80"
        return b"\x00\x00\x00\x01" + self.sei_header + _EMULATION.sub(b"\x00\x00\x03", sei)

    def read_user_data(self, unit: bytes) -> tuple[bytes, bytes] | None:
        if self.nal_type(unit) != self.nal_type(b"\x00\x00\x01" + self.sei_header):
            return None
        header_end = _START_CODE.match(unit).end() + len(self.sei_header)
        sei = unit[header_end:].replace(b"\x00\x00\x03", b"\x00\x00")
        payload_type, at = _read_sei_number(sei, 0)
        size, at = _read_sei_number(sei, at)
        if payload_type != 5 or size < 16 or at + size > len(sei):
            return None
        return sei[at : at + 16], sei[at + 16 : at + size]

    def recognizes(self, data: bytes) -> bool:
        m = _START_CODE.match(data)
        return bool(m) and data[m.end() : m.end() + len(self.sei_header)] in self.opening_headers

    def validate(self, data: bytes) -> None:
        if not data:
            raise BitstreamError(f"the {self.name} bitstream is empty")
        if not _START_CODE.match(data):
            raise BitstreamError(f"not an {self.name} Annex-B stream: it does not begin with a 00 00 01 start code")
        run = _ZERO_RUN.search(data)
        if run:  # legal as leading/trailing zero bytes, but x265/x264 write none: the mark of a zero-filled file
            raise BitstreamError(
                f"damaged {self.name} stream: {run.end() - run.start()} zero bytes in a row at byte {run.start()}"
            )


def _sei_number(value: int) -> bytes:
    """An SEI payload type or size: 0xFF for every full 255, then the remainder."""
    return b"\xff" * (value // 255) + bytes([value % 255])


def _read_sei_number(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset) of the SEI number at `at`; (-1, len) when the data ends first."""
    value = 0
    while at < len(data) and data[at] == 0xFF:
        value, at = value + 255, at + 1
    if at >= len(data):
        return -1, len(data)
    return value + data[at], at + 1


class OBUStream(StreamSyntax):
    """AV1 low-overhead bitstream format (AV1 spec section 5): OBUs, each with a header and a leb128 size."""

    name = "AV1"
    TEMPORAL_DELIMITER, METADATA = 2, 5
    PICTURE_TYPES = (3, 4, 6)  # frame header, tile group, frame
    USER_PRIVATE = 6  # first metadata_type of the "unregistered user private" range 6..31

    def _spans(self, data: bytes) -> Iterator[tuple[int, int, int]]:
        """(start, end, obu_type) of each OBU; BitstreamError when one is malformed or runs past the end."""
        at = 0
        while at < len(data):
            header = data[at]
            if header & 0x81:
                raise BitstreamError(f"damaged AV1 stream: bad OBU header byte {header:#04x} at byte {at}")
            body = at + 1 + ((header >> 2) & 1)
            if header & 0x02:
                size, body = _read_leb128(data, body)
                end = body + size
            else:
                end = len(data)
            if end > len(data):
                raise BitstreamError(
                    f"truncated or damaged AV1 stream: the OBU at byte {at} needs {end - at} bytes, "
                    f"{len(data) - at} remain"
                )
            yield at, end, (header >> 3) & 15
            at = end

    def units(self, data: bytes) -> Iterator[bytes]:
        for start, end, _ in self._spans(data):
            yield data[start:end]

    def is_picture(self, unit: bytes) -> bool:
        return (unit[0] >> 3) & 15 in self.PICTURE_TYPES

    def starts_picture(self, unit: bytes) -> bool:
        """A temporal delimiter: each temporal unit shows one frame (no hidden frames in low delay)."""
        return (unit[0] >> 3) & 15 == self.TEMPORAL_DELIMITER

    def user_data_unit(self, uuid: bytes, payload: bytes) -> bytes:
        body = encode_leb128(self.USER_PRIVATE) + uuid + payload + b"\x80"  # metadata_type, data, trailing bits
        return bytes([self.METADATA << 3 | 0x02]) + encode_leb128(len(body)) + body

    def read_user_data(self, unit: bytes) -> tuple[bytes, bytes] | None:
        if (unit[0] >> 3) & 15 != self.METADATA or not unit[0] & 0x02:
            return None
        _, at = _read_leb128(unit, 1 + ((unit[0] >> 2) & 1))
        metadata_type, at = _read_leb128(unit, at)
        if not 6 <= metadata_type <= 31 or len(unit) - at < 17:
            return None
        return unit[at : at + 16], unit[at + 16 : -1]

    def recognizes(self, data: bytes) -> bool:
        """A temporal delimiter (0x12 0x00), then a sequence header OBU."""
        return data[:2] == b"\x12\x00" and len(data) > 2 and data[2] & 0xF9 == 0x08

    def validate(self, data: bytes) -> None:
        if not data:
            raise BitstreamError("the AV1 bitstream is empty")
        if next(self._spans(data))[2] != self.TEMPORAL_DELIMITER:
            raise BitstreamError("not an AV1 low-overhead stream: it does not begin with a temporal delimiter OBU")


AV1_LEB128_MAX_BYTES = 8  # AV1 spec 4.10.5


def _read_leb128(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset) of the leb128 number at `at` (at most 8 bytes, as AV1 allows)."""
    read = read_leb128(data, at, AV1_LEB128_MAX_BYTES)
    if read is None:
        raise BitstreamError(f"truncated or damaged AV1 stream: bad OBU size field at byte {at}")
    return read


HEVC_ANNEX_B = AnnexB(
    "HEVC",
    type_shift=1,
    type_mask=0x3F,
    vcl_types=range(0, 32),
    sei_header=b"\x4e\x01",
    opening_headers=frozenset(bytes([t << 1, 1]) for t in (32, 33, 34, 35, 39)),  # VPS, SPS, PPS, AUD, SEI; layer 0
)
H264_ANNEX_B = AnnexB(
    "H.264",
    type_shift=0,
    type_mask=0x1F,
    vcl_types=range(1, 6),
    sei_header=b"\x06",
    opening_headers=frozenset(bytes([ref << 5 | t]) for ref in range(4) for t in (6, 7, 8, 9)),  # SEI, SPS, PPS, AUD
)
AV1_OBUS = OBUStream()


# --- options ----------------------------------------------------------------------------------------------

X26xPreset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"
]
X265Tune = Literal["zerolatency", "psnr", "ssim", "grain", "fastdecode", "animation"]
X264Tune = Literal["zerolatency", "film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode"]


@dataclass(frozen=True)
class AnchorOptions:
    """Options every anchor has.

    intra_period: frames from one intra (key) frame to the next; -1 = only the first frame is intra.
    rc: "qp" = constant QP; "crf" = constant rate factor, the QP argument of `encode` giving the CRF value.
    chroma: "420" codes yuv420p, "444" yuv444p.
    """

    intra_period: int = 32
    rc: Literal["qp", "crf"] = "qp"
    chroma: Literal["420", "444"] = "420"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if isinstance(self.intra_period, bool) or not isinstance(self.intra_period, int):
            raise ValueError(f"intra_period must be an integer, got {self.intra_period!r}")
        if self.intra_period < 1 and self.intra_period != -1:
            raise ValueError(f"intra_period must be >= 1, or -1 for an intra first frame only; got {self.intra_period}")


def _colon_list(params: dict[str, Any]) -> str:
    """{'keyint': 32, 'bframes': 0} -> 'keyint=32:bframes=0' (the form of x265-params, x264-params, svtav1-params)."""
    return ":".join(f"{key}={value}" for key, value in params.items())


# --- the wrapper ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _scheduling_kept():
    """Restore the process's scheduling policy after an encoder ran: SVT-AV1, run as root, puts the calling thread
    at real-time priority (SCHED_FIFO 99) and leaves it there, which then starves every other process on the
    machine (measured: a training job at 1/15 of its speed, fuzzing children timing out)."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):  # not on Linux
        yield
        return
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
            os.sched_setscheduler(0, policy, param)


class FFmpegCodec(CodecBase):
    """A libavcodec encoder/decoder pair run in memory on elementary streams (see the module docstring).

    Subclasses set the class attributes below, a nested frozen `Options` (an `AnchorOptions`) and
    `encoder_options`, the mapping of those options and a QP onto the library's own options.
    """

    kind = "anchor"
    encoder: ClassVar[str]  # libavcodec encoder, e.g. "libx265"
    decoder: ClassVar[str]  # libavcodec decoder, e.g. "hevc"
    syntax: ClassVar[StreamSyntax]
    min_side: ClassVar[int] = 2  # smallest width and height the encoder accepts
    odd_420: ClassVar[bool] = False  # whether the stream can code an odd width or height in 4:2:0
    dropped_user_data: ClassVar[frozenset[bytes]] = frozenset()  # UUIDs of encoder settings text to remove
    decoder_options: ClassVar[dict[str, str]] = {
        "err_detect": "explode",  # fail on errors the decoder detects
        # refuse a picture larger than the frame limit before allocating it: a 100-byte HEVC stream whose SPS declares
        # 8192x8192 otherwise made libavcodec allocate over 1 GB before failing
        "max_pixels": str(DEFAULT_LIMITS.max_width * DEFAULT_LIMITS.max_height),
        # apply a left/top cropping window exactly: by default libavcodec drops an unaligned one and returns frames
        # wider than the size the SPS declares (found by fuzzing; the encoders here only crop right and bottom)
        "flags": "+unaligned",
    }
    environment: ClassVar[dict[str, str]] = {}  # set (if unset) before encoding, e.g. to quiet a library's log

    @classmethod
    def unavailable_reason(cls, options: Any = None) -> str | None:
        """None when this PyAV build has both the encoder and the decoder, else which one is missing."""
        if av is None:
            return "PyAV is not installed here (pip install av)"
        for name, mode, role in ((cls.encoder, "w", "encoder"), (cls.decoder, "r", "decoder")):
            try:
                av.codec.Codec(name, mode)
            except _LIBAV_ERRORS:
                return f"this PyAV build (av {av.__version__}) has no {role} {name!r}"
        return None

    @classmethod
    def recognizes(cls, bitstream: bytes) -> bool:
        """Whether `bitstream` opens like a stream of this codec (used to pick the decoder of a file)."""
        return cls.syntax.recognizes(bytes(bitstream[:16]))

    def identity(self) -> str:
        """The libraries behind the output: PyAV's wheel pins libavcodec and the encoder libraries inside it."""
        return f"{self.encoder}/{self.decoder} av {av.__version__} libavcodec {_libavcodec_version()}"

    def encoder_options(self, options: Any, qp: int) -> dict[str, str]:
        """The libavcodec options (private options included) that run `options` at `qp`."""
        raise NotImplementedError

    # -- encode -------------------------------------------------------------------------------------------

    def encode(self, video: Video, qp: int, **overrides: Any) -> Encoded:
        """Encode `video` at `qp` (a CRF value when rc="crf"); `overrides` replace options for this call only.

        Returns the elementary stream, the decoded reconstruction (input size, input fps), per-frame bits and
        types in display order, and timings in seconds: "encode" (padding, RGB->YUV, encoder, packet edits) and
        "decode" (the whole `decode`), measured apart.
        """
        options = self._options_for_call(overrides)
        self.check_qp(qp)
        start = time.perf_counter()
        frames = self._pad(video.frames, options.chroma)
        padded = frames.shape[1:3] != video.frames.shape[1:3]
        codec_options = self.encoder_options(options, qp)
        packets = self._encode_packets(frames, video.fps, PIX_FMTS[options.chroma], codec_options)
        hint = self.syntax.user_data_unit(SIZE_HINT_UUID, f"{video.width}x{video.height}".encode()) if padded else None
        edited = [self._edit_packet(p, hint if i == 0 else None) for i, p in enumerate(packets)]
        bitstream = b"".join(edited)
        encode_s = time.perf_counter() - start

        start = time.perf_counter()
        rgb, types, _ = self._decode(bitstream)
        decode_s = time.perf_counter() - start
        if rgb.shape != video.frames.shape:
            raise CodecError(f"{self.name}: decoding its own stream gave {rgb.shape}, expected {video.frames.shape}")
        params = {
            "codec": self.name,
            **options_dict(options),
            "qp": qp,
            "encoder": self.encoder,
            "decoder": self.decoder,
            "encoder_options": codec_options,
            "pix_fmt": PIX_FMTS[options.chroma],
            "coded_size": [int(frames.shape[2]), int(frames.shape[1])],
            "fps": str(video.fps),
            "versions": {"av": av.__version__, "libavcodec": _libavcodec_version()},
        }
        hint_bytes = len(hint) if hint else 0
        stats = {  # bytes added (the size hint, counted in the rate) and removed (encoder settings text)
            "size_hint_bytes": hint_bytes,
            "removed_bytes": sum(map(len, packets)) + hint_bytes - len(bitstream),
        }
        return Encoded(
            bitstream=bitstream,
            reconstruction=Video(rgb, video.fps),
            frame_bits=[8 * len(p) for p in edited],
            frame_types=types,
            timings={"encode": encode_s, "decode": decode_s},
            params=params,
            stats=stats,
        )

    def _options_for_call(self, overrides: dict[str, Any]) -> Any:
        if not overrides:
            return self.options
        return parse_options(self.Options, {**options_dict(self.options), **overrides}, self.name)

    def _pad(self, frames: np.ndarray, chroma: str) -> np.ndarray:
        """Replicate-pad [T, H, W, 3] frames to a size the encoder takes: even in 4:2:0 unless the stream codes odd
        sizes, and at least `min_side` (then a multiple of it, the one padding helper being per multiple)."""
        height, width = frames.shape[1:3]
        multiple = 2 if chroma == "420" and not self.odd_420 else 1
        if min(height, width) < self.min_side:
            multiple = math.lcm(multiple, self.min_side)
        return pad_to_multiple(frames, multiple)[0]

    def _encode_packets(
        self, frames: np.ndarray, fps: Fraction, pix_fmt: str, codec_options: dict[str, str]
    ) -> list[bytes]:
        """[T, H, W, 3] uint8 RGB -> the encoder's packets (bytes), one per frame."""
        for key, value in self.environment.items():
            os.environ.setdefault(key, value)
        height, width = frames.shape[1:3]
        with _scheduling_kept():
            return self._encode_packets_unguarded(frames, fps, pix_fmt, codec_options, width, height)

    def _encode_packets_unguarded(
        self, frames: np.ndarray, fps: Fraction, pix_fmt: str, codec_options: dict[str, str], width: int, height: int
    ) -> list[bytes]:
        try:
            ctx = av.CodecContext.create(self.encoder, "w")
            ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
            ctx.time_base, ctx.framerate = 1 / Fraction(fps), Fraction(fps)
            ctx.options = dict(codec_options)
            ctx.open()
            packets = []
            for index, rgb in enumerate(frames):
                frame = rgb_to_av_frame(rgb, pix_fmt)
                frame.pts = index
                packets += [bytes(p) for p in ctx.encode(frame)]
            packets += [bytes(p) for p in ctx.encode(None)]
        except _LIBAV_ERRORS as e:
            where = f"{width}x{height} {pix_fmt} with {codec_options}"
            raise CodecError(f"{self.encoder} could not encode {where}: {_reason(e)}") from None
        if len(packets) != len(frames):
            raise CodecError(f"{self.encoder} returned {len(packets)} packets for {len(frames)} frames")
        return packets

    def _edit_packet(self, packet: bytes, hint: bytes | None) -> bytes:
        """Remove encoder settings text (`dropped_user_data`) and put `hint` before the first picture unit."""
        if not self.dropped_user_data and hint is None:
            return packet
        units = [u for u in self.syntax.units(packet) if not self._is_dropped(u)]
        if hint is not None:
            first_picture = next((i for i, u in enumerate(units) if self.syntax.is_picture(u)), len(units))
            units.insert(first_picture, hint)
        return b"".join(units)

    def _is_dropped(self, unit: bytes) -> bool:
        user_data = self.syntax.read_user_data(unit) if self.dropped_user_data else None
        return user_data is not None and user_data[0] in self.dropped_user_data

    # -- decode -------------------------------------------------------------------------------------------

    def decode(self, bitstream: bytes) -> Video:
        """Elementary stream -> Video (frames uint8 [T, H, W, 3] RGB at the coded or hinted size).

        fps: the stream's (VUI timing of x265/x264), else `DEFAULT_FPS`. Raises BitstreamError on a stream that is
        empty, not of this codec, damaged in a way the parser or decoder detects, or that holds no frame.
        """
        rgb, _, fps = self._decode(bitstream)
        return Video(rgb, fps or DEFAULT_FPS)

    def _decode(self, bitstream: bytes) -> tuple[np.ndarray, list[str], Fraction | None]:
        """-> (frames uint8 [T, H, W, 3] RGB, frame types "I"/"P"/"B", the stream's frame rate or None)."""
        if not isinstance(bitstream, (bytes, bytearray, memoryview)):
            raise BitstreamError(f"{self.name}: a bitstream must be bytes, got {type(bitstream).__name__}")
        bitstream = bytes(bitstream)
        try:
            pictures, size = self._scan(bitstream)
        except BitstreamError as e:
            raise BitstreamError(f"{self.name}: {e}") from None
        rgb: list[np.ndarray] = []
        types: list[str] = []
        try:
            ctx = av.CodecContext.create(self.decoder, "r")
            ctx.options = dict(self.decoder_options)
            ctx.thread_type = "AUTO"
            for packet in [*ctx.parse(bitstream), *ctx.parse(None), None]:
                for frame in ctx.decode(packet):
                    self._check_frame(frame, rgb)
                    rgb.append(av_frame_to_rgb(frame))
                    types.append(_frame_type(frame))
            fps = ctx.framerate
        except _LIBAV_ERRORS as e:
            what = f"{self.name}: the {self.syntax.name} stream"
            raise BitstreamError(f"{what} cannot be decoded ({_reason(e)})") from None
        if not rgb:
            raise BitstreamError(f"{self.name}: the {self.syntax.name} stream holds no decodable frame")
        if len(rgb) != pictures:
            raise BitstreamError(
                f"{self.name}: decoded {len(rgb)} frames from a {self.syntax.name} stream of {pictures} pictures: "
                "truncated or damaged"
            )
        frames = np.stack(rgb)
        if size is not None:
            coded_height, coded_width = frames.shape[1:3]
            if size[0] > coded_width or size[1] > coded_height:
                raise BitstreamError(
                    f"{self.name}: the size hint {size[0]}x{size[1]} exceeds the coded {coded_width}x{coded_height}"
                )
            frames = np.ascontiguousarray(crop(frames, (size[1], size[0])))
        return frames, types, Fraction(fps) if fps and 0 < float(fps) <= 1000 else None

    def _check_frame(self, frame: av.VideoFrame, previous: list[np.ndarray]) -> None:
        """Raise BitstreamError before converting a frame that is too large, too many, or of a new size."""
        try:
            DEFAULT_LIMITS.check_size(frame.width, frame.height)
            DEFAULT_LIMITS.check_count(len(previous) + 1, frame.width, frame.height)
        except VideoError as e:
            raise BitstreamError(f"{self.name}: {e}") from None
        if previous and previous[0].shape[:2] != (frame.height, frame.width):
            raise BitstreamError(f"{self.name}: the picture size changes mid-stream, to {frame.width}x{frame.height}")

    def _scan(self, bitstream: bytes) -> tuple[int, tuple[int, int] | None]:
        """Walk the units: (pictures the stream holds, the size hint (W, H) or None); BitstreamError if malformed."""
        self.syntax.validate(bitstream)
        pictures, size, seen_picture = 0, None, False
        for unit in self.syntax.units(bitstream):
            pictures += self.syntax.starts_picture(unit)
            seen_picture = seen_picture or self.syntax.is_picture(unit)
            if not seen_picture and size is None:
                size = self._size_hint(unit)
        return pictures, size

    def _size_hint(self, unit: bytes) -> tuple[int, int] | None:
        """(W, H) when `unit` is the size hint that `encode` writes, else None."""
        uuid, payload = self.syntax.read_user_data(unit) or (b"", b"")
        if uuid != SIZE_HINT_UUID:
            return None
        m = re.fullmatch(rb"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})", payload)
        if not m:
            raise BitstreamError(f"damaged size hint {payload[:20]!r}")
        return int(m[1]), int(m[2])


def _frame_type(frame: av.VideoFrame) -> str:
    """'I', 'P' or 'B' (another PictureType name, e.g. 'S', if a decoder reports one)."""
    return PictureType(frame.pict_type).name


def _libavcodec_version() -> str:
    return ".".join(map(str, av.library_versions["libavcodec"]))


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


# --- the registered anchors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class X26xOptions(AnchorOptions):
    """AnchorOptions plus the x264/x265 preset (encoding speed against efficiency); each codec adds its tunes."""

    preset: X26xPreset = "medium"


@register_codec("x265", "HEVC through libx265 (PyAV), low-delay P, constant QP or CRF")
class X265(FFmpegCodec):
    """libx265 -> Annex-B HEVC, decoded by libavcodec's hevc. Low delay: bframes=0, keyint=min-keyint, scenecut=0,
    closed GOP (IDR every intra_period), info=0 (no settings SEI)."""

    encoder, decoder, syntax = "libx265", "hevc", HEVC_ANNEX_B
    qp_range, suffix, bitstream_syntax = (0, 51), ".hevc", "hevc"
    min_side = 16

    @dataclass(frozen=True)
    class Options(X26xOptions):
        tune: X265Tune = "zerolatency"

    def encoder_options(self, options: Options, qp: int) -> dict[str, str]:
        period = options.intra_period
        keyint = {"keyint": -1} if period == -1 else {"keyint": period, "min-keyint": period}
        params = {**keyint, "scenecut": 0, "bframes": 0, "open-gop": 0, "info": 0, options.rc: qp, "log-level": "error"}
        return {"preset": options.preset, "tune": options.tune, "x265-params": _colon_list(params)}


@register_codec("x264", "H.264 through libx264 (PyAV), low-delay P, constant QP or CRF")
class X264(FFmpegCodec):
    """libx264 -> Annex-B H.264, decoded by libavcodec's h264. Low delay: bframes=0, keyint=min-keyint (x264 clips
    min-keyint to keyint/2+1; with scenecut=0 it has no effect), IDR every intra_period; one thread, so one slice
    per frame whatever the machine; settings SEI removed."""

    encoder, decoder, syntax = "libx264", "h264", H264_ANNEX_B
    qp_range, suffix, bitstream_syntax = (0, 51), ".h264", "h264"
    dropped_user_data = frozenset({X264_INFO_UUID})

    @dataclass(frozen=True)
    class Options(X26xOptions):
        tune: X264Tune = "zerolatency"

    def encoder_options(self, options: Options, qp: int) -> dict[str, str]:
        period = options.intra_period
        keyint = {"keyint": "infinite"} if period == -1 else {"keyint": period, "min-keyint": period}
        # threads=1: under tune=zerolatency x264 cuts every frame into one slice per thread, so the stream (and its
        # rate, by some 5-10%) would otherwise depend on the machine's core count
        params = {**keyint, "scenecut": 0, "bframes": 0, options.rc: qp, "threads": 1}
        return {"preset": options.preset, "tune": options.tune, "x264-params": _colon_list(params)}


@register_codec("av1", "AV1 through libsvtav1 (PyAV), low-delay, constant QP or CRF; decoded by libdav1d")
class AV1(FFmpegCodec):
    """libsvtav1 -> AV1 low-overhead OBUs, decoded by libdav1d. Low delay: pred-struct=1, keyint=intra_period,
    irefresh-type=2 (key frames), rc=0 with aq-mode=0 and qp (CQP) or crf. 4:2:0 only (SVT-AV1 has no 4:4:4)."""

    encoder, decoder, syntax = "libsvtav1", "libdav1d", AV1_OBUS
    qp_range, suffix, bitstream_syntax = (1, 63), ".obu", "av1"
    min_side = 4
    odd_420 = True
    environment = {"SVT_LOG": "1"}  # SVT-AV1 prints a banner on stderr per encoder unless told errors only

    @dataclass(frozen=True)
    class Options(AnchorOptions):
        chroma: Literal["420"] = "420"
        preset: int = 8  # 0 (slowest, best) .. 13 (fastest)

        def __post_init__(self) -> None:
            super().__post_init__()
            if isinstance(self.preset, bool) or not isinstance(self.preset, int) or not 0 <= self.preset <= 13:
                raise ValueError(f"preset must be an integer in 0..13, got {self.preset!r}")

    def encoder_options(self, options: Options, qp: int) -> dict[str, str]:
        rc = {"rc": 0, "aq-mode": 0, "qp": qp} if options.rc == "qp" else {"rc": 0, "crf": qp}
        params = {"pred-struct": 1, "keyint": options.intra_period, "irefresh-type": 2, **rc}
        return {"preset": str(options.preset), "svtav1-params": _colon_list(params)}
