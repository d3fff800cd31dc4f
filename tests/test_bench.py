"""The dataset benchmark (`python -m codec bench`): raw YUV sequences, classes, the tables papers print, resuming."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLE_CLIP, moving_clip
from test_cli import _one_clear_line, run_cli

from codec.errors import CodecError, VideoError
from codec.eval.bench import BenchConditions, find_sequences, run_bench, write_bench
from codec.eval.report import bd_rate
from codec.eval.rows import ResultRow
from codec.video import RawFormat, Video, read_video, rgb_to_av_frame, write_video

SPECS = ["x265", "condlc"]
QPS_BY_SPEC = {"x265": [22, 30, 37, 44], "condlc": [8, 24, 40, 56]}
CONDITIONS = BenchConditions(frames=4, intra_period=2, size=(96, 64))


def write_raw_yuv(video: Video, path: Path) -> Path:
    """8-bit 4:2:0 planes, frame after frame, no header: how JCT-VC and UVG ship their sequences."""
    with path.open("wb") as f:
        for rgb in video.frames:
            f.write(rgb_to_av_frame(rgb, "yuv420p").to_ndarray().tobytes())
    return path


@pytest.mark.parametrize(
    "name,expected",
    [
        ("BasketballPass_416x240_50.yuv", RawFormat(416, 240, Fraction(50), "yuv420p")),
        ("Beauty_1920x1080_120fps_420_8bit_YUV.yuv", RawFormat(1920, 1080, Fraction(120), "yuv420p")),
        ("Tango_4096x2160_60fps_10bit_420.yuv", RawFormat(4096, 2160, Fraction(60), "yuv420p10le")),
        ("Foreman_352x288_29.97.yuv", RawFormat(352, 288, Fraction(30000, 1001), "yuv420p")),
        ("Gradient_64x48_444.yuv", RawFormat(64, 48, Fraction(25), "yuv444p")),
    ],
)
def test_raw_yuv_geometry_comes_from_the_name_as_test_sets_write_it(name, expected):
    assert RawFormat.from_name(Path(name)) == expected


def test_a_raw_yuv_file_reads_as_the_clip_it_was_written_from(tmp_path):
    clip = moving_clip(frames=3, height=48, width=64)
    path = write_raw_yuv(clip, tmp_path / "moving_64x48_30.yuv")
    video = read_video(path)
    assert video.frames.shape == clip.frames.shape and video.fps == 30
    through_420 = [rgb_to_av_frame(rgb, "yuv420p").to_ndarray(format="rgb24") for rgb in clip.frames]
    assert np.array_equal(video.frames, np.stack(through_420))  # the planes as written, converted as any YUV file
    assert read_video(path, start=1, frames=1).frames.shape[0] == 1


def test_a_raw_yuv_file_without_its_size_in_the_name_is_refused_clearly(tmp_path):
    path = tmp_path / "sequence.yuv"
    path.write_bytes(bytes(64 * 48 * 3 // 2))
    with pytest.raises(VideoError, match="must give its size"):
        read_video(path)


def test_sequences_are_found_with_their_classes_and_names_must_be_unique(tmp_path):
    (tmp_path / "ClassC").mkdir()
    write_video(moving_clip(frames=2), tmp_path / "ClassC" / "a.mp4")
    write_video(moving_clip(frames=2), tmp_path / "b.y4m")
    (tmp_path / "notes.txt").write_text("not a video")
    found = find_sequences(tmp_path)
    assert [(s.name, s.cls) for s in found] == [("a", "ClassC"), ("b", "-")]
    write_video(moving_clip(frames=2), tmp_path / "ClassC" / "b.mp4")
    with pytest.raises(CodecError, match="found twice: b"):
        find_sequences(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodecError, match="no video files"):
        find_sequences(tmp_path / "empty")


def test_conditions_set_every_codecs_intra_period_unless_the_spec_does():
    assert CONDITIONS.spec("x265") == "x265:intra_period=2"
    assert CONDITIONS.spec("condlc:intra_period=8") == "condlc:intra_period=8"


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory) -> Path:
    """Three sequences in two classes: the example clip (mp4), a made-up raw YUV and a made-up y4m."""
    folder = tmp_path_factory.mktemp("bench")
    (folder / "ClassA").mkdir()
    (folder / "ClassB").mkdir()
    (folder / "ClassA" / "bigbuckbunny.mp4").symlink_to(EXAMPLE_CLIP)
    write_raw_yuv(moving_clip(frames=4, height=64, width=64, seed=1), folder / "ClassB" / "pan_64x64_25.yuv")
    write_video(moving_clip(frames=4, height=64, width=64, seed=2), folder / "ClassB" / "square.y4m")
    return folder


def test_bench_writes_the_paper_table_and_resumes_from_the_cache(bench_folder, tmp_path):
    sequences = find_sequences(bench_folder)
    result = run_bench(sequences, SPECS, [], QPS_BY_SPEC, CONDITIONS, ["psnr"], tmp_path / "cache")
    assert list(result.rows) == ["bigbuckbunny", "pan_64x64_25", "square"]
    for rows in result.rows.values():
        assert {r.spec for r in rows} == set(SPECS)  # the specs as given, not the conditioned ones
        assert {r.options["intra_period"] for r in rows} == {2} and {r.frames for r in rows} == {4}
    per = result.per_sequence.set_index(["sequence", "metric"])
    for name, rows in result.rows.items():
        anchor = [r for r in rows if r.spec == "x265"]
        test = [r for r in rows if r.spec == "condlc"]
        expected = bd_rate(anchor, test, "psnr")[0]
        assert per.loc[(name, "psnr"), "bd_rate_pct"] == pytest.approx(expected)
    summary = result.summary.set_index("class")
    assert summary.loc["ClassB", "bd_rate_pct"] == pytest.approx(
        per.loc[["pan_64x64_25", "square"]]["bd_rate_pct"].mean()
    )
    assert summary.loc["all", "of"] == 3

    paths = write_bench(result, tmp_path / "out", "x265", CONDITIONS)
    report = paths["report"].read_text()
    for line in ("| ClassA | bigbuckbunny |", "| ClassB | average of ClassB |", "| all | **average** |"):
        assert line in report
    assert (tmp_path / "out" / "square" / "rd.png").stat().st_size > 0
    assert len(pd.read_csv(paths["per_sequence"])) == 3

    again = run_bench(sequences, SPECS, [], QPS_BY_SPEC, CONDITIONS, ["psnr"], tmp_path / "cache")
    created = [[r.created for r in rows] for rows in result.rows.values()]
    assert [[r.created for r in rows] for rows in again.rows.values()] == created  # every row from the cache


def test_the_bench_command_prints_the_table_and_refuses_a_folder_without_videos(bench_folder, tmp_path):
    qps_for = [f"--qps-for={s}={','.join(map(str, q))}" for s, q in QPS_BY_SPEC.items()]
    args = ["--frames", "4", "--intra-period", "2", "--size", "96x64", "--metrics", "psnr"]
    out = tmp_path / "out"
    result = run_cli("bench", bench_folder, "--codecs", *SPECS, "--qps", "30", *qps_for, *args, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "| all | **average** |" in result.stdout
    assert json.loads((out / "pan_64x64_25" / "results.json").read_text())[0]["frames"] == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_clear_line(run_cli("bench", empty, "--codecs", *SPECS, "--qps", "30"), "no video files")


# --- on a cluster -------------------------------------------------------------------------------------------------

TIMING_KEYS = {"enc_s", "dec_s", "enc_fps", "dec_fps", "created", "timings"}


def comparable(row: ResultRow) -> dict:
    """A row's JSON without what differs between any two runs (wall times, creation time)."""
    return {k: v for k, v in row.to_dict().items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    from codec.eval.cluster import worker_environment

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=100 * 1024**2,
        runtime_env={"env_vars": worker_environment()},
    )
    yield ray
    ray.shutdown()


