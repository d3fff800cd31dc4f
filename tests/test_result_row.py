"""The typed result row (`codec.eval.rows.ResultRow`): read by attribute, written as the JSON and CSV the untyped
rows were, read back equal, and refused when stored by another schema version (the cache then measures again)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
from conftest import moving_clip

import codec.eval.cache as cache
import codec.eval.engine as engine
from codec.errors import RowSchemaError
from codec.eval import EvalRequest, evaluate
from codec.eval.compare import CodecRun
from codec.eval.report import read_results_json, results_frame, write_results
from codec.eval.rows import ROW_SCHEMA_VERSION, ResultRow, csv_first_columns
from codec.metrics import metric_names
from codec.registry import get_codec

# the keys of the untyped rows, in their order: results.json and results.csv keep them
JSON_KEYS = [
    "codec",
    "spec",
    "canonical_spec",
    "qp",
    "frames",
    "width",
    "height",
    "bytes",
    "bpp",
    *metric_names(),
    "enc_s",
    "dec_s",
    "enc_fps",
    "dec_fps",
    "recon_match",
    "frame_types",
    "options",
    "params",
    "timings",
    "unet_evals",
    "real_over_estimated",
    "stats",
    "identity",
    "device",
    "per_frame",
    "created",
    "source",
    "start",
    "clip_hash",
]
CSV_SCALARS = [
    "canonical_spec",
    "recon_match",
    "frame_types",
    "unet_evals",
    "real_over_estimated",
    "identity",
    "device",
    "created",
    "source",
    "start",
    "clip_hash",
]


@pytest.fixture(scope="module")
def video():
    return moving_clip(frames=3, height=48, width=64, seed=1)


@pytest.fixture(scope="module")
def measured(video):
    return engine.measure(get_codec("x264"), video, 30, ["psnr", "ms_ssim"])


@pytest.fixture(scope="module")
def row(measured, video):
    return replace(measured.row, source="clip.mp4", start=5, clip_hash=video.content_hash())


def test_a_measured_row_is_read_by_attribute(measured, video):
    row = measured.row
    assert (row.codec, row.spec, row.qp, row.frames, row.width, row.height) == ("x264", "x264", 30, 3, 64, 48)
    assert row.bytes == len(measured.encoded.bitstream) > 0 and row.bpp == pytest.approx(8 * row.bytes / (3 * 48 * 64))
    assert row.frame_types == "IPP" and len(row.frame_bits) == 3 and sum(row.frame_bits) <= 8 * row.bytes
    assert set(row.metrics) == set(metric_names()) and row.metrics["lpips"] is None  # every metric; not measured
    assert row.metrics["psnr"] == pytest.approx(sum(row.per_frame["psnr"]) / 3) and set(row.per_frame) == {
        "psnr",
        "ms_ssim",
    }
    assert row.recon_match and row.enc_fps == pytest.approx(3 / row.enc_s) and row.options["preset"] == "medium"
    assert row.canonical_spec.startswith("x264:") and row.label is None and row.source == ""
    with pytest.raises(AttributeError):
        row.bpp = 0.0  # frozen


def test_json_keeps_the_untyped_rows_keys_and_round_trips(row):
    data = row.to_dict()
    assert list(data) == ["schema", *JSON_KEYS] and data["schema"] == ROW_SCHEMA_VERSION
    assert data["psnr"] == row.metrics["psnr"] and data["per_frame"]["bits"] == list(row.frame_bits)
    assert ResultRow.from_dict(json.loads(json.dumps(data))) == row
    compared = replace(row, label="x264", role="anchor", sha256="ab" * 32)
    assert list(compared.to_dict())[-3:] == ["label", "role", "sha256"]  # a comparison's, only where set
    assert ResultRow.from_dict(json.loads(json.dumps(compared.to_dict()))) == compared


def test_csv_keeps_the_untyped_rows_columns_and_values(row, tmp_path):
    paths = write_results([row], tmp_path)
    table = pd.read_csv(paths["csv"])
    options = [f"opt_{k}" for k in row.options]
    timings = [f"t_{k}" for k in row.timings]
    stats = ["size_hint_bytes", "removed_bytes"]  # the encoder's scalar stats
    assert list(row.stats) == stats
    assert list(table.columns) == [*csv_first_columns(), *CSV_SCALARS, *options, *timings, *stats]
    line = table.iloc[0]
    assert (line["spec"], line["qp"], line["bytes"], line["frame_types"]) == ("x264", 30, row.bytes, "IPP")
    assert line["bpp"] == pytest.approx(row.bpp, rel=1e-15) and line["psnr"] == pytest.approx(row.metrics["psnr"])
    assert pd.isna(line["lpips"]) and line["opt_preset"] == row.options["preset"] and line["start"] == 5
    assert results_frame([row]).iloc[0].to_dict().keys() == row.csv_record().keys()
    assert read_results_json(paths["json"]) == [row]


def test_a_row_of_another_schema_is_refused_with_its_reason(row):
    data = row.to_dict()
    with pytest.raises(RowSchemaError, match=f"schema 1; this version reads schema {ROW_SCHEMA_VERSION} only"):
        ResultRow.from_dict({k: v for k, v in data.items() if k != "schema"})  # an untyped row had no "schema"
    with pytest.raises(RowSchemaError, match="schema 3"):
        ResultRow.from_dict({**data, "schema": 3})
    with pytest.raises(RowSchemaError, match=r"unknown key\(s\) \['vmaf_hd'\]"):
        ResultRow.from_dict({**data, "vmaf_hd": 90.0})  # a metric no longer in the table: measured again
    with pytest.raises(RowSchemaError, match="bpp"):
        ResultRow.from_dict({k: v for k, v in data.items() if k != "bpp"})
    with pytest.raises(RowSchemaError, match="not a result row: a list"):
        ResultRow.from_dict([data])  # type: ignore[arg-type]


def test_an_old_schema_cache_entry_is_measured_again(video, tmp_path, monkeypatch):
    request = EvalRequest(video=video, specs=["x264"], qps=(30,), metrics=("psnr",), cache_dir=tmp_path)
    [first] = evaluate(request)
    [entry] = tmp_path.glob("*.json")
    old_row = {k: v for k, v in first.to_dict().items() if k != "schema"}
    old_row["bytes"] = 1  # what a misread would show
    entry.write_text(json.dumps(old_row))  # under the current key, an untyped row: refused
    with monkeypatch.context() as m:
        m.setattr(cache, "SCHEMA_VERSION", 1)
        old_key = engine._job_key(request, engine.Job("x264", 30, get_codec("x264")), video.content_hash())
    assert tmp_path / f"{old_key}.json" != entry  # rows of schema 1 sat under other keys
    (tmp_path / f"{old_key}.json").write_text(json.dumps(old_row))
    runs = []
    real_code = engine.code
    monkeypatch.setattr(engine, "code", lambda *a, **k: runs.append(1) or real_code(*a, **k))
    [again] = evaluate(request)
    assert runs == [1] and again.bytes == first.bytes
    assert ResultRow.from_dict(json.loads(entry.read_text())).bytes == first.bytes  # the entry is current again


def test_a_comparison_run_round_trips_through_its_json(row):
    run = CodecRun("x264", "x264", "anchor", row, "x264.264", "x264.mp4", {"qp": 30, "reached": True})
    data = json.loads(json.dumps(run.to_json()))
    assert list(data) == ["slug", "label", "role", "row", "bitstream_file", "decoded_file", "match"]
    assert data["row"]["schema"] == ROW_SCHEMA_VERSION and CodecRun.from_json(data) == run
