"""A corpus of hostile video uploads, made on the spot with PyAV (never committed), and the outcome rules they are
judged by.

    python -m codec.hostile out/hostile          # writes the files, prints one line per file

Every file is named `*.mp4` whatever it really holds, as a user's upload would be. Each carries what a reader
must do with it (`expect`):

* "refuse": a clear error (`VideoError` / exit status 2 / "Cannot run this: ..."), decided before anything large
  is allocated;
* "accept": read and coded like any clip (the app resizes it to its size cap);
* "either": a clear error or a normal result, never an internal error, a crash or a hang.

Contents: empty, random bytes, HTML, a PNG and an AAC audio-only mp4 renamed `.mp4`, two truncated mp4s (index at
the end and at the start), 1x1, odd-sized and 8K (7680x4320, about 100 KB) videos, 10-bit HEVC, VP9 with alpha, 10-bit
FFV1 with alpha, variable frame rate, 12,000 frames, and files that declare 30000x30000 in a few hundred bytes: a Y4M
header, an mp4 whose track header and sample entry were edited, and raw H.264 streams whose SPS was rewritten
(to 30000x30000, which FFmpeg itself refuses, and to 16000x16000, which it would allocate).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

HUGE = 30000  # the declared width and height of the "huge declared size" files
BIG = 16000  # a declared size FFmpeg still accepts (16000 x 16000 < INT_MAX / 8) but no reader here should
EXPECTATIONS = ("refuse", "accept", "either")


@dataclass(frozen=True)
class HostileFile:
    """One file of the corpus: where it is, what it really is, what a reader must do with it."""

    name: str
    path: Path
    what: str
    expect: str  # one of EXPECTATIONS


# --- writers ------------------------------------------------------------------------------------------------------


def _frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """n moving gradient frames, uint8 RGB [n, H, W, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, 3)
    out = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        out[t] = ((base + np.stack([xx * 3 + t * 4, yy * 3, (xx + yy + t) * 2], -1)) % 256).astype(np.uint8)
    return out


