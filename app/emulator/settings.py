"""Settings of the Paysera emulator: defaults, environment variables, flags, runtime changes.

Precedence is flags over environment over defaults. Every value goes through one parser per
setting, whichever way it arrives (a flag string, an ``EMULATOR_*`` variable, a JSON value posted
to ``/_emulator/config``), so the three paths accept and refuse the same things. Error messages
name the flag, the variable or the key, and never repeat a client secret.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

FAILURE_MODES = (
    "none",
    "unavailable",
    "hang",
    "garbage",
    "html",
    "no_token",
    "zero_expiry",
    "huge_expiry",
    "reset",
)
ENV_PREFIX = "EMULATOR_"


def parse_clients(value: object) -> dict[str, str]:
    """Parse ``"id:secret,id2:secret2"`` or a mapping into client_id -> client_secret."""
    if isinstance(value, str):
        pairs = [item.strip().partition(":") for item in value.split(",") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError("expected id:secret[,id:secret...]")
        value = {client_id.strip(): secret for client_id, _, secret in pairs}
    if not isinstance(value, Mapping):
        raise ValueError("expected an object of client_id: client_secret strings")
    clients: dict[str, str] = {}
    for client_id, secret in value.items():
        if not (isinstance(client_id, str) and isinstance(secret, str) and client_id and secret):
            raise ValueError("client ids and secrets must be non-empty strings")
        clients[client_id] = secret
    if not clients:
        raise ValueError("at least one client is required")
    return clients


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a number of seconds")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(number):
        raise ValueError("must be finite")
    return number


def parse_positive_seconds(value: object) -> float:
    """Parse a duration that must be greater than zero."""
    seconds = _number(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def parse_non_negative_seconds(value: object) -> float:
    """Parse a duration that may be zero."""
    seconds = _number(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_failure_mode(value: object) -> str:
    """Parse one of `FAILURE_MODES`."""
    if value not in FAILURE_MODES:
        raise ValueError(f"must be one of {', '.join(FAILURE_MODES)}")
    return str(value)


def parse_rate_limit(value: object) -> int:
    """Parse a request count that must be at least 1."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected a whole number")
    if value < 1:
        raise ValueError("must be at least 1")
    return value


# One parser per setting; the order is the order of flags in --help.
PARSERS: dict[str, Callable[[object], Any]] = {
    "clients": parse_clients,
    "token_lifetime": parse_positive_seconds,
    "token_latency": parse_non_negative_seconds,
    "failure_mode": parse_failure_mode,
    "rate_limit": parse_rate_limit,
    "rate_window": parse_positive_seconds,
}

_FLAG_HELP: dict[str, tuple[str, str]] = {
    "clients": (
        "ID:SECRET[,...]",
        "accepted credentials (prefer EMULATOR_CLIENTS: flags show in ps)",
    ),
    "token_lifetime": ("SECONDS", "lifetime of issued tokens (default 3600)"),
    "token_latency": ("SECONDS", "delay before the token endpoint answers (default 0)"),
    "failure_mode": ("MODE", f"token endpoint failure: {', '.join(FAILURE_MODES)}"),
    "rate_limit": ("N", "integration API requests per window per client IP (default 50)"),
    "rate_window": ("SECONDS", "rate-limit window (default 60)"),
}


def _parse_labelled(label: str, name: str, value: object) -> Any:
    try:
        return PARSERS[name](value)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


def _default_clients() -> dict[str, str]:
    return {"demo-client": "demo-secret"}


@dataclass(frozen=True)
class EmulatorSettings:
    """What the emulator accepts and how it misbehaves; validated on construction."""

    clients: dict[str, str] = field(default_factory=_default_clients, repr=False)
    token_lifetime: float = 3600.0
    token_latency: float = 0.0
    failure_mode: str = "none"
    rate_limit: int = 50
    rate_window: float = 60.0

    def __post_init__(self) -> None:
        for name in PARSERS:
            object.__setattr__(self, name, _parse_labelled(name, name, getattr(self, name)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EmulatorSettings:
        """Build settings from ``EMULATOR_*`` variables (empty ones count as unset)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in PARSERS:
            variable = ENV_PREFIX + name.upper()
            raw = env.get(variable, "")
            if raw.strip():
                values[name] = _parse_labelled(variable, name, raw)
        return cls(**values)

    def with_changes(self, changes: Mapping[str, object]) -> EmulatorSettings:
        """Return a copy with `changes` (setting name -> value) applied and validated."""
        unknown = sorted(set(changes) - set(PARSERS))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        parsed = {name: _parse_labelled(name, name, value) for name, value in changes.items()}
        return replace(self, **parsed)

    def public_view(self) -> dict[str, object]:
        """The settings as JSON-ready data, with client ids but without their secrets."""
        return {
            "clients": sorted(self.clients),
            "token_lifetime": self.token_lifetime,
            "token_latency": self.token_latency,
            "failure_mode": self.failure_mode,
            "rate_limit": self.rate_limit,
            "rate_window": self.rate_window,
        }


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argument_type(name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return PARSERS[name](text)
        except ValueError as exc:
            # ArgumentTypeError keeps argparse from echoing the raw value (it may hold a secret).
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags to `parser`; each defaults to None (take env or default)."""
    for name, (metavar, help_text) in _FLAG_HELP.items():
        parser.add_argument(
            _flag(name), type=_argument_type(name), default=None, metavar=metavar, help=help_text
        )


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> EmulatorSettings:
    """Build settings from parsed flags over ``EMULATOR_*`` variables over defaults."""
    settings = EmulatorSettings.from_env(environ)
    flags = {
        name: _parse_labelled(_flag(name), name, getattr(args, name))
        for name in PARSERS
        if getattr(args, name, None) is not None
    }
    return replace(settings, **flags)
