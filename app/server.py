"""Run the broker under uvicorn (uvloop + httptools)."""

from __future__ import annotations

from typing import Any

import uvicorn

from app.config import Settings
from app.main import create_app

GRACEFUL_SHUTDOWN_SECONDS = 20


def uvicorn_config(
    app: Any, host: str, port: int, settings: Settings, **extra: Any
) -> uvicorn.Config:
    """The uvicorn settings every listener of the broker shares."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # configure_logging() owns the handlers
        access_log=False,  # our request log line has the caller and outcome
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* are not trusted; XFCC has its own allow-list
        limit_concurrency=settings.server.limit_concurrency,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **extra,
    )


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests drain first."""
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn_config(app, settings.server.host, settings.server.port, settings)
    )
    server.run()
