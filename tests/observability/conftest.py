"""Log capture for the observability tests: the real handler and formatter, as JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from app.observability.logs import configure_logging, flush_logs

LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore")


class LogCapture:
    """The broker's own logging configuration, writing to the stderr that capfd captures."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self._capfd = capfd

    def start(self, level: str) -> None:
        """Configure logging at `level` now (the handler binds to the captured stderr)."""
        self._capfd.readouterr()
        configure_logging(level, as_json=True)

    def read(self) -> tuple[str, list[dict[str, Any]]]:
        """Everything written since the last read: the raw text and its JSON log lines."""
        flush_logs()  # the writer thread may still hold the newest lines
        out, err = self._capfd.readouterr()
        raw = out + err
        return raw, [json.loads(line) for line in raw.splitlines() if line.startswith("{")]


@pytest.fixture
def logs(capfd: pytest.CaptureFixture[str]) -> Iterator[LogCapture]:
    """A LogCapture; the previous logging configuration is put back afterwards."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield LogCapture(capfd)
    finally:
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
