"""The Blind test tab's handlers: an anonymous pair at matched bitrate from the session's comparisons, a vote on it
(the names revealed after), the results of every vote, and their export."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from app import views
from app.blind import BlindStore, Candidate, draw_pair
from app.handlers.workspace import SessionState, UserError, Workspace, escape

PAIR_WIDTH = 480  # blind-test frames narrower than this are shown enlarged by a whole factor (nearest neighbour)


@dataclass(frozen=True)
class PairRequest:
    """A new blind pair; show_reference: the original frame is shown beside it (and recorded with the vote)."""

    show_reference: bool = False


@dataclass(frozen=True)
class VoteRequest:
    """A blind-test vote on the session's current pair: "A", "B" or "tie", who voted (free text), a comment."""

    choice: str
    rater: str = ""
    comment: str = ""


@dataclass
class PairView:
    status: str
    a: np.ndarray | None
    b: np.ndarray | None
    reference: np.ndarray | None


class BlindHandler:
    """The Blind test tab over a workspace and the SQLite store of votes (`app.blind.BlindStore`)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.store = BlindStore(workspace.config.db_path)

    def new_pair(self, request: PairRequest, state: SessionState) -> PairView:
        """A random pair at matched bitrate from this session's comparisons; the names stay in `state`."""
        if not state.comparisons:
            raise UserError("Run a comparison first (Compare tab): the pairs come from this session's comparisons.")
        candidates = [
            Candidate(
                comparison.key,
                comparison.clip["hash"],
                run.slug,
                run.label,
                run.row.bpp,
                run.row.frames,
                under_test=run.role in ("diffvc", "contrast"),
            )
            for comparison in self.workspace.owned(state)
            for run in comparison.runs
        ]
        pair = draw_pair(candidates)
        if pair is None:
            raise UserError(
                "No two codecs of your comparisons are at matched bitrate (within 25 %). Run a "
                "comparison with *match bitrate* on, or with *TDIR flipped* for a TDIR on/off pair."
            )
        frames = self.workspace.comparison(pair.comparison, state).frames()
        state.pair, state.pair_reference = pair, bool(request.show_reference)
        return PairView(
            status=f"Frame {pair.frame} of one of your clips. Which looks better, **A** or **B**? "
            "(Both cost about the same bits.)",
            a=views.enlarged(frames[pair.slug_a][pair.frame], PAIR_WIDTH),
            b=views.enlarged(frames[pair.slug_b][pair.frame], PAIR_WIDTH),
            reference=views.enlarged(frames["original"][pair.frame], PAIR_WIDTH) if request.show_reference else None,
        )

    def vote(self, request: VoteRequest, state: SessionState, session: str) -> str:
        pair = state.pair
        if pair is None:
            raise UserError("Draw a pair first (New pair); each pair takes one vote.")
        vote_id = self.store.record(pair, request.choice, request.rater, session, state.pair_reference, request.comment)
        state.pair = None
        picked = {"A": f"A ({pair.label_a})", "B": f"B ({pair.label_b})", "tie": "a tie"}[request.choice]
        return (
            f"Vote {vote_id} counted: you chose {escape(picked)}. **A was {escape(pair.label_a)}** "
            f"({pair.bpp_a:.4f} bpp), **B was {escape(pair.label_b)}** ({pair.bpp_b:.4f} bpp). "
            "Draw a new pair to go on."
        )

    def results(self) -> pd.DataFrame:
        rows = [s.as_row() for s in self.store.stats()]
        if not rows:
            return pd.DataFrame({"pair": ["no votes yet"]})
        return pd.DataFrame(rows).fillna(0)

    def export_votes(self, session: str) -> str:
        return str(self.store.export_csv(self.workspace.session_dir(session) / "blind-votes.csv"))
