"""The app's event handlers, without Gradio, by concern: each takes a small request dataclass and returns a view.

* `CompareHandler` (compare.py): run a comparison, view its frames and per-frame charts, stop it, the `/compare` API.
* `SweepHandler` (sweep.py): an RD sweep per codec, its curves and BD-rates.
* `BlindHandler` (blind.py): blind A/B pairs from the session's comparisons, votes, their results.
* `CodecInfo` (codecs.py): DiffVC's model pack (status, picker, preload) and the registered codecs.

They share one `Workspace` (workspace.py): the configuration, the clip reader under the app's limits, heavy jobs
(time limit, threads), per-session folders, safe downloads and the comparisons kept in memory. `Studio` is the four
over one workspace, as `app.py` builds them. The codec library is imported on first use, so building the page loads
no model.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.handlers.blind import BlindHandler, PairRequest, PairView, VoteRequest
from app.handlers.codecs import CodecInfo
from app.handlers.compare import (
    DEFAULT_ANCHORS,
    ZOOM,
    ChartRequest,
    CompareHandler,
    CompareRequest,
    CompareView,
    FrameRequest,
    FrameView,
    anchor_choices,
)
from app.handlers.sweep import (
    DEFAULT_ANCHOR_QPS,
    DEFAULT_NEURAL_QPS,
    CurveRequest,
    SweepHandler,
    SweepRequest,
    SweepView,
    sweep_codecs,
)
from app.handlers.workspace import (
    DEFAULT_FRAMES,
    DEFAULT_MAX_SIDE,
    ClipRequest,
    JobTimeLimit,
    SessionState,
    StudioConfig,
    UserError,
    Workspace,
)


@dataclass(frozen=True)
class Studio:
    """The page's handlers over one workspace."""

    workspace: Workspace
    compare: CompareHandler
    sweep: SweepHandler
    blind: BlindHandler
    codecs: CodecInfo

    @classmethod
    def open(cls, config: StudioConfig) -> Studio:
        workspace = Workspace(config)
        return cls(
            workspace, CompareHandler(workspace), SweepHandler(workspace), BlindHandler(workspace), CodecInfo(config)
        )

    @property
    def config(self) -> StudioConfig:
        return self.workspace.config

    def preload(self) -> None:
        """What the first comparison needs, loaded before serving: DiffVC's model pack and the networks of the
        metrics (two VGG16s, VMAF), so the first user does not wait for them."""
        from codec.metrics import load_metric_models

        self.codecs.preload()
        load_metric_models()


__all__ = [
    "DEFAULT_ANCHORS",
    "DEFAULT_ANCHOR_QPS",
    "DEFAULT_FRAMES",
    "DEFAULT_MAX_SIDE",
    "DEFAULT_NEURAL_QPS",
    "ZOOM",
    "BlindHandler",
    "ChartRequest",
    "ClipRequest",
    "CodecInfo",
    "CompareHandler",
    "CompareRequest",
    "CompareView",
    "CurveRequest",
    "FrameRequest",
    "FrameView",
    "JobTimeLimit",
    "PairRequest",
    "PairView",
    "SessionState",
    "Studio",
    "StudioConfig",
    "SweepHandler",
    "SweepRequest",
    "SweepView",
    "UserError",
    "VoteRequest",
    "Workspace",
    "anchor_choices",
    "sweep_codecs",
]
