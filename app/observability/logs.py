"""Structured logging: one event name per line plus key=value fields.

JSON lines when stderr is not a terminal (what log collectors want), `key=value` text when it is.
Tokens appear only as `token_fp` fingerprints. As a second line of defence every formatted line
is scrubbed of the configured secrets and of recently issued tokens, so that not even a
third-party library's log line can carry one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# (trace_id, span_id) of the active span, set by `app.observability.tracing` when tracing is on;
# None keeps OpenTelemetry out of this module and of untraced brokers.
TRACE_CONTEXT: Callable[[], tuple[str, str] | None] | None = None

_REDACTED = "[redacted]"
_TOKENS_PER_KEY = 8


class Redactor:
    """Strings that must never reach a log line: configured secrets, and each client's tokens
    that have not expired (the newest few: the cost per line stays a few substring checks per
    client; a forced refresh does not revoke the token it replaces)."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._tokens: dict[str, tuple[tuple[str, float], ...]] = {}
        self._registered: tuple[str, ...] = ()  # rebuilt on change; read without the lock
        self._lock = threading.Lock()

    def add(self, token: str, key: str = "", expires_at: float = math.inf) -> None:
        """Scrub `token` from later log lines until it expires (or newer tokens of `key` push
        it out of the newest few)."""
        recent = self._tokens.get(key, ())
        if len(token) < 8 or any(known == token for known, _ in recent):
            return
        now = time.time()
        with self._lock:
            alive = tuple((t, until) for t, until in recent if until > now)
            self._tokens[key] = ((token, expires_at), *alive[: _TOKENS_PER_KEY - 1])
            self._rebuild()

    def add_secret(self, secret: str) -> None:
        """Scrub a configured secret from every later log line, for the life of the process."""
        if len(secret) >= 8:
            with self._lock:
                self._secrets.add(secret)
                self._rebuild()

    def scrub(self, text: str) -> str:
        """`text` with every registered secret and token replaced."""
        for secret in self._registered:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def _rebuild(self) -> None:
        tokens = (token for recent in self._tokens.values() for token, _ in recent)
        self._registered = (*self._secrets, *tokens)


REDACTOR = Redactor()


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log `event` with structured `fields` (never pass a token or secret as a field)."""
    if logger.isEnabledFor(level):
        # makeRecord + handle: Logger.log would also walk the stack for the caller's file and
        # line, which the structured line does not print (a third of the cost of a line).
        extra = {"fields": fields}
        logger.handle(logger.makeRecord(logger.name, level, "", 0, event, (), None, extra=extra))


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self._as_json = as_json
        self._second, self._stamp = -1, ""  # the formatted second, reused within it

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second, self._stamp = second, stamp
        fields: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            fields["request_id"] = rid
        if TRACE_CONTEXT is not None and (ids := TRACE_CONTEXT()) is not None:
            fields["trace_id"], fields["span_id"] = ids
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self._as_json:
            line = json.dumps(fields, default=str, separators=(",", ":"))
        else:
            line = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        return REDACTOR.scrub(line)


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text


def configure_logging(level: str, *, as_json: bool | None = None) -> None:
    """Route every logger (ours, uvicorn's, httpx's) through one structured handler."""
    if as_json is None:
        as_json = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    # Thread and process details are not printed: do not collect them for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log duplicates our own request log line, which has the caller and outcome.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every upstream URL (proxied paths and query strings) at info: only at debug,
    # where an operator asked for the details (the redactor still scrubs every line).
    quiet = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
