"""The house style is enforced, not hoped for: `ruff format` and `ruff check` (pyproject.toml) pass on every
Python file of the project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATHS = ("codec", "app", "tests", "tools", "app.py")


def test_the_code_is_formatted_and_lint_clean():
    for command in (["format", "--check"], ["check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, *PATHS], cwd=REPO, capture_output=True, text=True
        )
        assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"
