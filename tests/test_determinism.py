"""Determinism under concurrency: requests racing to load the model pack get one model, so the same clip and
settings give the same bitstream in every session and every process (found by the load test, tools/load.py)."""

from __future__ import annotations

import threading

from codec.diffvc.codec import load_model
from codec.eval.compare import CompareSettings, diffvc_identity


def test_concurrent_first_loads_build_one_model():
    settings = CompareSettings(pack="random-tiny")
    load_model.cache_clear()
    _, sequential = diffvc_identity(settings)
    load_model.cache_clear()  # a fresh process: the first requests all miss the cache at once
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(diffvc_identity(settings)[1])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [sequential] * 3
