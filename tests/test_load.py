"""Load: concurrent gradio_client sessions against one `python app.py` (tools/load.py, `make load` for the long run).

Every request finishes, no result crosses into another session, the decoder's output equals the encoder's
reconstruction, two sessions running the same clip and settings at once get the same bitstream bytes (and so does
this process through the library), and no temporary work folder is left."""

from __future__ import annotations

import pytest

from tools.load import LoadConfig, run_load


def test_four_sessions_at_once(tmp_path):
    config = LoadConfig(sessions=4, rounds=1, frames=2, jobs=2, warm_up=False)
    report = run_load(config, tmp_path / "load", log=lambda *_: None)
    assert report.problems(config.rss_tolerance_mb) == []
    assert report.requests == report.finished == 4 and report.library_match is True


@pytest.mark.slow
def test_rounds_of_sessions_return_memory_to_baseline(tmp_path):
    config = LoadConfig(sessions=4, rounds=6, frames=3, jobs=2)
    report = run_load(config, tmp_path / "load", log=print)
    assert report.problems(config.rss_tolerance_mb) == [], report.to_json()
    rss = report.rss_after_round_mb
    assert rss[-1] <= max(rss[:-1]) + 50  # a plateau (measured: +230 MB over one job's baseline, then flat)
