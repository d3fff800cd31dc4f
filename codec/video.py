"""Video I/O: read any clip PyAV can decode into RGB frames, write mp4 (H.264) or y4m, pad and crop.

This module is the one place where colour conversion between RGB and the YUV formats of codecs happens
(`rgb_to_av_frame`, `av_frame_to_rgb`): every codec wrapper and writer goes through it.

PyAV is optional: without it (a lent GPU machine has none, and its 34 MiB wheel does not fit what a call to that
machine may carry) clips in memory work (`Video`, `synthetic_clip`, padding, tensors) and reading or writing a file
raises `VideoError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

try:
    import av
except ImportError:  # reading and writing files say so (`_need_av`); everything in memory works
    av = None

from codec.errors import VideoError

log = logging.getLogger(__name__)

DEFAULT_FPS = Fraction(25)
WRITE_FORMATS = (".mp4", ".y4m")


@dataclass(frozen=True)
class VideoLimits:
    """What a reader accepts before it allocates: frame size, frame count, total pixels and decoding time.

    max_width / max_height bound the frames a reader returns (and a DVC1 header's size); max_source_side bounds
    the frames a file may declare and its decoder allocate, even when they are resized while decoding (the app
    reads 8K sources straight to its size cap). The declared size is checked before decoding, and every decoded
    frame again. `max_frames` also bounds the frames decoded to reach `start`. Defaults: 4096x4096 out, 8192 in,
    10,000 frames, 3x10^8 pixels (96 frames of 1080p), 300 s of decoding; each can be set by an environment
    variable (`from_env`).
    """

    max_width: int = 4096
    max_height: int = 4096
    max_source_side: int = 8192
    min_side: int = 2
    max_frames: int = 10_000
    max_total_pixels: int = 300_000_000  # frames x width x height: 96 frames of 1080p; about 0.9 GB of RGB
    max_decode_s: float = 300.0

    ENV = {
        "max_width": "DIFFVC_MAX_WIDTH",
        "max_height": "DIFFVC_MAX_HEIGHT",
        "max_source_side": "DIFFVC_MAX_SOURCE_SIDE",
        "max_frames": "DIFFVC_MAX_FRAMES",
        "max_total_pixels": "DIFFVC_MAX_PIXELS",
        "max_decode_s": "DIFFVC_MAX_DECODE_S",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> VideoLimits:
        """The defaults, overridden by DIFFVC_MAX_WIDTH, _HEIGHT, _SOURCE_SIDE, _FRAMES, _PIXELS (frames x W x H),
        _DECODE_S."""
        values = {}
        for name, var in cls.ENV.items():
            text = environ.get(var, "").strip()
            if text:
                try:
                    value = float(text) if name == "max_decode_s" else int(text)
                except ValueError:
                    raise VideoError(f"{var} must be a number, got {text!r}") from None
                if value <= 0:
                    raise VideoError(f"{var} must be positive, got {text!r}")
                values[name] = value
        return cls(**values)

    def check_size(self, width: int, height: int) -> None:
        if width < self.min_side or height < self.min_side:
            raise VideoError(f"video is {width}x{height}: smaller than {self.min_side}x{self.min_side} pixels")
        if width > self.max_width or height > self.max_height:
            raise VideoError(
                f"video is {width}x{height}: larger than the limit {self.max_width}x{self.max_height}; "
                "pass a smaller size (e.g. --size 1280x720)"
            )

    def check_declared(self, width: int, height: int) -> None:
        """The frame size a file declares, before its decoder allocates a frame of it."""
        if max(width, height) > self.max_source_side:
            raise VideoError(
                f"the file declares frames of {width}x{height}: larger than the limit of "
                f"{self.max_source_side} pixels a side that this reader decodes"
            )

    def for_source(self) -> VideoLimits:
        """These limits for frames at the source's size, before they are resized: up to `max_source_side` a side."""
        return replace(self, max_width=self.max_source_side, max_height=self.max_source_side)

    def check_count(self, frames: int, width: int, height: int) -> None:
        if frames > self.max_frames:
            raise VideoError(f"video has more than {self.max_frames} frames; pass a frame count (e.g. --frames 96)")
        if frames * width * height > self.max_total_pixels:
            raise VideoError(
                f"{frames} frames of {width}x{height} exceed the budget of {self.max_total_pixels:,} pixels; "
                "pass fewer frames or a smaller size"
            )


DEFAULT_LIMITS = VideoLimits.from_env(os.environ)


@dataclass(frozen=True, eq=False)
class Video:
    """A clip in memory.

    frames: uint8 array [T, H, W, 3], RGB, full range 0..255. fps: frames per second (exact fraction).
    """

    frames: np.ndarray
    fps: Fraction = DEFAULT_FPS

    def __post_init__(self) -> None:
        f = self.frames
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            got = f"{getattr(f, 'dtype', type(f).__name__)} {getattr(f, 'shape', '')}"
            raise VideoError(f"frames must be uint8 [T,H,W,3], got {got}")
        if f.shape[0] == 0:
            raise VideoError("a video needs at least one frame")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def num_pixels(self) -> int:
        """Pixels in the whole clip: frames x height x width (the denominator of bpp)."""
        return self.num_frames * self.height * self.width

    def content_hash(self) -> str:
        """sha256 of the pixels, shape and frame rate: identifies a clip for the evaluation cache."""
        h = hashlib.sha256()
        h.update(f"{self.frames.shape}|{self.fps}".encode())
        h.update(np.ascontiguousarray(self.frames).data)
        return h.hexdigest()


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'640x360' -> (640, 360); None stays None."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VideoError(f"size must look like WIDTHxHEIGHT (e.g. 640x360), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise VideoError(f"size must be positive, got {text!r}")
    return w, h


# --- colour conversion: the one place -------------------------------------------------------------------


def rgb_to_av_frame(rgb: np.ndarray, pix_fmt: str = "rgb24") -> av.VideoFrame:
    """uint8 RGB [H, W, 3] -> PyAV frame in `pix_fmt` (BT.601 matrix, limited range for YUV, as swscale does)."""
    _need_av("converting frames for a codec")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame if pix_fmt == "rgb24" else frame.reformat(format=pix_fmt)


def av_frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """Any PyAV frame (gray, 10-bit, alpha, YUV, ...) -> uint8 RGB [H, W, 3], resized to size=(W, H) if given."""
    if size is not None and (frame.width, frame.height) != size:
        frame = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC")
    return frame.to_ndarray(format="rgb24")


def _need_av(what: str) -> None:
    if av is None:
        raise VideoError(f"{what} needs PyAV, which is not installed here (pip install av)")


def frames_to_tensor(frames: np.ndarray, device="cpu"):
    """uint8 RGB [N, H, W, 3] -> float32 torch tensor [N, 3, H, W] in [0, 1] on `device` (the models' input)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_frames(x) -> np.ndarray:
    """float torch tensor [N, 3, H, W] in [0, 1] -> uint8 RGB [N, H, W, 3] (clamped, rounded), on the CPU."""
    import torch

    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# --- reading ---------------------------------------------------------------------------------------------

RAW_SUFFIX = ".yuv"
_RAW_SIZE = re.compile(
    r"(?<![0-9])([0-9]{2,5})x([0-9]{2,5})(?![0-9])"  # WIDTHxHEIGHT
    r"(?:_(?!4[24][024]_|4[24][024]$)([0-9]{1,3}(?:\.[0-9]+)?)(?:fps|hz)?(?![0-9a-z.]))?",  # _RATE, not _420/_444
    re.I,
)


@dataclass(frozen=True)
class RawFormat:
    """What a headerless .yuv file does not say about itself: frame size, frame rate and pixel format.

    `from_name` reads them from the file name as the test sets name their sequences (JCT-VC's
    `BasketballPass_416x240_50.yuv`, UVG's `Beauty_1920x1080_120fps_420_8bit_YUV.yuv`): WIDTHxHEIGHT, then an
    optional _RATE (fps or Hz); 10-bit when the name says `10bit` or `10b`, 4:4:4 / 4:2:2 when it says `444` /
    `422`; else 8-bit 4:2:0 at 25 fps."""

    width: int
    height: int
    fps: Fraction = DEFAULT_FPS
    pixel_format: str = "yuv420p"

    @classmethod
    def from_name(cls, path: Path) -> RawFormat:
        match = _RAW_SIZE.search(path.stem)
        if match is None:
            raise VideoError(
                f"{path.name}: a raw YUV file carries no header, so its name must give its size, as the test sets "
                "name them (e.g. BasketballPass_416x240_50.yuv)"
            )
        width, height, rate = int(match[1]), int(match[2]), match[3]
        name = path.stem.lower()
        chroma = "444" if "444" in name else "422" if "422" in name else "420"
        depth = "10le" if re.search(r"10-?b(it)?(?![a-z])", name) else ""
        return cls(width, height, _named_rate(rate), f"yuv{chroma}p{depth}")

    def demuxer_options(self) -> dict[str, str]:
        """FFmpeg's rawvideo demuxer options."""
        return {
            "video_size": f"{self.width}x{self.height}",
            "pixel_format": self.pixel_format,
            "framerate": str(self.fps),
        }


def _named_rate(text: str | None) -> Fraction:
    """'50' -> 50, '29.97' -> 30000/1001 (NTSC rates are written rounded), None or out of range -> DEFAULT_FPS."""
    if not text or not 0 < float(text) <= 1000:
        return DEFAULT_FPS
    ntsc = float(text) * 1.001
    if float(text) != round(float(text)) and abs(ntsc - round(ntsc)) < 0.01:
        return Fraction(round(ntsc) * 1000, 1001)
    return Fraction(text)


def read_video(
    path: str | Path,
    start: int = 0,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    limits: VideoLimits = DEFAULT_LIMITS,
    fit: Callable[[int, int], tuple[int, int]] | None = None,
) -> Video:
    """Decode `frames` frames (all if None) of the first video stream, from frame index `start`.

    size=(W, H) resizes every frame; fit(source W, source H) -> (W, H) sizes them from the first frame read, in
    the same pass (a size cap: the source may then be up to `limits.max_source_side` a side, and the frames asked
    for are checked against the pixel budget before the second is decoded); otherwise every frame takes the size
    of the first one. A raw `.yuv` file's geometry comes from its name (`RawFormat.from_name`).
    Raises VideoError when the file is missing, not a video, has no video stream or no frames, or exceeds `limits`.
    """
    path = Path(path)
    if start < 0 or (frames is not None and frames <= 0):
        raise VideoError(f"start must be >= 0 and frames > 0 (got start={start}, frames={frames})")
    if size is not None and fit is not None:
        raise ValueError("give a size or a fit, not both")
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path.name}: the file is empty")
    if start >= limits.max_frames:
        raise VideoError(f"start frame {start} is beyond the limit of {limits.max_frames} frames")
    if size is not None:
        limits.check_size(*size)
    # max_pixels bounds the frames FFmpeg allocates while probing the stream (it decodes to find its
    # parameters): a 1 KB file declaring 16000x16000 otherwise costs 2 GB before we see its size
    options, demuxer = {"max_pixels": str(limits.max_source_side**2)}, None
    if path.suffix.lower() == RAW_SUFFIX:
        raw = RawFormat.from_name(path)
        limits.check_declared(raw.width, raw.height)
        options, demuxer = {**options, **raw.demuxer_options()}, "rawvideo"
    _need_av(f"reading {path.name}")
    try:
        container = av.open(str(path), mode="r", format=demuxer, options=options)
    except (av.FFmpegError, ValueError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"{path.name}: not a video file that can be read ({_reason(e, path)})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path.name}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = (stream.codec_context.width, stream.codec_context.height)
        if all(declared):  # checked even when resizing: the decoder allocates frames of the declared size
            limits.check_declared(*declared)
            if size is None:
                (limits if fit is None else limits.for_source()).check_size(*declared)
        fps = _stream_fps(stream)
        sizing = size if fit is None else _Fit(fit, frames)
        rgb = _decode_frames(container, stream, path, start, frames, sizing, limits)
    if not rgb:
        where = f" at or after frame {start}" if start else ""
        raise VideoError(f"{path.name}: the video stream has no decodable frames{where}")
    return Video(np.stack(rgb), fps)


BROWSER_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})  # what Chromium, Firefox and Safari all play ...
BROWSER_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})  # ... in these containers
BROWSER_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p"})  # 8-bit 4:2:0


