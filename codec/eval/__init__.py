"""Rate-distortion evaluation: jobs with an on-disk cache, the results table, BD-rate and the HTML report."""

from codec.eval.engine import EvalRequest, evaluate

__all__ = ["EvalRequest", "evaluate"]
