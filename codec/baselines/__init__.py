"""Baseline codecs: importing this package registers them (x265, x264, av1 through PyAV)."""

from codec.baselines import ffmpeg  # noqa: F401  (registers x265, x264, av1)
