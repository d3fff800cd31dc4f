"""A codec in one file, to show that the registry is the only place a codec is described: `zq` quantizes every
sample by 2 ** (QP // 8) and deflates each frame. Real bytes, a real decoder, a QP scale; registered when this module
is imported (tests name it in $DIFFVC_STUDIO_CODECS)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from codec.errors import BitstreamError
from codec.registry import CodecBase, Encoded, register_codec
from codec.video import Video

MAGIC = b"ZQ01"
HEADER = struct.Struct("<4sHHHB")  # magic, frames, height, width, QP
LENGTH = struct.Struct("<I")


@register_codec("zq", "test codec: per-sample quantization and deflate")
class ZQ(CodecBase):
    qp_range, kind, suffix, bitstream_syntax = (0, 63), "anchor", ".zq", "opaque"

    @dataclass(frozen=True)
    class Options:
        intra_period: int = 32  # accepted as the other anchors' option; every frame is coded alone

    @classmethod
    def recognizes(cls, bitstream: bytes) -> bool:
        return bytes(bitstream[:4]) == MAGIC

    def encode(self, video: Video, qp: int) -> Encoded:
        step = 1 << (self.check_qp(qp) // 8)
        t, h, w, _ = video.frames.shape
        chunks = [zlib.compress((frame // step).astype(np.uint8).tobytes(), 9) for frame in video.frames]
        bitstream = HEADER.pack(MAGIC, t, h, w, qp) + b"".join(LENGTH.pack(len(c)) + c for c in chunks)
        decoded = self.decode(bitstream)
        return Encoded(bitstream, decoded, [8 * (LENGTH.size + len(c)) for c in chunks], ["I"] * t)

    def decode(self, bitstream: bytes) -> Video:
        if len(bitstream) < HEADER.size or not self.recognizes(bitstream):
            raise BitstreamError("not a zq stream")
        _, t, h, w, qp = HEADER.unpack_from(bitstream)
        if not (t and h and w) or qp > 63:
            raise BitstreamError(f"zq header damaged: {t} frames of {w}x{h}, QP {qp}")
        step, offset, frames = 1 << (qp // 8), HEADER.size, []
        for _ in range(t):
            if offset + LENGTH.size > len(bitstream):
                raise BitstreamError("zq stream cut short")
            (n,) = LENGTH.unpack_from(bitstream, offset)
            try:
                raw = zlib.decompressobj().decompress(
                    bitstream[offset + LENGTH.size : offset + LENGTH.size + n], h * w * 3 + 1
                )
            except zlib.error as e:
                raise BitstreamError(f"zq frame damaged: {e}") from None
            if len(raw) != h * w * 3:
                raise BitstreamError("zq frame has the wrong size")
            levels = np.frombuffer(raw, np.uint8).reshape(h, w, 3).astype(np.int32)
            frames.append(np.clip(levels * step + step // 2, 0, 255).astype(np.uint8))
            offset += LENGTH.size + n
        return Video(np.stack(frames))
