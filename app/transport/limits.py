"""Limits on the request head, enforced in uvicorn's httptools protocol, refused as contract JSON.

uvicorn with httptools accepts a request line and headers of any size (a 1 MB header reaches the
app) and answers a request it cannot parse with a plain-text 400. The protocols here refuse

* a request target longer than `server.max_target_bytes`: 414 `uri_too_long`;
* more than `server.max_headers` header fields, more than `server.max_header_bytes` of them, or
  a head still incomplete after `HeadLimits.head_bytes` received: 431 `headers_too_large`;
* anything else httptools cannot parse: 400 `invalid_request`;

each with `{"error", "error_description"}`, `Cache-Control: no-store` and `Connection: close`,
before the app sees the request. Each refusal is reported to the listener's `RefusalHook`, so
it is logged and counted like any other request. The defaults are generous for real callers: the
largest header a caller sends in practice is a mesh's `X-Forwarded-Client-Cert` with a
certificate chain (a few KiB).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from app.errors import RequestRefused
from app.transport.certificates import ClientCertProtocol
from app.transport.errors import error_body
from app.transport.quick import QuickAnswer, QuickAnswerProtocol
from app.transport.writes import CoalescingTransport

MAX_TARGET_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 200
MAX_BODY_BYTES = 1024 * 1024  # API request bodies (app.transport.server applies it)
_FRAMING_BYTES = 4 * 1024  # request line and the ": " / CRLF around each header field

RefusalHook = Callable[[str, int, str, float], None]
"""Called as `hook(method, status, error_code, seconds)` for each request refused before the app
saw it (`method` is what the client sent, possibly not a method at all)."""

REFUSAL_HOOK_STATE = "request_refused"
"""The `app.state` attribute holding the app's `RefusalHook` (set by the composition root)."""


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The request-head limits of one listener (`server.max_*`)."""

    target_bytes: int = MAX_TARGET_BYTES
    header_bytes: int = MAX_HEADER_BYTES
    header_count: int = MAX_HEADER_COUNT

    @property
    def head_bytes(self) -> int:
        """Bytes after which a head that has not completed is refused (limits plus framing)."""
        return self.target_bytes + self.header_bytes + _FRAMING_BYTES + 4 * self.header_count


def refusal_bytes(
    status: int, code: str, description: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A complete HTTP/1.1 response carrying a contract error, closing the connection."""
    body = json.dumps(error_body(code, description)).encode()
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"cache-control: no-store\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class LimitedHttpToolsProtocol(QuickAnswerProtocol):
    """uvicorn's httptools protocol with the head limits above and quick answers
    (`limited_protocol` gives a listener its own limits, refusal hook and quick answers)."""

    limits = HeadLimits()
    on_refused: RefusalHook | None = None

    _refusal: tuple[int, str, str] | None = None
    _in_head = True
    _head_bytes = 0
    _target_bytes = 0
    _header_bytes = 0
    _header_count = 0
    _begun_at: float | None = None
    _method_read = False  # httptools names a method (DELETE) even when it could not read one

    def connection_made(  # type: ignore[override]  # uvicorn's own signature
        self, transport: asyncio.Transport
    ) -> None:
        """Start counting the first request's head; join each response's writes into one."""
        super().connection_made(transport)
        # After uvicorn's set-up: its FlowControl keeps the real transport.
        self.transport = CoalescingTransport(transport, self.loop)
        self._start_head()

    def _start_head(self) -> None:
        self._in_head, self._head_bytes, self._begun_at = True, 0, None

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that keeps growing without completing."""
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self._head_bytes > self.limits.head_bytes
            and not self.transport.is_closing()
        ):
            self._refusal = (431, "headers_too_large", "request head too large")
            self.send_400_response("")

    def on_message_begin(self) -> None:
        """A new request: count its target and headers from zero."""
        super().on_message_begin()
        self._refusal = None
        self._target_bytes = self._header_bytes = self._header_count = 0
        self._begun_at, self._method_read = time.perf_counter(), False

    def on_url(self, url: bytes) -> None:
        """Count the request target."""
        self._method_read = True  # the method comes before the target
        self._target_bytes += len(url)
        limit = self.limits.target_bytes
        if self._target_bytes > limit:
            self._refuse(414, "uri_too_long", f"request target longer than {limit} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header fields and their bytes."""
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        limits = self.limits
        if self._header_count > limits.header_count:
            self._refuse(431, "headers_too_large", f"more than {limits.header_count} header fields")
        if self._header_bytes > limits.header_bytes:
            self._refuse(
                431, "headers_too_large", f"headers larger than {limits.header_bytes} bytes"
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is complete: stop counting it."""
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """What follows is the next request's head (keep-alive): count it from zero."""
        super().on_message_complete()
        self._start_head()

    def _refuse(self, status: int, code: str, description: str) -> None:
        self._refusal = (status, code, description)
        # Raised inside a parser callback; the parser's error path then sends the refusal.
        raise RequestRefused(description)

    def send_400_response(self, _msg: str) -> None:
        """Answer a refused or unparsable request with contract JSON, report it, and close."""
        status, code, description = self._refusal or (
            400,
            "invalid_request",
            "malformed HTTP request",
        )
        default_headers = list(self.server_state.default_headers)
        self.transport.write(refusal_bytes(status, code, description, default_headers))
        self.transport.close()
        if self.on_refused is not None:
            began = self._begun_at
            seconds = 0.0 if began is None else time.perf_counter() - began
            self.on_refused(self._method(), status, code, seconds)

    def _method(self) -> str:
        """The method of the request being refused ("" when the parser read none)."""
        if not self._method_read:
            return ""
        method: bytes = self.parser.get_method()
        return method.decode("latin-1")


class LimitedClientCertProtocol(LimitedHttpToolsProtocol, ClientCertProtocol):
    """The head limits plus the ASGI TLS extension (for the main listener over mTLS)."""


def limited_protocol(
    limits: HeadLimits,
    on_refused: RefusalHook | None,
    *,
    client_certs: bool = False,
    quick_answer: QuickAnswer | None = None,
) -> type[LimitedHttpToolsProtocol]:
    """A protocol class with `limits` that reports refusals to `on_refused` and offers requests
    to `quick_answer` (uvicorn builds one protocol object per connection from the class, so a
    listener's settings live on it)."""
    base = LimitedClientCertProtocol if client_certs else LimitedHttpToolsProtocol
    attributes = {
        "limits": limits,
        "on_refused": staticmethod(on_refused) if on_refused else None,
        "quick_answer": staticmethod(quick_answer) if quick_answer else None,
    }
    return cast(type[LimitedHttpToolsProtocol], type(base.__name__, (base,), attributes))
