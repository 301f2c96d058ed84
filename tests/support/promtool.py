"""promtool (Prometheus' own rule and metric checker) for the tests; a failure when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def find_promtool() -> str:
    """.tools/bin/promtool (installed by `make promtool`), else one on PATH; never a skip."""
    local = REPO / ".tools" / "bin" / "promtool"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which("promtool")
    if on_path:
        return on_path
    pytest.fail(
        "promtool is missing: neither .tools/bin/promtool nor promtool on PATH. Run `make "
        "promtool` (it unpacks Debian's prometheus package into .tools/bin) and try again.",
        pytrace=False,
    )


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `promtool args...`; its exit code, stdout and stderr are the caller's to judge."""
    return subprocess.run(
        [find_promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
