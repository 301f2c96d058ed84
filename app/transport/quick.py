"""Quick answers: a request the app can answer from memory is answered inside the protocol.

uvicorn starts a task per request and runs the ASGI app in it; for the broker's most common
request, a warm `GET /token`, that machinery (the task, the cycle's event, the send path with
its header checks) costs more than the answer. A listener may carry a `QuickAnswer` hook: the
protocol offers it each complete request head and, when it returns headers and a body, writes
the 200 itself (the same bytes uvicorn would write: status line, default headers, the
headers given, the body) and goes on with the connection as after any response. Anything the
hook returns None for is served by the app as usual.

The hook is offered only what it can answer without the app: requests on connections without
a client certificate (those go to the app, which reads the certificate), when the listener is
not over `limit_concurrency`. The app's composition root supplies the hook
(`QUICK_ANSWER_STATE`), so this package knows nothing of tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from app.observability.logs import log_event

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
QuickAnswer = Callable[[Scope], tuple[Headers, bytes] | None]
"""`hook(scope)` -> (headers, body) of a 200 to send now, or None: the app serves it. Called on
the event loop inside the protocol: it must not block; should it raise, the request goes to the
app and the fault is logged (`http.quick_answer_failed`)."""

QUICK_ANSWER_STATE = "quick_answer"
"""The `app.state` attribute holding `factory(lifespan_state) -> QuickAnswer` (set by the
composition root; `BrokerServer` gives the main listener the hook)."""

QuickAnswerFactory = Callable[[Mapping[str, Any]], QuickAnswer]


class QuickAnswerProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that lets `quick_answer` answer requests before the app."""

    quick_answer: QuickAnswer | None = None  # the listener's hook (see `limited_protocol`)
    _quick: QuickAnswer | None = None  # this connection's: none when it has a certificate

    def connection_made(  # type: ignore[override]  # uvicorn's own signature
        self, transport: asyncio.Transport
    ) -> None:
        """Offer quick answers on this connection unless it presented a client certificate."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        certificate = ssl_object is not None and ssl_object.getpeercert(binary_form=True)
        self._quick = None if certificate else self.quick_answer

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Answer `cycle`'s request quickly if the hook can; start the app for it otherwise."""
        quick = self._quick
        if quick is not None and app is self.app:
            try:
                answer = quick(cast(Scope, cycle.scope))
            except Exception as exc:  # a fault in the hook costs the shortcut, not the request
                log_event(log, logging.ERROR, "http.quick_answer_failed", error=type(exc).__name__)
                answer = None
            if answer is not None:
                self._send_quick(cycle, *answer)
                return
        # A quick answer just before, in the same read, armed the keep-alive timer: this
        # request, now in flight, must not be closed under it.
        self._unset_keepalive_if_required()
        super()._start_asgi_task(cycle, app)

    def _send_quick(self, cycle: RequestResponseCycle, headers: Headers, body: bytes) -> None:
        head = [STATUS_LINE[200]]
        for name, value in (*self.server_state.default_headers, *headers):
            head += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:  # HTTP/1.0, or the client asked to close: as uvicorn says it
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + body)
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()  # count it, re-arm keep-alive, start a pipelined request
