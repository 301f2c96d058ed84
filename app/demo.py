"""`make run`: the emulator and a broker (in-memory store) in one process, with a fresh API key."""

from __future__ import annotations

import asyncio

import uvicorn

from app.auth.callers import hash_api_key, new_api_key
from app.config import Settings
from app.main import create_app
from app.observability.logs import configure_logging
from app.server import uvicorn_config
from app.upstream.emulator import EmulatorSettings, create_emulator_app

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"  # the emulator's demo credentials, not a real secret


def demo_settings(host: str, port: int, emulator_port: int, api_key: str) -> Settings:
    """One client ("checkout") against the emulator, one caller ("demo") with `api_key`."""
    upstream = f"http://127.0.0.1:{emulator_port}"
    return Settings(
        server={"host": host, "port": port},
        clients={
            "checkout": {
                "token_url": f"{upstream}/auth/realms/Paysera/protocol/openid-connect/token",
                "api_base_url": upstream,
                "client_id": DEMO_CLIENT_ID,
                "client_secret": DEMO_CLIENT_SECRET,
            }
        },
        callers={"demo": {"api_key_sha256": hash_api_key(api_key), "clients": ["checkout"]}},
    )


def run_demo(host: str, port: int, emulator_port: int) -> None:
    """Serve both until interrupted."""
    api_key = new_api_key()
    settings = demo_settings(host, port, emulator_port, api_key)
    configure_logging("info", as_json=False)
    emulator = create_emulator_app(EmulatorSettings(clients={DEMO_CLIENT_ID: DEMO_CLIENT_SECRET}))
    servers = [
        uvicorn.Server(uvicorn_config(emulator, "127.0.0.1", emulator_port, settings)),
        uvicorn.Server(uvicorn_config(create_app(settings), host, port, settings)),
    ]
    base = f"http://{host}:{port}"
    print(  # noqa: T201 - the point of the demo
        f"\nBroker on {base}, emulated Paysera upstream on http://127.0.0.1:{emulator_port}\n"
        "Fetch a token:\n\n"
        f"  curl -s -H 'X-API-Key: {api_key}' '{base}/token?client=checkout'\n\n"
        f"Dashboard: {base}/health   (Ctrl-C stops both)\n",
        flush=True,
    )

    async def serve_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(serve_all())
