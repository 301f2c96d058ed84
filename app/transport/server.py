"""Run the broker under uvicorn (uvloop + httptools): the main listener and the ops listener.

Both listeners refuse oversized or malformed request heads with contract JSON
(`app.transport.limits`), and API request bodies over `server.max_body_bytes` with 413; each
refusal goes to the app's `RefusalHook` (logged and counted like any other request).

One process, one event loop, one app, one set of services:

* the **main listener** (`server.host:port`) serves the whole API, over HTTPS when
  `tls_cert_file` is set, verifying client certificates against `tls_client_ca_file`
  (`ClientCertProtocol` hands the verified certificate to the app; `ReloadingTlsContext`
  picks up rotated certificate files without a restart);
* the optional **ops listener** (`server.ops_port`, plain HTTP) serves the same app behind a
  path check: `/health*` and `/metrics` only, so kubelet probes and Prometheus work when the
  main port requires a client certificate.

`BrokerServer` serves the app it is given (the composition root, `app.main.create_app`, builds
it; the CLI and the demo pass it in, so this package imports neither `app.main` nor `app.api`).
It runs the app's lifespan itself, once, and hands its state (the `Services`) to the requests of
both listeners, which run no lifespan of their own. SIGTERM/SIGINT stops both
listeners together; the lifespan (closing the store and the HTTP client) ends only after every
request either of them accepted has finished. A second signal stops without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.observability.logs import log_event
from app.transport.errors import error_json
from app.transport.limits import (
    MAX_BODY_BYTES,
    REFUSAL_HOOK_STATE,
    HeadLimits,
    LimitedHttpToolsProtocol,
    RefusalHook,
    limited_protocol,
)
from app.transport.quick import QUICK_ANSWER_STATE, QuickAnswer, QuickAnswerFactory
from app.transport.tls import RELOAD_INTERVAL_SECONDS, ReloadingTlsContext

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 20
START_POLL_SECONDS = 0.01
# The API's bodies are small JSON; FastAPI would read any size into memory before a handler or
# a credential check could refuse it, hence `server.max_body_bytes`. The proxy
# (`proxy.max_body_bytes`, 413) and the OAuth endpoints (64 KiB, RFC 6749's 400
# `invalid_request`) stream and limit their own bodies.
OWN_BODY_LIMITS = ("/proxy/", "/oauth2/", "/auth/realms/")


def uvicorn_config(
    app: Any, host: str, port: int, settings: Settings, **extra: Any
) -> uvicorn.Config:
    """The uvicorn settings every listener of the broker shares; `extra` adds or overrides."""
    options: dict[str, Any] = {
        "loop": "uvloop",
        "http": LimitedHttpToolsProtocol,  # httptools, with limits on the request head
        "lifespan": "on",
        "log_config": None,  # configure_logging() owns the handlers
        "access_log": False,  # our request log line has the caller and outcome
        "server_header": False,
        "proxy_headers": False,  # X-Forwarded-* are not trusted; XFCC has its own allow-list
        "limit_concurrency": settings.server.limit_concurrency,
        "timeout_keep_alive": settings.server.keep_alive_seconds,  # above the LB's idle timeout
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
    return uvicorn.Config(app, host=host, port=port, **(options | extra))


def is_ops_path(path: str) -> bool:
    """Whether the ops listener serves `path`: `/health`, `/health/...` and `/metrics`."""
    return path in ("/health", "/metrics") or path.startswith("/health/")


class ListenerApp:
    """What one listener serves: the broker's app with the shared lifespan state in each scope.

    With `ops_only`, paths other than `/health*` and `/metrics` get the contract's JSON 404
    without reaching the app; the paths that do reach it are answered exactly as on the main
    port (same routes, middleware and error handlers). A body declared larger than
    `max_body_bytes` is refused here (413) and reported to `on_refused`; one that grows past it
    (chunked) is refused inside the app, whose request log sees it.
    """

    def __init__(
        self,
        app: ASGIApp,
        state: dict[str, Any],
        *,
        ops_only: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
        on_refused: RefusalHook | None = None,
    ) -> None:
        self._app = app
        self._state = state  # filled in by BrokerServer once the lifespan has started
        self._ops_only = ops_only
        self._max_body = max_body_bytes
        self._on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request (listeners run without lifespan or websockets)."""
        if scope["type"] != "http":
            return
        if self._ops_only and not is_ops_path(scope["path"]):
            await error_json(404, "not_found", "Not Found")(scope, receive, send)
            return
        if not scope["path"].startswith(OWN_BODY_LIMITS):
            if declared_length(scope) > self._max_body:
                await error_json(413, "request_too_large", too_large(self._max_body))(
                    scope, receive, send
                )
                if self._on_refused is not None:
                    self._on_refused(scope["method"], 413, "request_too_large", 0.0)
                return
            receive = limited_body(receive, self._max_body)
        scope["state"] = dict(self._state)  # a shallow copy per request, as uvicorn makes
        await self._app(scope, receive, send)


def too_large(limit: int) -> str:
    """The 413 description for API bodies over `limit` bytes."""
    return f"request body larger than {limit} bytes"


def declared_length(scope: Scope) -> int:
    """The request's Content-Length, or 0 when absent or unreadable (uvicorn rejects those)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def limited_body(receive: Receive, limit: int) -> Receive:
    """`receive` that raises 413 once more than `limit` body bytes have arrived (chunked)."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            # FastAPI re-raises an HTTPException from body parsing as it is: the error
            # handlers turn it into the contract's 413 `request_too_large`.
            raise HTTPException(413, too_large(limit))
        return message

    return receive_limited


class Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to `BrokerServer`, which stops all listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: one handler for the whole process lives in `BrokerServer`."""
        yield


class BrokerServer:
    """The broker's app, its lifespan and its listeners in one process."""

    def __init__(
        self,
        settings: Settings,
        app: Starlette,
        *,
        reload_interval: float = RELOAD_INTERVAL_SECONDS,
    ) -> None:
        server = settings.server
        self.settings = settings
        self.app = app
        # Built now so that unreadable or mismatched certificate files fail start-up.
        self.tls = ReloadingTlsContext(server) if server.tls_enabled else None
        self.reload_interval = reload_interval
        self._state: dict[str, Any] = {}
        self.limits = HeadLimits(
            server.max_target_bytes, server.max_header_bytes, server.max_headers
        )
        # Requests refused before routing are logged and counted by the app's own hook.
        self.on_refused: RefusalHook | None = getattr(app.state, REFUSAL_HOOK_STATE, None)
        self.main = Listener(self._main_config(settings))
        self.ops: Listener | None = None
        if server.ops_port is not None:
            ops_app = self._listener_app(ops_only=True)
            self.ops = Listener(self._config(ops_app, server.ops_port, settings))
        self._stopping = asyncio.Event()
        self._signals = 0

    def _listener_app(self, *, ops_only: bool = False) -> ListenerApp:
        return ListenerApp(
            self.app,
            self._state,
            ops_only=ops_only,
            max_body_bytes=self.settings.server.max_body_bytes,
            on_refused=self.on_refused,
        )

    def _config(
        self,
        app: ListenerApp,
        port: int,
        settings: Settings,
        *,
        client_certs: bool = False,
        quick_answer: QuickAnswer | None = None,
        **extra: Any,
    ) -> uvicorn.Config:
        host = settings.server.host
        http = limited_protocol(
            self.limits, self.on_refused, client_certs=client_certs, quick_answer=quick_answer
        )
        return uvicorn_config(
            app, host, port, settings, http=http, lifespan="off", ws="none", **extra
        )

    def _main_config(self, settings: Settings) -> uvicorn.Config:
        app, port = self._listener_app(), settings.server.port
        # The app's quick answers (app.transport.quick), over the lifespan state once filled.
        factory: QuickAnswerFactory | None = getattr(self.app.state, QUICK_ANSWER_STATE, None)
        quick = factory(self._state) if factory is not None else None
        if self.tls is None:
            return self._config(app, port, settings, quick_answer=quick)
        tls = self.tls
        return self._config(
            app,
            port,
            settings,
            client_certs=True,
            quick_answer=quick,
            ssl_context_factory=lambda _config, _default: tls.context,
        )

    @property
    def listeners(self) -> list[Listener]:
        """The main listener, and the ops listener when configured."""
        return [self.main] if self.ops is None else [self.main, self.ops]

    def stop(self) -> None:
        """Stop accepting connections, finish in-flight requests, then close the services."""
        self._stopping.set()

    def _on_signal(self) -> None:
        self._signals += 1
        self.stop()
        if self._signals > 1:  # a second Ctrl-C / SIGTERM: do not wait for requests
            for listener in self.listeners:
                listener.force_exit = True

    async def serve(
        self,
        main_socket: socket.socket | None = None,
        ops_socket: socket.socket | None = None,
        *,
        handle_signals: bool = False,
    ) -> None:
        """Serve until `stop()` (or SIGTERM/SIGINT with `handle_signals`) or a listener ends."""
        sockets = [main_socket, ops_socket]
        running: dict[Listener, asyncio.Task[None]] = {}
        with self._signal_handlers(handle_signals):
            async with self.app.router.lifespan_context(self.app) as state, self._reloading():
                self._state.update(state or {})
                try:
                    for listener, sock in zip(self.listeners, sockets, strict=False):
                        running[listener] = await _start(listener, sock)
                    self._log_listening()
                    await self._until_stop_or_exit(running.values())
                finally:
                    for listener in running:
                        listener.should_exit = True
                    if running:
                        await asyncio.wait(running.values())
                    log_event(log, logging.INFO, "server.stopped")
        for task in running.values():
            task.result()  # surface a listener's crash

    def _log_listening(self) -> None:
        server = self.settings.server
        if self.tls is None:
            client_certificates = "not requested (plain HTTP)"
        elif server.tls_client_ca_file is None:
            client_certificates = "not requested"
        else:
            required = server.tls_client_cert_required
            client_certificates = "required" if required else "optional"
        log_event(
            log,
            logging.INFO,
            "server.listening",
            host=server.host,
            port=server.port,
            tls=self.tls is not None,
            client_certificates=client_certificates,
            ops_port=server.ops_port,
            xfcc_trusted_proxies=[str(net) for net in server.xfcc_trusted_proxies],
        )

    async def _until_stop_or_exit(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()

    @contextlib.contextmanager
    def _signal_handlers(self, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    @contextlib.asynccontextmanager
    async def _reloading(self) -> AsyncIterator[None]:
        if self.tls is None:
            yield
            return
        watcher = asyncio.create_task(self.tls.watch(self.reload_interval))
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])


async def _start(listener: Listener, sock: socket.socket | None) -> asyncio.Task[None]:
    """Start `listener` and return its task once it accepts connections."""
    task = asyncio.create_task(listener.serve(sockets=[sock] if sock is not None else None))
    while not listener.started:
        if task.done():
            task.result()  # re-raise the start-up error
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(START_POLL_SECONDS)
    return task


def run(settings: Settings, app: Starlette) -> None:
    """Serve `app` until SIGTERM/SIGINT; in-flight requests on both listeners drain first."""
    broker = BrokerServer(settings, app)
    with asyncio.Runner(loop_factory=broker.main.config.get_loop_factory()) as runner:
        runner.run(broker.serve(handle_signals=True))
