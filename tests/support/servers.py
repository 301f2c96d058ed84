"""Real HTTP servers on loopback for tests: an ASGI app served by uvicorn in the test's loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Return a listening-ready socket bound to (host, port); port 0 picks a free one."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP, and without it every small response waits ~40 ms (delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@asynccontextmanager
async def serve_app(app: Any, *, host: str = "127.0.0.1", **config: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yield its base URL (http or https)."""
    sock = bound_socket(host)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, **{"log_level": "warning", "lifespan": "on", **config}
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise the start-up error
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.005)
        scheme = "https" if config.get("ssl_certfile") else "http"
        yield f"{scheme}://{host}:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
