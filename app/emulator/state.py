"""Mutable state of the Paysera emulator: issued tokens, counters and per-IP rate windows.

Everything here runs on the server's one event loop and never awaits, so plain ints and dicts
are consistent without locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from app.emulator.settings import EmulatorSettings

logger = logging.getLogger(__name__)

# Past this many live entries, issuing a token first drops the expired ones (they then read as
# unknown rather than expired; a long demo must not grow without bound).
_PRUNE_ABOVE = 10_000


def fingerprint(token: str) -> str:
    """A short SHA-256 fingerprint of `token`, the only form a token may take in a log."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class EmulatorStats:
    """Request counters exposed by ``GET /_emulator/stats``."""

    token_requests: int = 0
    tokens_issued: int = 0
    token_rejected: int = 0
    api_requests: int = 0
    api_unauthorized: int = 0
    api_rate_limited: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class RateDecision:
    """The outcome of one rate-limit check and what the response headers say about it."""

    allowed: bool
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers (and ``Retry-After`` when refused)."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset)
        return headers


class SlidingWindowLog:
    """A strict sliding-window log: at most `limit` counted hits per key in any `window`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._logs: dict[str, deque[float]] = {}

    def hit(self, key: str, limit: int, window: float) -> RateDecision:
        """Count a hit for `key` if a slot is free; refused hits are not counted."""
        now = self._clock()
        log = self._logs.setdefault(key, deque())
        while log and log[0] <= now - window:
            log.popleft()
        allowed = len(log) < limit
        if allowed:
            log.append(now)
        return RateDecision(
            allowed, limit, max(0, limit - len(log)), self._reset(log, limit, now, window)
        )

    @staticmethod
    def _reset(log: deque[float], limit: int, now: float, window: float) -> int:
        # Refused: seconds until enough hits leave the window for one more to fit (the limit may
        # have been lowered at runtime, so that is not always the oldest). Allowed: seconds until
        # the oldest hit leaves, i.e. until `remaining` next grows.
        if not log:
            return 0
        index = len(log) - limit if len(log) >= limit else 0
        return max(1, math.ceil(log[index] + window - now))

    def clear(self) -> None:
        """Forget every window."""
        self._logs.clear()


class TokenRegistry:
    """Tokens issued by the emulator, their expiry on the injected clock, and revocations."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._expires_at: dict[str, float] = {}
        self._revoked: set[str] = set()

    def issue(self, client_id: str, lifetime: float) -> str:
        """Mint an opaque token valid for `lifetime` seconds (0: already expired)."""
        if len(self._expires_at) > _PRUNE_ABOVE:
            self._drop_expired()
        token = "emu_" + secrets.token_urlsafe(32)
        self._expires_at[token] = self._clock() + lifetime
        logger.debug(
            "emulator.token_issued client_id=%s token_fp=%s", client_id, fingerprint(token)
        )
        return token

    def problem(self, token: str | None) -> str | None:
        """None when `token` is usable now; otherwise why not, as an error_description."""
        if not token:
            return "Missing bearer token"
        if token in self._revoked:
            return "Token has been revoked"
        expires_at = self._expires_at.get(token)
        if expires_at is None:
            return "Token is not active"
        if self._clock() >= expires_at:
            return "Token is expired"
        return None

    def revoke_all(self) -> int:
        """Revoke every issued token; return how many were still unexpired."""
        now = self._clock()
        live = sum(1 for expires_at in self._expires_at.values() if now < expires_at)
        self._revoked.update(self._expires_at)
        self._expires_at.clear()
        return live

    def clear(self) -> None:
        """Forget every token, issued or revoked."""
        self._expires_at.clear()
        self._revoked.clear()

    def _drop_expired(self) -> None:
        now = self._clock()
        self._expires_at = {t: exp for t, exp in self._expires_at.items() if now < exp}


class EmulatorState:
    """All the emulator's state: current settings, counters, tokens and rate windows."""

    def __init__(self, settings: EmulatorSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.stats = EmulatorStats()
        # The W3C trace headers of the last token request (`GET /_emulator/last-token-request`);
        # never its credentials.
        self.last_token_trace: dict[str, str] = {}
        self.tokens = TokenRegistry(clock)
        self.rate_windows = SlidingWindowLog(clock)
        # Set when the server begins to stop, so deliberately slow requests end at once.
        self.stopping = asyncio.Event()

    def configure(self, changes: Mapping[str, object]) -> EmulatorSettings:
        """Apply validated runtime changes (raises ValueError naming the bad key)."""
        self.settings = self.settings.with_changes(changes)
        logger.info(
            "emulator.configured changed=%s failure_mode=%s",
            ",".join(sorted(changes)),
            self.settings.failure_mode,
        )
        return self.settings

    def hit_rate_limit(self, client_ip: str) -> RateDecision:
        """Check and count one integration API request from `client_ip`."""
        return self.rate_windows.hit(client_ip, self.settings.rate_limit, self.settings.rate_window)

    def reset(self) -> None:
        """Zero the counters, clear the rate windows and forget every token."""
        self.stats = EmulatorStats()
        self.last_token_trace = {}
        self.rate_windows.clear()
        self.tokens.clear()