def browser_playback_problem(path: str | Path) -> str | None:
    """None when a browser's <video> can play the file (H.264, VP8/9 or AV1, 8-bit 4:2:0, in MP4 or WebM), else
    why not, e.g. "mjpeg in avi" or "hevc yuv420p10le"; a file that does not open is left to `read_video`."""
    if av is None:
        return None
    try:
        with av.open(str(path), mode="r", options={"max_pixels": str(DEFAULT_LIMITS.max_source_side**2)}) as c:
            if not c.streams.video:
                return None
            context = c.streams.video[0].codec_context
            codec, pixels, container = context.name, context.format.name if context.format else "", c.format.name
    except (av.FFmpegError, ValueError, OSError, UnicodeDecodeError):
        return None
    problems = []
    if codec not in BROWSER_CODECS:
        problems.append(codec)
    if pixels and pixels not in BROWSER_PIXEL_FORMATS:
        problems.append(pixels)
    if container not in BROWSER_CONTAINERS:
        problems.append(f"in {container.split(',')[0]}")
    return " ".join(problems) or None


@dataclass(frozen=True)
class _Fit:
    """`read_video`'s fit: the frames' size worked out from the first frame read."""

    fit: Callable[[int, int], tuple[int, int]]
    frames: int | None

    def first_frame(self, width: int, height: int, limits: VideoLimits) -> tuple[int, int]:
        """The size of every frame, from the first one's (W, H): that frame within the limits at the source's size,
        the fitted size within the output limits, and the frames asked for within the pixel budget."""
        source = limits.for_source()
        source.check_size(width, height)
        source.check_count(1, width, height)
        size = self.fit(width, height)
        limits.check_size(*size)
        limits.check_count(self.frames or 1, *size)  # the budget, before decoding the rest
        return size


