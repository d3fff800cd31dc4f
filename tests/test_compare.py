"""The comparison behind the app: bitrate matching, the result folder, the cache, stopping, clip loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import moving_clip

from codec.errors import CodecError, VideoError
from codec.eval.compare import (
    CompareSettings,
    ComparisonCancelled,
    ComparisonStore,
    capped_size,
    closest_qp,
    load_clip,
    match_bitrate,
)
from codec.registry import get_codec
from codec.video import read_video, write_video

FAST = {"pack": "random-tiny", "metrics": ("psnr",)}


def test_capped_size_keeps_aspect_even_and_never_enlarges():
    assert capped_size(1280, 720, 256) == (256, 144)
    assert capped_size(720, 1280, 256) == (144, 256)
    assert capped_size(100, 60, 256) == (100, 60)
    w, h = capped_size(333, 199, 128)
    assert w == 128 and h % 2 == 0 and abs(h - 199 * 128 / 333) <= 2


def test_match_bitrate_finds_the_qp_that_made_the_target():
    video = moving_clip(frames=3)
    x265 = get_codec("x265")
    target = x265.encode(video, 30).bpp(video)
    match = match_bitrate(x265, video, target)
    assert match.qp == 30 and match.reached
    assert len(match.tried) <= 9  # bisection, not a scan of 52 QPs
    rates = dict(match.tried)
    assert all(rates[a] >= rates[b] for a, b in zip(sorted(rates), sorted(rates)[1:]))  # rate falls with QP


def test_closest_qp_bisects_a_falling_rate_to_the_nearest_in_log_rate():
    rates = {qp: 2.0 ** (-qp / 6) for qp in range(52)}  # halves every 6 QPs, as x265's roughly does
    asked: list[int] = []

    def bpp(qp: int) -> float:
        asked.append(qp)
        return rates[qp]

    for qp in (0, 7, 30, 50, 51):
        asked.clear()
        assert closest_qp(bpp, (0, 51), rates[qp] * 1.01) == qp  # just above the QP's rate, below the one before
        assert len(set(asked)) <= 8  # log2(52) + 2 rates, not a scan
    assert closest_qp(bpp, (0, 51), 100.0) == 0 and closest_qp(bpp, (0, 51), 1e-9) == 51


def test_match_bitrate_out_of_reach_takes_the_nearest_end():
    video = moving_clip(frames=2)
    x265 = get_codec("x265")
    high = match_bitrate(x265, video, 1000.0)
    low = match_bitrate(x265, video, 1e-6)
    assert (high.qp, low.qp) == (0, 51) and not high.reached and not low.reached


def test_comparison_writes_its_folder_and_is_answered_from_disk(tmp_path):
    video = moving_clip(frames=4)
    store = ComparisonStore(tmp_path / "store")
    settings = CompareSettings(qp=40, anchors=("x265", "x264"), **FAST)
    seen = []
    first = store.run(video, settings, source="clip.mp4", progress=lambda f, d: seen.append(f))
    assert not first.cached and seen[-1] == 1.0 and seen == sorted(seen)
    assert [r.slug for r in first.runs] == ["diffvc", "diffvc-tdir-off", "x265", "x264"]
    for path in first.files():
        assert path.is_file() and path.parent == first.folder
    diffvc = first.run("diffvc")
    assert (first.folder / diffvc.bitstream_file).stat().st_size == diffvc.row.bytes
    assert first.run("x265").match["target_bpp"] == pytest.approx(diffvc.row.bpp)
    frames = first.frames()
    assert frames["original"].shape == video.frames.shape and set(frames) == {"original", *(r.slug for r in first.runs)}
    assert json.loads((first.folder / "results.json").read_text())[0]["label"] == "DiffVC (TDIR on)"
    again = store.run(video, settings, source="clip.mp4")
    assert again.cached and again.key == first.key and again.rows[0].bpp == diffvc.row.bpp
    other = store.run(video, CompareSettings(qp=41, anchors=(), tdir_contrast=False, **FAST))
    assert other.key != first.key and not other.cached


def test_two_lanes_give_the_rows_of_one_with_the_metrics_beside_the_codings(tmp_path, monkeypatch):
    """lanes=2: each coding's metrics on a worker thread while the next codec codes; the same rows (bytes, every
    metric of every frame), files and order as in turn, and the progress still only rises."""
    import threading

    from codec.eval import engine

    scored_on = []
    compute = engine.compute_metrics
    monkeypatch.setattr(
        engine,
        "compute_metrics",
        lambda *a, **k: scored_on.append(threading.current_thread().name) or compute(*a, **k),
    )
    video = moving_clip(frames=4)
    settings = CompareSettings(qp=40, anchors=("x265",), **{**FAST, "metrics": ("psnr", "lpips", "tlp")})
    seen = []
    two = ComparisonStore(tmp_path / "two").run(video, settings, progress=lambda f, d: seen.append(f), lanes=2)
    on_workers, scored_on[:] = list(scored_on), []
    one = ComparisonStore(tmp_path / "one").run(video, settings)
    assert len(on_workers) == 3 and all(name.startswith("metrics") for name in on_workers)
    assert scored_on == ["MainThread"] * 3
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert any("two lanes" in note for note in two.notes) and not any("two lanes" in note for note in one.notes)
    assert [r.slug for r in two.runs] == [r.slug for r in one.runs] == ["diffvc", "diffvc-tdir-off", "x265"]
    for a, b in zip(two.runs, one.runs, strict=True):
        assert (a.row.bytes, a.row.sha256, a.row.per_frame) == (b.row.bytes, b.row.sha256, b.row.per_frame)
        assert (two.folder / a.decoded_file).is_file()


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_stopped_comparison_leaves_nothing(tmp_path, lanes):
    store = ComparisonStore(tmp_path / "store")
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(ComparisonCancelled):
        store.run(moving_clip(frames=3), CompareSettings(anchors=("x265",), **FAST), stop=stop, lanes=lanes)
    assert list((tmp_path / "store").iterdir()) == []


def test_progress_moves_with_every_diffvc_frame_and_stop_acts_between_frames(tmp_path):
    store = ComparisonStore(tmp_path / "store")
    seen: list[tuple[float, str]] = []
    settings = CompareSettings(anchors=(), tdir_contrast=False, **FAST)
    store.run(moving_clip(frames=4), settings, progress=lambda f, what: seen.append((f, what)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [w for _, w in seen if "frame" in w][-8:] == [
        f"DiffVC (TDIR on): {phase}d frame {i} of 4" for phase in ("encode", "decode") for i in range(1, 5)
    ]

    messages: list[str] = []

    def stop() -> bool:  # stop once the second frame has been encoded (the warm-up codes 2 frames unreported)
        return any("encoded frame 2 of" in m for m in messages)

    with pytest.raises(ComparisonCancelled):
        store.run(moving_clip(frames=4, seed=9), settings, progress=lambda f, what: messages.append(what), stop=stop)
    assert not any("frame 3 of" in m for m in messages)  # stopped inside the encoder, between two frames


def test_the_stage_filter_setting_reaches_diffvc(tmp_path):
    """The app's "sharpening, per stream" choice: "-1" switches the stage off, so DiffVC shows the latent codec's
    frames and runs no U-Net; the results table says so."""
    from app.views import metrics_table

    settings = CompareSettings(anchors=(), tdir_contrast=False, filter="-1", **FAST)
    assert settings.diffvc_options()["filter"] == "-1"
    comparison = ComparisonStore(tmp_path).run(moving_clip(frames=3), settings)
    assert comparison.runs[0].row.unet_evals == 0
    assert metrics_table(comparison.runs, "25")["stage filter"].tolist() == ["off"]


def test_without_a_pack_the_anchors_still_run(tmp_path):
    settings = CompareSettings(pack="no-such-pack", qp=60, anchors=("x265",), metrics=("psnr",))
    comparison = ComparisonStore(tmp_path).run(moving_clip(frames=2), settings)
    assert [r.slug for r in comparison.runs] == ["x265"]
    assert comparison.runs[0].row.qp == 51  # the slider's QP, clipped to x265's range
    assert "DiffVC did not run" in comparison.notes[0]


def test_bad_settings_are_errors_for_a_person():
    with pytest.raises(CodecError, match="unknown anchor"):
        CompareSettings(anchors=("x266",))


def test_load_clip_caps_size_and_rejects_what_is_not_a_video(tmp_path):
    path = write_video(moving_clip(frames=6, height=48, width=64), tmp_path / "clip.mp4", crf=4)
    video = load_clip(path, start=2, frames=3, max_side=32)
    assert video.frames.shape == (3, 24, 32, 3) and video.frames.dtype == np.uint8
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="not a video"):
        load_clip(junk)
    with pytest.raises(VideoError, match="frames"):
        load_clip(path, frames=100_000)
    with pytest.raises(VideoError, match="no decodable frames"):
        load_clip(path, start=50)


def test_load_clip_decodes_the_file_once_to_the_frames_of_two_reads(tmp_path, monkeypatch):
    """The size cap is worked out from the first frame in the same pass: one open of the file, and the frames of
    reading the first frame for its size and then the clip at the capped size."""
    import av

    path = write_video(moving_clip(frames=6, height=48, width=64), tmp_path / "clip.mp4", crf=4)
    two_reads = read_video(path, start=2, frames=3, size=capped_size(64, 48, 32))
    opened, open_file = [], av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or open_file(*a, **k))
    video = load_clip(path, start=2, frames=3, max_side=32)
    assert len(opened) == 1 and video.fps == two_reads.fps and np.array_equal(video.frames, two_reads.frames)


def test_a_comparison_runs_each_step_once(tmp_path, monkeypatch):
    """The clip is hashed once, DiffVC is built once (its identity names the folder; the same codec then runs),
    an anchor's matched QP is not encoded again after the bitrate search (nor warmed up: the search did that), and
    the view's frames come from memory, not from the folder just written."""
    from codec.baselines.ffmpeg import X265
    from codec.diffvc.codec import DiffVC
    from codec.video import Video

    video = moving_clip(frames=4)
    encodes, hashes, builds = [], [], []
    encode, content_hash, build = X265.encode, Video.content_hash, DiffVC.__init__
    monkeypatch.setattr(
        X265, "encode", lambda self, v, qp, **kw: encodes.append((v.num_frames, qp)) or encode(self, v, qp, **kw)
    )
    monkeypatch.setattr(Video, "content_hash", lambda self: hashes.append(1) or content_hash(self))
    monkeypatch.setattr(DiffVC, "__init__", lambda self, *a, **kw: builds.append(1) or build(self, *a, **kw))
    settings = CompareSettings(qp=40, anchors=("x265",), tdir_contrast=False, **FAST)
    comparison = ComparisonStore(tmp_path).run(video, settings)
    assert len(hashes) == 1 and len(builds) == 1
    clip_encodes = sorted(qp for frames, qp in encodes if frames > 1)  # DiffVC's HEVC I-frames are single frames
    assert clip_encodes == sorted(qp for qp, _ in comparison.run("x265").match["tried"])
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("the frames were read back from disk"))
    assert set(comparison.frames()) == {"original", "diffvc", "x265"}
