"""The registry is the one place a codec is described: a codec added in one file (tests/plugins/zq_codec.py, named
in $DIFFVC_STUDIO_CODECS) shows up in the CLI, an RD sweep, a comparison, the app's choices and the fuzzer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import moving_clip

from codec import registry
from codec.__main__ import main
from codec.eval.compare import CompareSettings, ComparisonStore, SweepPlan, run_sweep
from codec.video import write_video

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def zq(monkeypatch):
    """The `zq` codec registered the way a user adds one (also in spawned worker processes)."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv(registry.PLUGINS_ENV, "zq_codec")
    registry.list_codecs()
    yield registry.get_entry("zq")
    registry._REGISTRY.pop("zq", None)
    sys.modules.pop("zq_codec", None)


def test_every_codec_declares_what_the_project_needs():
    for entry in registry.list_codecs():
        assert entry.kind in registry.KINDS and entry.suffix.startswith(".") and entry.qp_range[0] < entry.qp_range[1]
    assert registry.comparison_anchors() == ("x265", "x264", "av1", "condlc")
    assert [e.name for e in registry.list_codecs() if e.takes_pack] == ["diffvc", "condlc"]


def test_a_codec_in_one_file_is_everywhere(zq, tmp_path, capsys):
    from app.handlers import anchor_choices, sweep_codecs
    from codec.fuzz import fuzzed_codecs

    assert (zq.kind, zq.suffix, zq.bitstream_syntax, zq.takes_pack) == ("anchor", ".zq", "opaque", False)
    assert "zq" in anchor_choices() and sweep_codecs().index("zq") < sweep_codecs().index("diffvc")
    assert "zq" in fuzzed_codecs()

    # the CLI lists it and evaluates it beside x264, with a BD-rate
    assert main(["info"]) == 0 and "zq" in capsys.readouterr().out
    clip = write_video(moving_clip(frames=3, height=48, width=64), tmp_path / "clip.mp4", crf=4)
    assert (
        main(
            [
                "eval",
                str(clip),
                "--codecs",
                "x264",
                "zq",
                "--qps",
                "22",
                "30",
                "38",
                "46",
                "--qps-for",
                "zq=8,24,40,56",
                "--metrics",
                "psnr",
                "--out",
                str(tmp_path / "eval"),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert "zq" in (tmp_path / "eval" / "results.csv").read_text()

    # an RD sweep as the app runs it
    video = moving_clip(frames=3, height=48, width=64)
    rows, paths = run_sweep(
        video,
        [SweepPlan("x264", {}, (22, 30, 38, 46)), SweepPlan("zq", {}, (8, 24, 40, 56))],
        tmp_path / "sweep",
        tmp_path / "cache",
        metrics=("psnr",),
    )
    assert sorted({r.spec for r in rows}) == ["x264", "zq"] and all(r.recon_match for r in rows)

    # a comparison's anchor, its bitstream written with its own suffix
    settings = CompareSettings(pack="no-such-pack", qp=40, anchors=("zq",), metrics=("psnr",))
    comparison = ComparisonStore(tmp_path / "compare").run(video, settings)
    assert [r.bitstream_file for r in comparison.runs] == ["zq.zq"]


def test_the_fuzzer_fuzzes_a_codec_it_was_never_told_about(zq):
    from codec.fuzz import FuzzConfig, run_fuzz

    report = run_fuzz(FuzzConfig(mutations=20, seed=3, codecs=("zq",), workers=1, corpus="quick"))
    summary = report.summary()
    assert not report.findings, report.findings
    assert summary["totals"]["cases"] == 20 and set(summary["by_codec"]) == {"zq"}
    assert summary["by_codec"]["zq"]["outcomes"].get("error", 0) > 0
