"""Structured logging: one event name per line plus key=value fields.

JSON lines when stderr is not a terminal (what log collectors want), `key=value` text when it is.
Tokens appear only as `token_fp` fingerprints. As a second line of defence every formatted line
is scrubbed of the configured secrets and of recently issued tokens, so that not even a
third-party library's log line can carry one.

Every request logs at the default `info` level, so a line must be cheap to make and must never
wait for its reader. `log_event` formats our own events straight into a line (no `LogRecord`,
no handler locks) when the broker's handler is the only one, and a `LineWriter` thread writes
the lines: the event loop only appends to a queue, and a slow or blocked stderr (a full pipe to
the container runtime) holds up nothing but that thread. Other libraries' records take the
ordinary `logging` path through the same formatter and writer, so the order of lines is kept.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii as _ascii
from typing import Any, TextIO

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
    if not logger.isEnabledFor(level):
        return
    handler = _DIRECT
    if handler is not None and not logger.handlers and _ROOT.handlers == [handler]:
        handler.writer.put(handler.line_format.line(logger.name, level, event, fields, time.time()))
        return
    # Another handler listens too (a test's log capture): the ordinary path. makeRecord +
    # handle, since Logger.log would also walk the stack for a file and line we do not print.
    extra = {"fields": fields}
    logger.handle(logger.makeRecord(logger.name, level, "", 0, event, (), None, extra=extra))


class LineFormat:
    """Turns an event into one line: JSON, or `key=value` text for a terminal."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        # The formatted second, reused within it: one tuple, so that the writer thread (which
        # formats `log.lines_dropped`) never sees a second with another second's text.
        self._stamped: tuple[int, str] = (-1, "")

    def line(
        self, logger: str, level: int, event: str, fields: Mapping[str, Any], created: float
    ) -> str:
        """The scrubbed line for `event` at `created` (unix seconds)."""
        head: dict[str, Any] = {
            "ts": self._timestamp(created),
            "level": _level_name(level),
            "logger": logger,
            "event": event,
        }
        rid = request_id.get()
        if rid is not None:
            head["request_id"] = rid
        if TRACE_CONTEXT is not None and (ids := TRACE_CONTEXT()) is not None:
            head["trace_id"], head["span_id"] = ids
        head.update(fields)
        if self.as_json:
            line = json_object(head)
        else:
            line = " ".join(f"{key}={_text(value)}" for key, value in head.items())
        return REDACTOR.scrub(line)

    def _timestamp(self, created: float) -> str:
        """`created` as UTC with milliseconds; the second's text is made once per second."""
        second = int(created)
        stamped, stamp = self._stamped
        if second != stamped:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamped = (second, stamp)
        return f"{stamp}.{int((created - second) * 1000):03d}Z"

    def template(
        self, logger: str, level: int, event: str, fields: Mapping[str, Any], vary: str
    ) -> tuple[str, str, str]:
        """`line()`'s text around the request id and the value of `fields[vary]`: the event's
        head, the fields before that value, and those after it (see `LineTemplate`)."""
        head = {"level": _level_name(level), "logger": logger, "event": event}
        marked = {key: _MARK if key == vary else value for key, value in fields.items()}
        before, found, after = json_object(marked)[1:].partition(_ascii(_MARK))
        assert found, f"{vary} is not a field"
        return json_object(head)[1:-1], before, after

    def templated(self, parts: tuple[str, str, str], value: Any, created: float) -> str:
        """The line of a template's event with `value` at `created`."""
        head, before, after = parts
        rid = request_id.get()
        rid_field = "" if rid is None else f',"request_id":{_ascii(rid)}'
        ts = self._timestamp(created)
        line = f'{{"ts":"{ts}",{head}{rid_field},{before}{_json_value(value)}{after}'
        return REDACTOR.scrub(line)


_MARK = "\x00vary\x00"  # stands for the varying value while a template is made


class LineTemplate:
    """The log line of an event that many requests write with the same fields but one.

    `log(value)` writes what `log_event(logger, level, event, **fields, vary=value)` writes, the
    same text, from text made once: no dict to build and nothing to encode but the value. When
    the line could differ (a text format, trace ids, another handler listening) it is
    `log_event`.
    """

    __slots__ = ("_parts", "event", "fields", "level", "logger", "vary")

    def __init__(
        self, logger: logging.Logger, level: int, event: str, vary: str, **fields: Any
    ) -> None:
        if vary not in fields:
            raise ValueError(f"{vary!r} must be one of the fields (its place in the line)")
        self.logger, self.level, self.event, self.vary = logger, level, event, vary
        self.fields = fields  # with `vary` among them, in the order of the line
        self._parts: tuple[LineFormat, tuple[str, str, str]] | None = None

    def log(self, value: Any) -> None:
        """Write the line with `value` as the varying field."""
        logger = self.logger
        if not logger.isEnabledFor(self.level):
            return
        handler = _DIRECT
        if (
            handler is None
            or not handler.line_format.as_json
            or TRACE_CONTEXT is not None
            or logger.handlers
            or _ROOT.handlers != [handler]
        ):
            log_event(logger, self.level, self.event, **(self.fields | {self.vary: value}))
            return
        line_format = handler.line_format
        if self._parts is None or self._parts[0] is not line_format:
            parts = line_format.template(
                logger.name, self.level, self.event, self.fields, self.vary
            )
            self._parts = (line_format, parts)
        handler.writer.put(line_format.templated(self._parts[1], value, time.time()))


