"""On-disk cache of evaluation rows, keyed by everything that determines a result.

Key = sha256 over (clip content hash, canonical spec, QP, frame range, size, codec identity such as the model
pack hash, metrics, schema version). One JSON file per row (`ResultRow.to_dict`); writes are atomic (temporary
file + rename), so a killed run never leaves a half-written entry, and a damaged entry is treated as missing. The
schema version is the rows' (`ROW_SCHEMA_VERSION`): rows of an older schema sit under other keys, and one found
under a current key anyway is refused by `ResultRow.from_dict` and treated as missing, so it is measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from codec.errors import RowSchemaError
from codec.eval.rows import ROW_SCHEMA_VERSION, ResultRow

SCHEMA_VERSION = ROW_SCHEMA_VERSION  # 1: untyped rows; 2: ResultRow


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

    def get(self, key: str) -> ResultRow | None:
        try:
            return ResultRow.from_dict(json.loads(self.path(key).read_text()))
        except (OSError, ValueError, RowSchemaError):
            return None

    def put(self, key: str, row: ResultRow) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(row.to_dict(), f)
        os.replace(tmp, self.path(key))
