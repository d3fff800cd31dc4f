"""The blind-test store and its statistics."""

from __future__ import annotations

import random
import sqlite3

import pytest

from app.blind import (
    BlindPair,
    BlindStore,
    Candidate,
    binomial_test,
    draw_pair,
    matched_pairs,
    wilson_interval,
)


def pair(a="x265", b="DiffVC (TDIR on)") -> BlindPair:
    return BlindPair("key1", "hash1", 3, "x265", "diffvc", a, b, 0.05, 0.052)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)  # textbook value: 0.490 .. 0.943
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0 < high < 0.6


def test_binomial_test_matches_the_exact_two_sided_values():
    assert binomial_test(8, 10) == pytest.approx(0.109375)  # R: binom.test(8, 10)
    assert binomial_test(5, 10) == pytest.approx(1.0)
    assert binomial_test(10, 10) == pytest.approx(2 / 1024)
    assert binomial_test(0, 0) == 1.0
    assert binomial_test(3, 20) == pytest.approx(binomial_test(17, 20))


def test_votes_survive_a_new_store_and_are_stored_literally(tmp_path):
    path = tmp_path / "votes.sqlite"
    store = BlindStore(path)
    assert store.journal_mode() == "wal"
    nasty = "Robert'); DROP TABLE votes;--"
    store.record(pair(), "A", nasty, "s1", True, "a comment with 'quotes'")
    store.record(pair(), "B", "ann", "s1", False)
    store.record(pair("DiffVC (TDIR on)", "x265"), "tie", "", "s2", False)
    reopened = BlindStore(path)  # a restart
    votes = reopened.votes()
    assert [v["choice"] for v in votes] == ["A", "B", "tie"]
    assert votes[0]["rater"] == nasty and votes[0]["winner"] == "x265" and votes[2]["rater"] == "anonymous"
    (stats,) = reopened.stats()
    assert (stats.first, stats.second) == ("DiffVC (TDIR on)", "x265")
    assert (stats.first_wins, stats.second_wins, stats.ties) == (1, 1, 1)
    assert stats.as_row()["share for first"] == "50%"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM votes").fetchone()[0] == 3


def test_bad_choice_is_refused(tmp_path):
    with pytest.raises(ValueError):
        BlindStore(tmp_path / "v.sqlite").record(pair(), "C", "x", "s", False)


def test_csv_export_has_every_vote(tmp_path):
    store = BlindStore(tmp_path / "v.sqlite")
    for choice in ("A", "B", "A"):
        store.record(pair(), choice, "r", "s", False)
    lines = store.export_csv(tmp_path / "out" / "votes.csv").read_text().splitlines()
    assert lines[0].startswith("id,created,rater") and len(lines) == 4


def test_pairs_are_matched_in_rate_and_drawn_in_both_orders():
    candidates = [
        Candidate("k", "h", "diffvc", "DiffVC", 0.100, 8),
        Candidate("k", "h", "x265", "x265", 0.110, 8),
        Candidate("k", "h", "x264", "x264", 0.300, 8),
        Candidate("k2", "h2", "x265", "x265", 0.1, 8),
    ]
    assert [(a.slug, b.slug) for a, b in matched_pairs(candidates)] == [("diffvc", "x265")]
    rng = random.Random(0)
    drawn = [draw_pair(candidates, rng) for _ in range(40)]
    assert {p.slug_a for p in drawn} == {"diffvc", "x265"}  # order is random
    assert all(0 <= p.frame < 8 for p in drawn)
    assert draw_pair(candidates[2:], rng) is None


def test_pairs_put_diffvc_on_one_side_when_a_comparison_has_it():
    candidates = [
        Candidate("k", "h", "diffvc", "DiffVC", 0.100, 8, under_test=True),
        Candidate("k", "h", "x265", "x265", 0.105, 8),
        Candidate("k", "h", "condlc", "condlc", 0.100, 8),
    ]
    assert len(matched_pairs(candidates)) == 3  # condlc against x265 matches in rate too
    rng = random.Random(1)
    drawn = {tuple(sorted((p.slug_a, p.slug_b))) for p in (draw_pair(candidates, rng) for _ in range(60))}
    assert drawn == {("diffvc", "x265"), ("condlc", "diffvc")}
    anchors_only = [c for c in candidates if not c.under_test]
    assert {draw_pair(anchors_only, rng).slug_a for _ in range(20)} == {"x265", "condlc"}  # without DiffVC: any pair
