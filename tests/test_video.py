"""Video I/O: containers, pixel formats, options, writing, and clear errors for files that are not usable videos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import EXAMPLE_CLIP, moving_clip

from codec.errors import VideoError
from codec.metrics import psnr
from codec.video import Video, VideoLimits, crop, pad_to_multiple, parse_size, read_video, write_video


def _write_raw(
    path: Path, codec: str, pix_fmt: str, frames: list[np.ndarray], src_fmt: str, fmt: str | None = None, rate: int = 25
) -> Path:
    """Write frames given in `src_fmt` (e.g. gray, rgba) with `codec`/`pix_fmt`, bypassing our writer."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format=src_fmt).reformat(format=pix_fmt)):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize(
    "suffix,codec,pix_fmt",
    [
        (".mkv", "ffv1", "yuv444p"),
        (".webm", "libvpx-vp9", "yuv420p"),
        (".avi", "mpeg4", "yuv420p"),
        (".mov", "png", "rgb24"),
        (".mp4", "libx264", "yuv420p"),
    ],
)
def test_reads_common_containers(tmp_path, suffix, codec, pix_fmt):
    clip = moving_clip(frames=6)
    path = _write_raw(tmp_path / f"c{suffix}", codec, pix_fmt, list(clip.frames), "rgb24")
    video = read_video(path)
    assert video.frames.shape == clip.frames.shape
    assert video.fps == 25
    assert psnr(clip.frames, video.frames).min() > 24  # the same pictures, up to the format's loss


def test_y4m_round_trip_is_near_lossless_and_keeps_fps(tmp_path):
    clip = Video(moving_clip(frames=5).frames, Fraction(30000, 1001))
    video = read_video(write_video(clip, tmp_path / "a.y4m"))
    assert video.fps == Fraction(30000, 1001)
    assert psnr(clip.frames, video.frames).min() > 38  # only RGB <-> YUV 4:4:4 rounding


def test_mp4_is_h264_yuv420p_and_odd_sizes_are_padded_to_even(tmp_path):
    clip = moving_clip(frames=4, height=33, width=47)
    path = write_video(clip, tmp_path / "odd.mp4")
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
    video = read_video(path)
    assert (video.height, video.width) == (34, 48)
    assert psnr(clip.frames, video.frames[:, :33, :47]).min() > 26  # 4:2:0 chroma loss on a noisy texture


def test_odd_sized_input_is_read_at_its_size(tmp_path):
    clip = moving_clip(frames=3, height=17, width=31)
    video = read_video(write_video(clip, tmp_path / "odd.y4m"))
    assert video.frames.shape == (3, 17, 31, 3)


def test_start_frames_and_size_options():
    video = read_video(EXAMPLE_CLIP, start=10, frames=5, size=(320, 180))
    assert video.frames.shape == (5, 180, 320, 3)
    full = read_video(EXAMPLE_CLIP, frames=15, size=(320, 180))
    assert np.array_equal(full.frames[10:15], video.frames)


def test_gray_input_becomes_rgb(tmp_path):
    gray = [np.full((24, 32), 40 * i + 20, np.uint8) for i in range(3)]
    video = read_video(_write_raw(tmp_path / "g.mkv", "ffv1", "gray", gray, "gray"))
    assert video.frames.shape == (3, 24, 32, 3)
    assert np.all(video.frames[..., 0] == video.frames[..., 1])
    assert abs(int(video.frames[2, 0, 0, 0]) - 100) <= 2


def test_ten_bit_input(tmp_path):
    clip = moving_clip(frames=3)
    video = read_video(_write_raw(tmp_path / "p10.mkv", "ffv1", "yuv420p10le", list(clip.frames), "rgb24"))
    assert video.frames.dtype == np.uint8 and video.frames.shape == clip.frames.shape
    assert psnr(clip.frames, video.frames).min() > 25


def test_alpha_input_drops_alpha(tmp_path):
    rgba = [np.dstack([moving_clip(frames=1).frames[0], np.full((48, 64), 128, np.uint8)]) for _ in range(2)]
    video = read_video(_write_raw(tmp_path / "a.mov", "png", "rgba", rgba, "rgba"))
    assert video.frames.shape == (2, 48, 64, 3)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a video"),
        (b"hello, I am a text file\n" * 50, "not a video"),
    ],
)
def test_non_videos_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=message):
        read_video(path)


def test_missing_file():
    with pytest.raises(VideoError, match="no such file"):
        read_video("/nonexistent/clip.mp4")


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(VideoError, match="no video stream"):
        read_video(path)


def test_image_renamed_mp4_is_read_as_one_frame(tmp_path):
    path = _write_raw(tmp_path / "img.mp4", "png", "rgb24", [moving_clip(frames=1).frames[0]], "rgb24", fmt="image2")
    assert read_video(path).num_frames == 1


def test_truncated_mp4_is_an_error_or_a_prefix(tmp_path, clip_file):
    data = clip_file.read_bytes()
    for cut in (40, len(data) // 3, len(data) - 100):
        path = tmp_path / f"cut{cut}.mp4"
        path.write_bytes(data[:cut])
        try:
            video = read_video(path)
        except VideoError:
            continue
        assert 1 <= video.num_frames <= 12 and video.frames.shape[1:] == (48, 64, 3)


def test_limits_are_checked_before_decoding(clip_file):
    with pytest.raises(VideoError, match="larger than the limit"):
        read_video(clip_file, limits=VideoLimits(max_width=32))
    with pytest.raises(VideoError, match="more than 5 frames"):
        read_video(clip_file, limits=VideoLimits(max_frames=5))
    with pytest.raises(VideoError, match="budget"):
        read_video(clip_file, limits=VideoLimits(max_total_pixels=64 * 48 * 3))
    assert read_video(clip_file, frames=5, limits=VideoLimits(max_frames=5)).num_frames == 5


def test_start_past_the_end(clip_file):
    with pytest.raises(VideoError, match="no decodable frames at or after frame 50"):
        read_video(clip_file, start=50)


def test_unsupported_output_format(tmp_path, clip):
    with pytest.raises(VideoError, match="can only write"):
        write_video(clip, tmp_path / "x.gif")


def test_pad_and_crop_round_trip(clip):
    padded, size = pad_to_multiple(clip.frames[:, :45, :61], 64)
    assert padded.shape[1:3] == (64, 64)
    assert np.array_equal(padded[:, 44, :61], clip.frames[:, 44, :61])  # replicate padding
    assert np.array_equal(padded[:, 50, 30], padded[:, 44, 30])
    assert np.array_equal(crop(padded, size), clip.frames[:, :45, :61])


def test_parse_size():
    assert parse_size("640x360") == (640, 360)
    with pytest.raises(VideoError):
        parse_size("640*360")


def test_video_rejects_bad_arrays():
    with pytest.raises(VideoError):
        Video(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(VideoError):
        Video(np.zeros((0, 4, 4, 3), np.uint8))
