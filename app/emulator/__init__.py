"""The Paysera stand-in for the demo and the tests (`token-broker emulator`), not the broker.

    app.py        the Starlette app: integration API, control endpoints, `serve_emulator`
    token.py      the client-credentials token endpoint and its failure modes
    state.py      issued tokens, counters, per-IP rate windows
    settings.py   `EmulatorSettings` from defaults, `EMULATOR_*` variables, flags, runtime changes

The settings are imported at once; the app's names load `app.py` (starlette, uvicorn) on first
use, so that `token-broker` can build its argument parser without importing the web stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from app.emulator.settings import (
    FAILURE_MODES,
    EmulatorSettings,
    add_emulator_arguments,
    settings_from_args,
)

if TYPE_CHECKING:
    from app.emulator.app import EmulatorApp, create_emulator_app, serve_emulator
    from app.emulator.state import EmulatorState

__all__ = [
    "FAILURE_MODES",
    "EmulatorApp",
    "EmulatorSettings",
    "EmulatorState",
    "add_emulator_arguments",
    "create_emulator_app",
    "serve_emulator",
    "settings_from_args",
]

_LAZY = {
    "EmulatorApp": "app.emulator.app",
    "create_emulator_app": "app.emulator.app",
    "serve_emulator": "app.emulator.app",
    "EmulatorState": "app.emulator.state",
}


def __getattr__(name: str) -> object:
    """Load the app's names on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
