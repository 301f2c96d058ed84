"""Drill fixtures: `figures` records the numbers each drill saw and prints them at the end.

The figures go to the junit XML (`record_property`) and into the terminal summary under
"failure drill figures", so a run of `pytest tests/reliability` shows what can be quoted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

_FIGURES = pytest.StashKey[list[tuple[str, dict[str, Any]]]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest, record_property: Any) -> Iterator[dict[str, Any]]:
    """A dict the test fills with the numbers it saw; reported whether it passes or fails."""
    seen: dict[str, Any] = {}
    yield seen
    for name, value in seen.items():
        record_property(name, value)
    report_figures(request.config, request.node.nodeid, seen)


def report_figures(config: pytest.Config, name: str, seen: dict[str, Any]) -> None:
    """Add `seen` under `name` to the figures printed after the run."""
    config.stash.setdefault(_FIGURES, []).append((name, seen))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print every drill's figures after the run."""
    collected = config.stash.get(_FIGURES, [])
    if not collected:
        return
    terminalreporter.section("failure drill figures")
    for nodeid, seen in collected:
        terminalreporter.write_line(f"{nodeid}: {json.dumps(seen, sort_keys=True)}")
