"""On-disk cache of evaluation rows, keyed by everything that determines a result.

Key = sha256 over (clip content hash, canonical spec, QP, frame range, size, codec identity such as the model
pack hash, metrics, schema version). One JSON file per row; writes are atomic (temporary file + rename), so a
killed run never leaves a half-written entry, and a damaged entry is treated as missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def cache_key(**parts: Any) -> str:
    """A stable hex key from JSON-serialisable parts (order-independent)."""
    text = json.dumps({"schema": SCHEMA_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResultCache:
    """A folder of `<key>.json` rows."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, row: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(row, f)
        os.replace(tmp, self.path(key))
