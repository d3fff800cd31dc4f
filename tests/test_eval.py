"""The evaluation engine: rows from real runs, the on-disk cache, BD-rate and the written report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pytest
from conftest import moving_clip

import codec.eval.engine as engine
from codec.errors import SpecError
from codec.eval import EvalRequest, evaluate
from codec.eval.report import (
    BD_TABLE_COLUMNS,
    bd_rate,
    bd_rate_table,
    csv_first_columns,
    rate_ratio_at_equal_quality,
    write_results,
)

QPS = (22, 28, 34, 40)


@dataclass(frozen=True)
class Point:
    """A point of an RD curve for the BD-rate functions (a `report.RatePoint`), with a spec for the tables."""

    bpp: float
    metrics: dict = field(default_factory=dict)
    spec: str = ""


def point(bpp: float, spec: str = "", **metrics: float | None) -> Point:
    return Point(bpp, metrics, spec)


@pytest.fixture(scope="module")
def video():
    return moving_clip(frames=6, height=64, width=96, seed=3)


def anchors_request(video, cache_dir=None) -> EvalRequest:
    """x265 and x264 over QPS with the cheap metrics: the requests `rows` and the two-lane test run."""
    return EvalRequest(
        video=video,
        specs=["x265", "x264:preset=fast"],
        qps=QPS,
        source="synthetic",
        metrics=("psnr", "psnr_y", "ms_ssim"),
        cache_dir=cache_dir,
    )


@pytest.fixture(scope="module")
def rows(video, tmp_path_factory):
    return evaluate(anchors_request(video, tmp_path_factory.mktemp("cache")))


def test_rows_are_real_measurements(rows, video):
    assert [(r.spec, r.qp) for r in rows] == [(s, q) for s in ("x265", "x264:preset=fast") for q in QPS]
    for r in rows:
        assert r.bytes > 0 and r.bpp == pytest.approx(8 * r.bytes / (6 * 64 * 96))
        assert r.recon_match and r.frames == 6 and (r.width, r.height) == (96, 64)
        assert r.enc_s > 0 and r.dec_s > 0 and r.enc_fps == pytest.approx(6 / r.enc_s)
        assert sum(r.frame_bits) <= 8 * r.bytes and len(r.per_frame["psnr"]) == 6
        assert r.metrics["lpips"] is None and r.metrics["dists"] is None  # not asked for
        assert r.options["intra_period"] == 32 and r.params
    for spec in ("x265", "x264:preset=fast"):
        curve = [r for r in rows if r.spec == spec]
        assert all(a.bpp > b.bpp for a, b in zip(curve, curve[1:]))
        assert all(a.metrics["psnr"] > b.metrics["psnr"] for a, b in zip(curve, curve[1:]))


def test_cache_makes_a_rerun_free_and_force_recomputes(video, tmp_path, monkeypatch):
    request = EvalRequest(video=video, specs=["x264"], qps=(30,), metrics=("psnr",), cache_dir=tmp_path)
    first = evaluate(request)

    def no_run(*args, **kwargs):
        raise AssertionError("a cached job was run again")

    monkeypatch.setattr(engine, "code", no_run)
    assert evaluate(request) == first
    with pytest.raises(AssertionError, match="run again"):
        evaluate(EvalRequest(**{**request.__dict__, "force": True}))
    with pytest.raises(AssertionError, match="run again"):  # another QP, another key
        evaluate(EvalRequest(**{**request.__dict__, "qps": (31,)}))
    with pytest.raises(AssertionError, match="run again"):  # another option, another key
        evaluate(EvalRequest(**{**request.__dict__, "specs": ["x264:preset=fast"]}))
    with pytest.raises(AssertionError, match="run again"):  # another clip, another key
        evaluate(EvalRequest(**{**request.__dict__, "video": moving_clip(frames=6, height=64, width=96, seed=4)}))


def test_two_lanes_give_the_rows_of_one_in_the_same_order(video, rows):
    """LocalRunner(2): each job's metrics beside the next job's coding, the rows those of the jobs in turn."""
    seen = []
    two = evaluate(anchors_request(video), lambda done, total, label: seen.append(done), engine.LocalRunner(lanes=2))
    assert seen == list(range(1, len(rows) + 1))
    assert [(r.spec, r.qp, r.bytes, r.per_frame) for r in two] == [(r.spec, r.qp, r.bytes, r.per_frame) for r in rows]


def test_a_row_cached_under_another_spelling_answers_to_this_requests_spec(video, tmp_path, monkeypatch):
    """The cache key is the canonical spec: "x264" and "x264:preset=medium" (its default) share a row, and each
    request gets it under its own spec."""
    first = evaluate(
        EvalRequest(video=video, specs=["x264:preset=medium"], qps=(30,), metrics=("psnr",), cache_dir=tmp_path)
    )
    monkeypatch.setattr(engine, "code", lambda *a, **k: pytest.fail("the cached row was not reused"))
    [again] = evaluate(EvalRequest(video=video, specs=["x264"], qps=(30,), metrics=("psnr",), cache_dir=tmp_path))
    assert again.spec == "x264" and first[0].spec == "x264:preset=medium" and again.bytes == first[0].bytes


def test_a_damaged_cache_entry_is_recomputed(video, tmp_path):
    request = EvalRequest(video=video, specs=["x264"], qps=(30,), metrics=("psnr",), cache_dir=tmp_path)
    first = evaluate(request)
    for path in tmp_path.glob("*.json"):
        path.write_text("{not json")
    assert evaluate(request)[0].bytes == first[0].bytes


def test_bad_spec_fails_before_any_job(video):
    with pytest.raises(SpecError, match="unknown codec"):
        evaluate(EvalRequest(video=video, specs=["x264", "h266"], qps=(30,)))


def test_bd_rate_sign_and_identity(rows):
    x265 = [r for r in rows if r.spec == "x265"]
    same, note = bd_rate(x265, x265, "psnr")
    assert same == pytest.approx(0.0, abs=1e-6)
    # the same curve shifted to 20 % more bits costs about +20 %
    costly = [replace(r, bpp=r.bpp * 1.2) for r in x265]
    value, _ = bd_rate(x265, costly, "psnr")
    assert value == pytest.approx(20.0, abs=0.5)
    # lower-is-better metrics are negated: a curve with lower LPIPS at every rate saves bits
    a = [point(b, lpips=0.5 - b) for b in (0.1, 0.2, 0.3, 0.4)]
    better = [point(b, lpips=0.45 - b) for b in (0.1, 0.2, 0.3, 0.4)]
    assert bd_rate(a, better, "lpips")[0] < 0
    assert bd_rate(a[:3], better, "lpips") == (None, "needs 4 points per curve")


def test_bd_rate_leaves_out_points_no_encoder_would_choose():
    """A point that another of its curve beats (at least its quality for no more bits: a deep metric scoring a
    codec's lowest rate better than the one above) is left out, said in the note, and the BD-rate is that of the
    remaining operating points."""
    a = [point(b, dists=0.5 - b) for b in (0.1, 0.2, 0.3, 0.4, 0.5)]
    test = [point(b, dists=0.45 - b) for b in (0.1, 0.2, 0.3, 0.4, 0.5)]
    dominated = [point(0.15, dists=0.5), *test]  # more bits than 0.1 for worse DISTS
    value, note = bd_rate(a, dominated, "dists")
    assert value == pytest.approx(bd_rate(a, test, "dists")[0]) and value < 0
    assert "1 test point(s) off its monotone curve left out" in note


def test_written_results(rows, tmp_path):
    paths = write_results(rows, tmp_path)
    table = pd.read_csv(paths["csv"])
    assert list(table.columns[: len(csv_first_columns())]) == csv_first_columns()
    assert {"opt_preset", "opt_intra_period", "opt_rc"} <= set(table.columns)
    assert len(json.loads(paths["json"].read_text())) == len(rows)
    bd = pd.read_csv(paths["bdrate"])
    assert set(bd["metric"]) == {"psnr", "psnr_y", "ms_ssim"} and set(bd["test"]) == {"x264:preset=fast"}
    assert np.isfinite(bd["bd_rate_pct"]).all()
    assert list(bd.columns) == BD_TABLE_COLUMNS
    # x264 against x265 on the same QPs: curves that overlap, so bits at equal quality are read off x265's curve
    assert np.isfinite(bd["bits_vs_anchor"]).all() and bd["bits_vs_anchor"].gt(0).all()
    assert bd["bits_vs_anchor_note"].str.contains("within the anchor's quality range").all()
    html = paths["html"].read_text()
    assert "plotly" in html and "BD-rate against x265" in html
    assert "bits_vs_anchor" in html and "geometric mean" in html
    assert paths["png"].stat().st_size > 10_000


ANCHOR = [point(b, psnr=q, lpips=0.5 - q / 100) for b, q in ((0.05, 28.0), (0.1, 30.0), (0.2, 32.0), (0.4, 34.0))]


def test_bits_at_equal_quality_of_a_scaled_curve():
    """The anchor's curve at 3x the bits costs exactly 3x, at the anchor's points and between them."""
    tripled = [replace(r, bpp=3 * r.bpp) for r in ANCHOR]
    value, note = rate_ratio_at_equal_quality(ANCHOR, tripled, "psnr")
    assert value == pytest.approx(3.0, rel=1e-12) and note == "all 4 test points within the anchor's quality range"
    assert rate_ratio_at_equal_quality(ANCHOR, ANCHOR, "psnr")[0] == pytest.approx(1.0, rel=1e-12)
    # 31 dB lies halfway between (0.1, 30) and (0.2, 32): log bpp is interpolated, so the anchor's bpp there is
    # sqrt(0.1 * 0.2); 0.3 * sqrt(2) bpp is 3x that, and 0.1 bpp at 33 dB is 0.1 / sqrt(0.08) of the anchor's
    between = [point(0.3 * np.sqrt(2), psnr=31.0), point(0.1, psnr=33.0)]
    value, _ = rate_ratio_at_equal_quality(ANCHOR, between, "psnr")
    assert value == pytest.approx(np.sqrt(3 * 0.1 / np.sqrt(0.08)), rel=1e-12)  # geometric mean of the two ratios


def test_bits_at_equal_quality_lower_is_better():
    """LPIPS falls as bits rise: negated, as in BD-rate. Unnegated, the anchor would have a one-point 'curve'."""
    halved = [replace(r, bpp=r.bpp / 2) for r in ANCHOR]
    value, note = rate_ratio_at_equal_quality(ANCHOR, halved, "lpips")
    assert value == pytest.approx(0.5, rel=1e-12) and note.startswith("all 4")
    # lower LPIPS than the anchor's best: better than its best, even at more bits
    better = [point(1.0, lpips=0.1)]
    assert rate_ratio_at_equal_quality(ANCHOR, better, "lpips") == (
        None,
        "no test point within the anchor's quality range (0.16 to 0.22): all 1 are better than its best; "
        "not extrapolated",
    )


def test_bits_at_equal_quality_without_overlap_is_none_with_a_reason():
    above = [point(b, psnr=q) for b, q in ((0.5, 36.0), (1.0, 38.0))]
    value, note = rate_ratio_at_equal_quality(ANCHOR, above, "psnr")
    assert value is None and "all 2 are better than its best" in note and "not extrapolated" in note
    below = [point(b, psnr=q) for b, q in ((0.2, 24.0), (0.4, 26.0))]
    value, note = rate_ratio_at_equal_quality(ANCHOR, below, "psnr")
    assert value is None and "all 2 are worse than its worst" in note and "28 to 34" in note
    assert rate_ratio_at_equal_quality(ANCHOR[:1], above, "psnr") == (None, "needs 2 anchor points on its curve")
    assert rate_ratio_at_equal_quality(ANCHOR, [point(0.1, psnr=None)], "psnr") == (None, "no test point has psnr")


def test_bits_at_equal_quality_partial_overlap_uses_the_points_in_range():
    test = [point(0.2, psnr=26.0), point(0.6, psnr=32.0), point(2.0, psnr=36.0)]
    value, note = rate_ratio_at_equal_quality(ANCHOR, test, "psnr")
    assert value == pytest.approx(3.0, rel=1e-12)  # only the 32 dB point: 0.6 against the anchor's 0.2
    assert note == (
        "1 of 3 test points within the anchor's quality range (28 to 34); left out: 1 better than its "
        "best, 1 worse than its worst"
    )


def test_bits_at_equal_quality_ignores_anchor_points_off_its_monotone_curve():
    """An anchor point that spends more bits than another for less quality is not on its curve."""
    wasteful = [*ANCHOR, point(0.3, psnr=29.0)]
    tripled = [replace(r, bpp=3 * r.bpp) for r in ANCHOR]
    value, note = rate_ratio_at_equal_quality(wasteful, tripled, "psnr")
    assert value == pytest.approx(3.0, rel=1e-12) and note.endswith("1 anchor point(s) off its monotone curve ignored")


def test_bd_table_has_bits_at_equal_quality_where_bd_rate_has_none():
    """Three test points are too few for BD-rate, not for bits at equal quality."""
    rows = [replace(r, spec="anchor") for r in ANCHOR]
    rows += [replace(r, bpp=6 * r.bpp, spec="neural") for r in ANCHOR[1:]]
    table = bd_rate_table(rows, ["psnr", "lpips"])
    assert list(table.columns) == BD_TABLE_COLUMNS and list(table["metric"]) == ["psnr", "lpips"]
    assert table["bd_rate_pct"].isna().all() and (table["note"] == "needs 4 points per curve").all()
    assert table["bits_vs_anchor"].to_numpy() == pytest.approx([6.0, 6.0], rel=1e-12)
    assert table["bits_vs_anchor_note"].str.startswith("all 3 test points").all()


def test_bd_table_needs_two_codecs(rows):
    assert len(bd_rate_table([r for r in rows if r.spec == "x265"])) == 0


def test_each_spec_can_have_its_own_qps(video, tmp_path):
    """Codecs' QP scales differ (x265 0..51, DiffVC 0..63): `qps_by_spec` overrides the shared list per spec."""
    request = EvalRequest(
        video=video,
        specs=["x265", "x264"],
        qps=(30,),
        qps_by_spec={"x264": [26, 38]},
        metrics=("psnr",),
        cache_dir=tmp_path,
    )
    assert [(r.spec, r.qp) for r in evaluate(request)] == [("x265", 30), ("x264", 26), ("x264", 38)]


def test_the_cli_reads_per_spec_qps():
    from codec.__main__ import _qps_by_spec
    from codec.errors import CodecError

    assert _qps_by_spec(["diffvc:tdir=off=40,8,24"], ["x265", "diffvc:tdir=off"]) == {"diffvc:tdir=off": [8, 24, 40]}
    for bad in (["x264=30"], ["x265=a,b"], ["x265"]):
        with pytest.raises(CodecError):
            _qps_by_spec(bad, ["x265"])