def _encode(
    path: Path,
    frames: np.ndarray | Callable[[int], np.ndarray],
    count: int,
    width: int,
    height: int,
    codec: str,
    pix_fmt: str,
    fmt: str | None = "mp4",
    options: dict | None = None,
    container_options: dict | None = None,
    pts: list[int] | None = None,
    rate: int = 25,
) -> Path:
    """Encode frames (an array, or a function of the frame index) with PyAV; `pts` in 1/1000 s for VFR."""
    with av.open(str(path), mode="w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options or {}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for t in range(count):
            rgb = frames(t) if callable(frames) else frames[t]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
            if pts is not None:
                frame.pts, frame.time_base = pts[t], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _encode_rgba(
    path: Path, count: int, width: int, height: int, codec: str, pix_fmt: str, fmt: str, options: dict | None = None
) -> Path:
    """A clip with a real alpha channel (a moving opaque square over a transparent background)."""
    with av.open(str(path), mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options or {}
        rgb = _frames(count, height, width, seed=3)
        for t in range(count):
            alpha = np.zeros((height, width, 1), np.uint8)
            alpha[t * 2 : t * 2 + height // 2, t * 2 : t * 2 + width // 2] = 255
            frame = av.VideoFrame.from_ndarray(np.concatenate([rgb[t], alpha], -1), format="rgba")
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=44100)
        samples = (np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100) * 0.3).astype(np.float32)
        for start in range(0, samples.size - 1024, 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _png(path: Path) -> Path:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_frames(1, 48, 64)[0]).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def _truncated(path: Path, scratch: Path, faststart: bool, keep: float) -> Path:
    """An H.264 mp4 cut to `keep` of its bytes: with the index (moov) at the end it is gone, at the start it stays
    and the tail of the media data is missing."""
    whole = _encode(
        scratch,
        _frames(24, 96, 128, seed=1),
        24,
        128,
        96,
        "libx264",
        "yuv420p",
        options={"crf": "10"},
        container_options={"movflags": "+faststart"} if faststart else None,
    )
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    whole.unlink()
    return path


def _y4m_huge(path: Path) -> Path:
    """A YUV4MPEG2 header declaring HUGE x HUGE, followed by one frame marker and a few bytes."""
    path.write_bytes(f"YUV4MPEG2 W{HUGE} H{HUGE} F25:1 Ip A1:1 C420jpeg\n".encode() + b"FRAME\n" + bytes(256))
    return path


def _mp4_huge_header(path: Path) -> Path:
    """A 64x64 H.264 mp4 whose track header (tkhd) and sample entry (avc1) say HUGE x HUGE; the SPS still says 64."""
    data = bytearray(_encode(path, _frames(4, 64, 64), 4, 64, 64, "libx264", "yuv420p").read_bytes())
    tkhd = data.find(b"tkhd")
    size = int.from_bytes(data[tkhd - 4 : tkhd], "big")
    end = tkhd - 4 + size  # tkhd ends with width, height as 16.16 fixed point
    data[end - 8 : end] = (HUGE << 16).to_bytes(4, "big") * 2
    avc1 = data.find(b"avc1", data.find(b"stsd"))
    data[avc1 + 28 : avc1 + 32] = HUGE.to_bytes(2, "big") * 2  # avc1: 6 reserved, 2 ref index, 16 pre-defined
    path.write_bytes(bytes(data))
    return path


def _h264_huge_sps(path: Path, side: int = HUGE) -> Path:
    """A raw H.264 (Annex B) baseline stream of 64x64 whose SPS was rewritten to declare side x side."""
    raw = _encode(
        path, _frames(4, 64, 64), 4, 64, 64, "libx264", "yuv420p", fmt="h264", options={"profile": "baseline"}
    ).read_bytes()
    path.write_bytes(rewrite_sps_size(raw, side, side))
    return path


def _encoder_available(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - PyAV raises several types for an unknown codec
        return False


# --- H.264 SPS editing --------------------------------------------------------------------------------------------


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def u(self, n: int) -> int:
        value = int(self.bits[self.pos : self.pos + n], 2) if n else 0
        self.pos += n
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bits[self.pos] == "0":
            zeros += 1
            self.pos += 1
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _ue_bits(value: int) -> str:
    code = f"{value + 1:b}"
    return "0" * (len(code) - 1) + code


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def rewrite_sps_size(stream: bytes, width: int, height: int) -> bytes:
    """Every SPS of an Annex B H.264 stream rewritten to pic_width/height_in_mbs = ceil(size / 16) (frame MBs).

    Parses the SPS up to the two size fields (profile-dependent fields, POC type 0 or 1), swaps them, and copies
    the remaining bits through the stop bit; scaling matrices are not supported (raise ValueError).
    """
    parts = stream.split(b"\x00\x00\x01")
    out = [parts[0]]
    for part in parts[1:]:
        if part and part[0] & 0x1F == 7:
            part = _rewrite_one_sps(part, width, height)
        out.append(part)
    return b"\x00\x00\x01".join(out)


def _rewrite_one_sps(nal: bytes, width: int, height: int) -> bytes:
    trailing_zero = nal.endswith(b"\x00")  # the leading zero of the next 4-byte start code
    body = _unescape(nal[1:].rstrip(b"\x00") if trailing_zero else nal[1:])
    bits = _Bits(body)
    profile = bits.u(8)
    bits.u(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        if bits.ue() == 3:
            bits.u(1)
        bits.ue(), bits.ue(), bits.u(1)
        if bits.u(1):
            raise ValueError("SPS with scaling matrices: not supported")
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1), bits.se(), bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue(), bits.u(1)  # max_num_ref_frames, gaps_in_frame_num_allowed
    head = bits.bits[: bits.pos]
    bits.ue(), bits.ue()  # the old pic_width_in_mbs_minus1, pic_height_in_map_units_minus1
    tail = bits.bits[bits.pos :].rstrip("0")  # up to and including the rbsp stop bit
    new = head + _ue_bits((width + 15) // 16 - 1) + _ue_bits((height + 15) // 16 - 1) + tail
    new += "0" * (-len(new) % 8)
    rbsp = bytes(int(new[i : i + 8], 2) for i in range(0, len(new), 8))
    return nal[:1] + _escape(rbsp) + (b"\x00" if trailing_zero else b"")


# --- the corpus ---------------------------------------------------------------------------------------------------


def make_corpus(folder: str | Path, many_frames: int = 12_000, names: set[str] | None = None) -> list[HostileFile]:
    """Write the hostile corpus (or only the files in `names`) into `folder`; return its files in a fixed order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[HostileFile] = []

    def add(name: str, what: str, expect: str, make: Callable[[Path], object]) -> None:
        if names is not None and name not in names:
            return
        path = folder / name
        make(path)
        files.append(HostileFile(name, path, what, expect))

    add("empty.mp4", "0 bytes", "refuse", lambda p: p.write_bytes(b""))
    add(
        "random-bytes.mp4",
        "64 KiB of random bytes",
        "refuse",
        lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 65536, dtype=np.uint8).tobytes()),
    )
    add(
        "html.mp4",
        "an HTML page with a script",
        "refuse",
        lambda p: p.write_text("<html><script>alert(1)</script></html>\n" * 20),
    )
    add("image-png.mp4", "a 64x48 PNG image renamed .mp4 (FFmpeg reads it as one frame)", "either", _png)
    add("audio-only.mp4", "AAC audio in mp4, no video stream", "refuse", _audio_only)
    add(
        "truncated-index-at-end.mp4",
        "H.264 mp4 cut at 50 %, its index (moov) at the end is lost",
        "refuse",
        lambda p: _truncated(p, folder / ".whole.mp4", faststart=False, keep=0.5),
    )
    add(
        "truncated-media.mp4",
        "H.264 mp4 (index first) cut at 60 %: the last frames are missing",
        "either",
        lambda p: _truncated(p, folder / ".whole.mp4", faststart=True, keep=0.6),
    )
    add(
        "1x1.mp4",
        "a 1x1 H.264 video (yuv444p), 3 frames",
        "refuse",
        lambda p: _encode(p, _frames(3, 1, 1), 3, 1, 1, "libx264", "yuv444p"),
    )
    add(
        "odd-33x17.mp4",
        "a 33x17 H.264 video (yuv444p), 4 frames",
        "accept",
        lambda p: _encode(p, _frames(4, 17, 33), 4, 33, 17, "libx264", "yuv444p"),
    )
    add(
        "8k.mp4",
        "a 7680x4320 H.264 video, 2 flat frames (about 100 KB)",
        "accept",
        lambda p: _encode(
            p,
            lambda t: np.full((4320, 7680, 3), 90, np.uint8),
            2,
            7680,
            4320,
            "libx264",
            "yuv420p",
            options={"preset": "ultrafast", "crf": "51"},
        ),
    )
    if _encoder_available("libx265"):
        add(
            "hevc-10bit.mp4",
            "HEVC Main 10 (yuv420p10le), 4 frames of 128x96",
            "accept",
            lambda p: _encode(
                p, _frames(4, 96, 128), 4, 128, 96, "libx265", "yuv420p10le", options={"x265-params": "log-level=error"}
            ),
        )
    if _encoder_available("libvpx-vp9"):
        add(
            "vp9-alpha.mp4",
            "VP9 with alpha (yuva420p) in WebM, renamed .mp4",
            "accept",
            lambda p: _encode_rgba(p, 4, 64, 64, "libvpx-vp9", "yuva420p", "webm"),
        )
    add(
        "ffv1-10bit-alpha.mp4",
        "FFV1 yuva444p10le in Matroska, renamed .mp4",
        "accept",
        lambda p: _encode_rgba(p, 4, 64, 48, "ffv1", "yuva444p10le", "matroska"),
    )
    add(
        "vfr.mp4",
        "variable frame rate: 12 frames at irregular times (10..400 ms apart)",
        "accept",
        lambda p: _encode(
            p,
            _frames(12, 48, 64),
            12,
            64,
            48,
            "libx264",
            "yuv420p",
            pts=[0, 40, 50, 60, 460, 500, 510, 900, 940, 950, 1350, 1390],
        ),
    )
    small = _frames(1, 16, 16)[0]
    add(
        "many-frames.mp4",
        f"{many_frames:,} frames of 16x16",
        "either",
        lambda p: _encode(
            p,
            lambda t: np.roll(small, t, axis=1),
            many_frames,
            16,
            16,
            "libx264",
            "yuv420p",
            options={"preset": "ultrafast"},
        ),
    )
    add("huge-y4m-header.mp4", f"a Y4M header declaring {HUGE}x{HUGE}, then 256 bytes", "refuse", _y4m_huge)
    add(
        "huge-mp4-header.mp4",
        f"a 64x64 H.264 mp4 whose tkhd and avc1 boxes declare {HUGE}x{HUGE}",
        "either",
        _mp4_huge_header,
    )
    add("huge-h264-sps.mp4", f"raw H.264 of 64x64 whose SPS was rewritten to {HUGE}x{HUGE}", "refuse", _h264_huge_sps)
    add(
        "big-h264-sps.mp4",
        f"raw H.264 of 64x64 whose SPS was rewritten to {BIG}x{BIG} (within FFmpeg's own limits: "
        "a decoder would allocate 384 MB a frame)",
        "refuse",
        lambda p: _h264_huge_sps(p, BIG),
    )
    return files


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m codec.hostile FOLDER", file=sys.stderr)
        return 2
    for f in make_corpus(args[0]):
        print(f"{f.name:28s} {f.path.stat().st_size:>10,d} B  expect {f.expect:6s}  {f.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
