"""DiffVC Studio's codec library: DiffVC, its anchors, real bitstreams, metrics and the evaluation engine."""

__version__ = "0.1.0"