def _decode_frames(container, stream, path, start, frames, size, limits) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    index = 0
    name = path.name
    began = time.monotonic()
    try:
        for frame in container.decode(stream):
            if time.monotonic() - began > limits.max_decode_s:
                raise VideoError(
                    f"{name}: decoding took longer than the limit of {limits.max_decode_s:g} s "
                    f"(at frame {index}); choose an earlier start, fewer frames or a smaller file"
                )
            limits.check_declared(frame.width, frame.height)  # a stream may change size after its header
            if index >= start:
                if isinstance(size, _Fit):
                    size = size.first_frame(frame.width, frame.height, limits)
                if size is None:
                    size = (frame.width, frame.height)
                    limits.check_size(*size)
                limits.check_count(len(out) + 1, *size)
                out.append(av_frame_to_rgb(frame, size))
                if frames is not None and len(out) >= frames:
                    break
            index += 1
    except (av.FFmpegError, ValueError, OSError) as e:
        if not out:
            raise VideoError(f"{name}: the video stream cannot be decoded ({_reason(e, path)})") from None
        log.warning("%s: decoding stopped after %d frames: %s", name, len(out), _reason(e, path))
    return out


def _stream_fps(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) <= 1000:
            return Fraction(rate)
    return DEFAULT_FPS


def _reason(e: Exception, path: Path | None = None) -> str:
    """FFmpeg's first line, without the file's full path (an upload's server-side folder is nobody's business)."""
    text = str(e).strip() or type(e).__name__
    if path is not None:
        text = text.replace(str(path), path.name)
    return re.sub(r"(/[^/\s:'\"]+)+/([^/\s:'\"]+)", r"\2", text.splitlines()[0])[:200]


