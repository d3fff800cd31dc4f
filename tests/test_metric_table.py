"""The metric table (`codec.metrics.METRIC_TABLE`) is the one place a metric is described: a metric added there
shows up in the measured rows, the results table, BD-rates (with its direction), plots, the app's views and menus,
and the size checks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import moving_clip

from app.compare_tab import metric_choices
from app.views import bd_rate_view, frame_kinds, metrics_table, per_frame_figure
from codec.eval import EvalRequest, evaluate
from codec.eval.compare import CodecRun
from codec.eval.report import bd_rate, bd_rate_table, rd_figure, write_results
from codec.metrics import METRIC_TABLE, Metric, compute_metrics, get_metric, metric_names, metrics_for_size


def mean_absolute_error(reference: np.ndarray, distorted: np.ndarray, device: str) -> np.ndarray:
    diff = np.abs(reference.astype(np.float64) - distorted.astype(np.float64))
    return diff.reshape(diff.shape[0], -1).mean(axis=1)


MAE = Metric("mae", "MAE", False, mean_absolute_error, unit="grey levels", min_side=16)


@pytest.fixture
def with_mae(monkeypatch):
    monkeypatch.setitem(METRIC_TABLE, "mae", MAE)


def test_the_table_describes_every_metric():
    assert metric_names() == ("psnr", "psnr_y", "ms_ssim", "lpips", "dists", "vmaf", "vmaf_neg", "tlp")
    assert get_metric("psnr").axis_label == "PSNR-RGB (dB)" and get_metric("dists").axis_label == (
        "DISTS (lower is better)"
    )
    assert [get_metric(m).sign for m in ("psnr", "lpips")] == [1.0, -1.0]
    assert metrics_for_size(["psnr", "lpips", "ms_ssim"], 40, 24) == (
        ("psnr", "ms_ssim"),
        ["lpips left out: it needs frames of at least 32 pixels a side, these are 40x24"],
    )


def test_a_metric_added_to_the_table_shows_up_everywhere(with_mae, tmp_path):
    video = moving_clip(frames=4, height=64, width=96, seed=3)
    assert "mae" in metric_names() and ("MAE", "mae") in metric_choices()
    assert compute_metrics(video, video, ["mae"])["mae"].tolist() == [0.0] * 4
    assert metrics_for_size(["mae"], 15, 64)[0] == ()

    request = EvalRequest(
        video=video, specs=["x265", "x264"], qps=(22, 28, 34, 40), metrics=("psnr", "mae"), cache_dir=tmp_path / "cache"
    )
    rows = evaluate(request)
    assert all(r.metrics["mae"] > 0 and len(r.per_frame["mae"]) == 4 for r in rows)
    assert all(r.to_dict()["mae"] == r.metrics["mae"] for r in rows)  # a column of its own in JSON
    x265, x264 = ([r for r in rows if r.spec == s] for s in ("x265", "x264"))
    assert all(a.metrics["mae"] < b.metrics["mae"] for a, b in zip(x265, x265[1:]))  # stronger QP, larger error

    # BD-rate reads the direction from the table: MAE and PSNR agree on which codec needs fewer bits
    mae_bd, psnr_bd = bd_rate(x265, x264, "mae")[0], bd_rate(x265, x264, "psnr")[0]
    assert mae_bd is not None and np.sign(mae_bd) == np.sign(psnr_bd)
    table = bd_rate_table(rows)
    assert set(table["metric"]) >= {"psnr", "mae"}
    assert "MAE (grey levels)" in set(bd_rate_view(table)["metric"])

    paths = write_results(rows, tmp_path / "out")
    assert "mae" in (tmp_path / "out" / "results.csv").read_text().splitlines()[0] and paths
    assert rd_figure(rows, "mae").layout.yaxis.title.text == "MAE (grey levels)"
    runs = [
        CodecRun(slug=f"run{i}", label=r.spec, role="anchor", row=r, bitstream_file="", decoded_file="")
        for i, r in enumerate(rows[:2])
    ]
    assert "MAE" in metrics_table(runs, "25").columns
    assert per_frame_figure(runs, "mae").layout.annotations[0].text == "MAE (grey levels)"


def test_the_per_frame_chart_names_skipped_p_frames() -> None:
    assert frame_kinds("IPPP", [8000, 400, 0, 16]) == ["I", "P", "P, skipped", "P"]