def test_a_sweep_on_a_local_ray_cluster_gives_the_local_rows(local_ray, tmp_path):
    """Two Ray workers run a small sweep; the rows equal the local run's, and the cache is shared: a local run
    afterwards finds every row."""
    from codec.eval import EvalRequest, evaluate
    from codec.eval.cluster import RayRunner

    request = EvalRequest(
        video=moving_clip(frames=3, height=64, width=96, seed=3),  # (x265 is not deterministic at exactly 64x64)
        specs=["x265", "condlc"],
        qps=[],
        qps_by_spec={"x265": [27, 37], "condlc": [16, 48]},
        metrics=["psnr", "ms_ssim"],
        warmup=False,
    )
    local = evaluate(request)
    cached = EvalRequest(**{**request.__dict__, "cache_dir": tmp_path / "cache"})
    on_ray = evaluate(cached, runner=RayRunner())
    assert [comparable(r) for r in on_ray] == [comparable(r) for r in local]
    assert evaluate(cached) == on_ray  # a later local run reads the cluster's rows from the same cache


def test_an_unreadable_sequence_is_skipped_and_named_the_rest_is_measured(bench_folder, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "square.y4m").symlink_to(bench_folder / "ClassB" / "square.y4m")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a movie")
    (folder / "nameless.yuv").write_bytes(bytes(96 * 64 * 3 // 2 * 2))  # a raw file whose name gives no size
    result = run_bench(find_sequences(folder), SPECS, [], QPS_BY_SPEC, CONDITIONS, ["ms_ssim"], tmp_path / "cache")
    assert list(result.rows) == ["square"] and set(result.skipped) == {"broken", "nameless"}
    assert "must give its size" in result.skipped["nameless"]
    report = write_bench(result, tmp_path / "out", "x265", CONDITIONS)["report"].read_text()
    assert "Skipped: broken" in report and "Skipped: nameless" in report and "| - | square |" in report
