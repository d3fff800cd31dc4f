"""Blind A/B spot checks: drawing anonymous pairs, the SQLite store of votes, and their statistics.

No Gradio here. A pair is two decoded versions of the same frames from one comparison, at matched bitrate (rates
within `PAIR_TOLERANCE` of each other), in random order; which codec is A and which B stays on the server until
the vote is cast. Votes go to SQLite in WAL mode through parameterized queries only, so they survive a restart and
concurrent sessions.

Statistics per codec pair (ties excluded from the test, reported beside it): the share of decisive votes that
prefer the first codec, its Wilson score 95 % interval, and an exact two-sided binomial test against 50 %.
"""

from __future__ import annotations

import csv
import math
import random
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PAIR_TOLERANCE = 0.25  # pairs are "at matched bitrate" when max(bpp) / min(bpp) <= 1.25
CHOICES = ("A", "B", "tie")
Z_95 = 1.959963984540054
MAX_COMMENT = 2000
MAX_RATER = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    rater TEXT NOT NULL,
    session TEXT NOT NULL,
    comparison TEXT NOT NULL,
    clip_hash TEXT NOT NULL,
    frame INTEGER NOT NULL,
    codec_a TEXT NOT NULL,
    codec_b TEXT NOT NULL,
    bpp_a REAL,
    bpp_b REAL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie')),
    winner TEXT,
    reference_shown INTEGER NOT NULL,
    comment TEXT NOT NULL DEFAULT ''
)
"""
_COLUMNS = (
    "id",
    "created",
    "rater",
    "session",
    "comparison",
    "clip_hash",
    "frame",
    "codec_a",
    "codec_b",
    "bpp_a",
    "bpp_b",
    "choice",
    "winner",
    "reference_shown",
    "comment",
)


@dataclass(frozen=True)
class BlindPair:
    """A pair as the server knows it. The page only ever sees the frames, never these names, until the vote."""

    comparison: str  # comparison key
    clip_hash: str
    frame: int
    slug_a: str
    slug_b: str
    label_a: str
    label_b: str
    bpp_a: float
    bpp_b: float


@dataclass(frozen=True)
class Candidate:
    """One decoded version a pair can be drawn from: comparison key, clip hash, slug, label, bpp, frame count, and
    whether it is DiffVC (the codec under test: every pair has it on one side when a comparison has it)."""

    comparison: str
    clip_hash: str
    slug: str
    label: str
    bpp: float
    frames: int
    under_test: bool = False


def matched_pairs(
    candidates: Sequence[Candidate], tolerance: float = PAIR_TOLERANCE
) -> list[tuple[Candidate, Candidate]]:
    """Every pair of versions of the same comparison whose rates differ by at most `tolerance` (relative)."""
    pairs = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            if (
                a.comparison == b.comparison
                and a.bpp > 0
                and b.bpp > 0
                and max(a.bpp, b.bpp) / min(a.bpp, b.bpp) <= 1 + tolerance
            ):
                pairs.append((a, b))
    return pairs


def draw_pair(
    candidates: Sequence[Candidate], rng: random.Random | None = None, tolerance: float = PAIR_TOLERANCE
) -> BlindPair | None:
    """A random matched pair in random order at a random frame, with DiffVC on one side where such a pair exists
    (the blind test judges the codec under test; condlc against x265 is not its question); None when no two
    versions match in rate."""
    rng = rng or random.SystemRandom()
    pairs = matched_pairs(candidates, tolerance)
    pairs = [p for p in pairs if p[0].under_test or p[1].under_test] or pairs
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    if rng.random() < 0.5:
        a, b = b, a
    return BlindPair(
        a.comparison,
        a.clip_hash,
        rng.randrange(min(a.frames, b.frames)),
        a.slug,
        b.slug,
        a.label,
        b.label,
        a.bpp,
        b.bpp,
    )


# --- statistics ---------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_test(successes: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: the probability, under Binomial(n, p), of an outcome no more likely than the
    one observed (the method of R's binom.test and scipy's binomtest). 1.0 when n == 0."""
    if n == 0:
        return 1.0
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    observed = pmf[successes] * (1 + 1e-7)
    return min(1.0, sum(v for v in pmf if v <= observed))