# --- writing ---------------------------------------------------------------------------------------------


def write_video(video: Video, path: str | Path, crf: int = 12) -> Path:
    """Write `video` as H.264 mp4 (yuv420p, browser-playable) or y4m (yuv444p), chosen by the suffix.

    H.264 in yuv420p needs even dimensions: an odd width or height is padded by one replicated column/row.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise VideoError(f"{path.name}: can only write {', '.join(WRITE_FORMATS)}")
    if suffix == ".mp4":
        _write(
            video.frames if video.height % 2 == 0 and video.width % 2 == 0 else pad_to_multiple(video.frames, 2)[0],
            video.fps,
            path,
            "mp4",
            "libx264",
            "yuv420p",
            {"crf": str(crf), "preset": "medium", "movflags": "+faststart"},
        )
    else:
        _write(video.frames, video.fps, path, "yuv4mpegpipe", "rawvideo", "yuv444p", {})
    return path


def _write(frames: np.ndarray, fps: Fraction, path: Path, fmt: str, codec: str, pix_fmt: str, options: dict) -> None:
    _need_av(f"writing {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    container_options = {k: v for k, v in options.items() if k == "movflags"}
    codec_options = {k: v for k, v in options.items() if k != "movflags"}
    with av.open(str(path), mode="w", format=fmt, options=container_options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = codec_options
        for rgb in frames:
            for packet in stream.encode(rgb_to_av_frame(rgb)):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def synthetic_clip(frames: int = 8, height: int = 48, width: int = 64, seed: int = 0) -> Video:
    """A synthetic clip for tests and benchmarks: a textured scene panning by (2, 1) pixels (x, y) per frame,
    plus a bright moving square. uint8 RGB, 25 fps, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    h_big, w_big = height + 2 * frames + 8, width + 2 * frames + 8
    yy, xx = np.mgrid[0:h_big, 0:w_big]
    scene = np.stack(
        [
            128 + 60 * np.sin(xx / 5.0) + 30 * np.cos(yy / 3.0),
            128 + 50 * np.cos((xx + yy) / 7.0),
            128 + 40 * np.sin(yy / 4.0 + xx / 9.0),
        ],
        axis=-1,
    ) + rng.normal(0, 8, (h_big, w_big, 3))
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        frame = scene[t : t + height, 2 * t : 2 * t + width].copy()
        y0, x0 = (3 + t) % max(1, height - 8), (5 + 3 * t) % max(1, width - 8)
        frame[y0 : y0 + 8, x0 : x0 + 8] = 240
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return Video(out, Fraction(25))


# --- padding ---------------------------------------------------------------------------------------------


def pad_to_multiple(frames: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Replicate-pad [T, H, W, C] frames at the bottom/right to a multiple of `multiple`; return (padded, (H, W))."""
    h, w = frames.shape[1], frames.shape[2]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames, (h, w)


def crop(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Undo `pad_to_multiple`: keep the top-left H x W of [T, H', W', C] frames."""
    return frames[:, : size_hw[0], : size_hw[1]]
