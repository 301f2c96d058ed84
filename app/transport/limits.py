"""Limits on the request head, enforced in uvicorn's httptools protocol, refused as contract JSON.

uvicorn with httptools accepts a request line and headers of any size (a 1 MB header reaches the
app) and answers a request it cannot parse with a plain-text 400. The protocols here refuse

* a request target longer than `MAX_TARGET_BYTES`: 414 `uri_too_long`;
* more than `MAX_HEADER_COUNT` header fields, more than `MAX_HEADER_BYTES` of them, or a head
  still incomplete after `MAX_HEAD_BYTES` received: 431 `headers_too_large`;
* anything else httptools cannot parse: 400 `invalid_request`;

each with `{"error", "error_description"}`, `Cache-Control: no-store` and `Connection: close`,
before the app sees the request. The limits are generous for real callers: the largest header a
caller sends in practice is a mesh's `X-Forwarded-Client-Cert` with a certificate chain (a few KiB).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.errors import RequestRefused
from app.transport.certificates import ClientCertProtocol
from app.transport.errors import error_body

MAX_TARGET_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 200
MAX_HEAD_BYTES = MAX_TARGET_BYTES + MAX_HEADER_BYTES + 4 * 1024  # with the framing around them


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


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head limits above."""

    _refusal: tuple[int, str, str] | None = None
    _in_head = True
    _head_bytes = 0
    _target_bytes = 0
    _header_bytes = 0
    _header_count = 0

    def connection_made(  # type: ignore[override]  # uvicorn's own signature
        self, transport: asyncio.Transport
    ) -> None:
        """Start counting the first request's head."""
        super().connection_made(transport)
        self._start_head()

    def _start_head(self) -> None:
        self._in_head, self._head_bytes = True, 0

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that keeps growing without completing."""
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refusal = (431, "headers_too_large", "request head too large")
            self.send_400_response("")

    def on_message_begin(self) -> None:
        """A new request: count its target and headers from zero."""
        super().on_message_begin()
        self._refusal = None
        self._target_bytes = self._header_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        """Count the request target."""
        self._target_bytes += len(url)
        if self._target_bytes > MAX_TARGET_BYTES:
            self._refuse(
                414, "uri_too_long", f"request target longer than {MAX_TARGET_BYTES} bytes"
            )
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header fields and their bytes."""
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > MAX_HEADER_COUNT:
            self._refuse(431, "headers_too_large", f"more than {MAX_HEADER_COUNT} header fields")
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, "headers_too_large", f"headers larger than {MAX_HEADER_BYTES} bytes")
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
        """Answer a refused or unparsable request with contract JSON and close."""
        status, code, description = self._refusal or (
            400,
            "invalid_request",
            "malformed HTTP request",
        )
        default_headers = list(self.server_state.default_headers)
        self.transport.write(refusal_bytes(status, code, description, default_headers))
        self.transport.close()


class LimitedClientCertProtocol(LimitedHttpToolsProtocol, ClientCertProtocol):
    """The head limits plus the ASGI TLS extension (for the main listener over mTLS)."""
