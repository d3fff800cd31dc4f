"""The library where PyAV is not installed (a lent GPU machine: its wheel does not fit what a call there carries):
clips in memory and DiffVC with its learned intra codec work; the anchors and video files say why they cannot."""

from __future__ import annotations

import numpy as np
import pytest

from codec import video
from codec.baselines import ffmpeg
from codec.errors import CodecUnavailableError, VideoError
from codec.registry import get_codec
from codec.video import read_video, synthetic_clip, write_video


@pytest.fixture
def no_pyav(monkeypatch):
    """As if `import av` had failed: the modules' fallback (`av = None`)."""
    monkeypatch.setattr(video, "av", None)
    monkeypatch.setattr(ffmpeg, "av", None)


def test_without_pyav_diffvc_codes_with_its_learned_intra_and_the_rest_says_why_not(no_pyav, tmp_path):
    clip = synthetic_clip(frames=3, height=48, width=64)
    codec = get_codec("diffvc:pack=random-tiny:intra=learned")
    encoded = codec.encode(clip, 32)
    assert np.array_equal(codec.decode(encoded.bitstream).frames, encoded.reconstruction.frames)
    with pytest.raises(CodecUnavailableError, match="PyAV"):
        get_codec("x265")
    with pytest.raises(CodecUnavailableError, match="PyAV"):
        get_codec("diffvc:pack=random-tiny:intra=hevc").encode(clip, 32)  # HEVC I-frames are x265's
    with pytest.raises(VideoError, match="PyAV"):
        write_video(clip, tmp_path / "clip.mp4")
    (tmp_path / "clip.y4m").write_bytes(b"YUV4MPEG2 W64 H48 F25:1\n")
    with pytest.raises(VideoError, match="PyAV"):
        read_video(tmp_path / "clip.y4m")
