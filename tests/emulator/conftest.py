"""Fixtures of the emulator tests."""

from __future__ import annotations

import pytest

from tests.emulator.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock for the emulator that stands still until the test moves it."""
    return FakeClock()