@dataclass(frozen=True)
class PairStats:
    """Votes on one codec pair (names in sorted order): first preferred, second preferred, ties."""

    first: str
    second: str
    first_wins: int
    second_wins: int
    ties: int

    @property
    def decisive(self) -> int:
        return self.first_wins + self.second_wins

    @property
    def preference(self) -> float | None:
        """Share of decisive votes preferring `first`."""
        return self.first_wins / self.decisive if self.decisive else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.first_wins, self.decisive)

    @property
    def p_value(self) -> float:
        return binomial_test(self.first_wins, self.decisive)

    def as_row(self) -> dict[str, Any]:
        """A results-table row with fixed columns: 'first' and 'second' are the two names of `pair`, in order."""
        low, high = self.interval
        pref = self.preference
        return {
            "pair (first vs second)": f"{self.first} vs {self.second}",
            "votes": self.decisive + self.ties,
            "first preferred": self.first_wins,
            "second preferred": self.second_wins,
            "ties": self.ties,
            "share for first": f"{pref:.0%}" if pref is not None else "n/a",
            "Wilson 95% CI": f"{low:.0%} .. {high:.0%}",
            "binomial p": round(self.p_value, 4),
        }


# --- the store ----------------------------------------------------------------------------------------------


class BlindStore:
    """The votes, in one SQLite file (WAL journal). One short-lived connection per call: safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction (committed on success, rolled back on error), closed afterwards.
        synchronous=FULL: a vote is on disk when `record` returns, even if the machine loses power."""
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA synchronous=FULL")
            with db:
                yield db
        finally:
            db.close()

    def integrity(self) -> str:
        """SQLite's own check of the file: 'ok' when it is consistent."""
        with self._connect() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]

    def journal_mode(self) -> str:
        with self._connect() as db:
            return db.execute("PRAGMA journal_mode").fetchone()[0]

    def record(
        self, pair: BlindPair, choice: str, rater: str, session: str, reference_shown: bool, comment: str = ""
    ) -> int:
        """Store one vote; return its id. `choice` is 'A', 'B' or 'tie'."""
        if choice not in CHOICES:
            raise ValueError(f"a vote is one of {', '.join(CHOICES)}, got {choice!r}")
        winner = {"A": pair.label_a, "B": pair.label_b}.get(choice)
        values = (
            datetime.now(UTC).isoformat(timespec="seconds"),
            (rater or "anonymous").strip()[:MAX_RATER],
            session[:100],
            pair.comparison,
            pair.clip_hash,
            pair.frame,
            pair.label_a,
            pair.label_b,
            pair.bpp_a,
            pair.bpp_b,
            choice,
            winner,
            int(reference_shown),
            (comment or "").strip()[:MAX_COMMENT],
        )
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO votes (created, rater, session, comparison, clip_hash, frame, codec_a, codec_b, bpp_a, "
                "bpp_b, choice, winner, reference_shown, comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            return int(cursor.lastrowid)

    def votes(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM votes ORDER BY id").fetchall()
        return [dict(zip(_COLUMNS, row)) for row in rows]

    def stats(self) -> list[PairStats]:
        """One entry per unordered codec pair, in order of first appearance."""
        tally: dict[tuple[str, str], list[int]] = {}
        for vote in self.votes():
            first, second = sorted((vote["codec_a"], vote["codec_b"]))
            counts = tally.setdefault((first, second), [0, 0, 0])
            if vote["winner"] is None:
                counts[2] += 1
            else:
                counts[0 if vote["winner"] == first else 1] += 1
        return [PairStats(a, b, *counts) for (a, b), counts in tally.items()]

    def export_csv(self, path: Path) -> Path:
        """Every vote as CSV (one row per vote, all columns)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_COLUMNS)
            writer.writeheader()
            writer.writerows(self.votes())
        return path