def _level_name(level: int) -> str:
    return _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()


_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class _Formatter(logging.Formatter):
    """`LineFormat` for the records of other libraries (and of our events while another
    handler listens)."""

    def __init__(self, line_format: LineFormat) -> None:
        super().__init__()
        self._format = line_format

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        event = record.getMessage()
        return self._format.line(record.name, record.levelno, event, fields, record.created)


def json_object(fields: Mapping[str, Any]) -> str:
    """`json.dumps(fields, default=str, separators=(",", ":"))`, the same text, built from
    each value alone: strings, numbers and None (nearly every field) skip the encoder that
    `json.dumps` sets up again on every call."""
    return (
        "{"
        + ",".join([f"{_ascii(key)}:{_json_value(value)}" for key, value in fields.items()])
        + "}"
    )


def _json_value(value: Any) -> str:
    kind = value.__class__
    if kind is str:
        return _ascii(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value, default=str, separators=(",", ":"))


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text


class LineWriter:
    """Writes lines to a stream from its own thread, in the order they were put.

    `put` only appends to a queue. The thread writes what has queued every `interval` seconds,
    or as soon as `batch` lines wait: one write for many lines, and no thread hand-off per line
    (waking the thread for each line cost the loop as much as the lines themselves). Should the
    stream stop taking lines, at most `max_held` wait; later ones are dropped and counted, and
    the count is written as `log.lines_dropped` once the stream moves again.
    """

    def __init__(
        self,
        stream: TextIO,
        dropped_line: Callable[[int], str],
        *,
        interval: float = 0.02,
        batch: int = 256,
        max_held: int = 100_000,
    ) -> None:
        self._stream = stream
        self._dropped_line = dropped_line
        self._interval = interval
        self._batch = batch
        self._max_held = max_held
        self._lines: deque[str] = deque()
        self._dropped = 0
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # the thread and flush() take turns
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        """Queue `line` for writing."""
        if len(self._lines) >= self._max_held:
            self._dropped += 1
            return
        self._lines.append(line)
        if len(self._lines) == self._batch:
            self._wake.set()

    def flush(self) -> None:
        """Write every queued line now (from the calling thread)."""
        with self._write_lock:
            self._write_queued()

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._write_lock:
                self._write_queued()

    def _write_queued(self) -> None:
        lines = []
        while self._lines:
            lines.append(self._lines.popleft())
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            lines.append(self._dropped_line(dropped))
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # a closed stream: nothing left to tell
                pass


class LineHandler(logging.Handler):
    """The root handler: formats a record into a line and queues it on the writer."""

    def __init__(self, line_format: LineFormat, writer: LineWriter) -> None:
        super().__init__()
        self.line_format = line_format
        self.writer = writer
        self.setFormatter(_Formatter(line_format))

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record's line."""
        try:
            self.writer.put(self.format(record))
        except Exception:  # logging must never break the caller
            self.handleError(record)

    def flush(self) -> None:
        """Write every queued line now."""
        self.writer.flush()

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self.writer.close()
        super().close()


_ROOT = logging.getLogger()
_DIRECT: LineHandler | None = None  # the broker's handler, set by configure_logging


def flush_logs() -> None:
    """Write every queued log line now (tests read the stream; the CLI exits)."""
    if _DIRECT is not None:
        _DIRECT.flush()


def configure_logging(level: str, *, as_json: bool | None = None) -> None:
    """Route every logger (ours, uvicorn's, httpx's) through one structured handler."""
    global _DIRECT
    if as_json is None:
        as_json = not sys.stderr.isatty()
    if _DIRECT is not None:
        _DIRECT.close()
    line_format = LineFormat(as_json)

    def dropped_line(count: int) -> str:
        return line_format.line(
            __name__, logging.ERROR, "log.lines_dropped", {"count": count}, time.time()
        )

    handler = _DIRECT = LineHandler(line_format, LineWriter(sys.stderr, dropped_line))
    # Thread and process details are not printed: do not collect them for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    _ROOT.handlers[:] = [handler]
    _ROOT.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log duplicates our own request log line, which has the caller and outcome.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every upstream URL (proxied paths and query strings) at info: only at debug,
    # where an operator asked for the details (the redactor still scrubs every line).
    quiet = logging.NOTSET if _ROOT.level <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)


atexit.register(flush_logs)
