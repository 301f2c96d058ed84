"""The baseline: a bare FastAPI endpoint that checks one header and returns a constant body.

Served by uvicorn with the broker's settings (`app.transport.server.uvicorn_config`: uvloop,
httptools, no access log, no server header). The body is the broker's own `GET /token` answer,
read from `BENCH_BARE_BODY`, so both send the same bytes; the key to accept comes from
`BENCH_BARE_KEY`.
Run as `python -m tests.benchmarks.bare --port P`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException


def create_bare_app(api_key: str, body: dict[str, Any]) -> FastAPI:
    """A FastAPI app with one route, `GET /token`, written the way the FastAPI docs teach."""
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get("/token")
    async def token(x_api_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The constant body, for the right key."""
        if x_api_key != api_key:
            raise HTTPException(status_code=401, detail="unauthorized")
        return body

    return app


def main() -> None:
    """Serve the bare app on 127.0.0.1:PORT until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_bare_app(os.environ["BENCH_BARE_KEY"], json.loads(os.environ["BENCH_BARE_BODY"]))
    # The same options as app.transport.server.uvicorn_config, which needs a broker Settings.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
