"""`make run`: the emulator and a broker (in-memory store) in one process, with a fresh API key."""

from __future__ import annotations

import asyncio
import errno
import socket

from app.auth.callers import hash_api_key, new_api_key
from app.config import Settings
from app.emulator import EmulatorSettings, create_emulator_app
from app.main import create_app
from app.observability.logs import configure_logging
from app.transport.server import BrokerServer, Listener, uvicorn_config

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


class PortUnavailable(Exception):
    """A port the demo needs cannot be listened on; the message is one line for the user."""


def listening_socket(host: str, port: int, role: str) -> socket.socket:
    """A socket bound to (host, port) for uvicorn to listen on; PortUnavailable if it cannot be.

    Bound before anything starts, so a taken port is one clear line rather than a uvicorn
    error and a traceback from each server.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only then.
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            problem = f"port {port} ({role}) is already in use on {host}"
        else:
            problem = f"cannot listen on {host}:{port} ({role}): {exc.strerror}"
        raise PortUnavailable(
            f"{problem}; pick free ports: make run PORT=18080 EMULATOR_PORT=18081 "
            "(or token-broker demo --port 18080 --emulator-port 18081)"
        ) from None
    return sock


def run_demo(host: str, port: int, emulator_port: int) -> None:
    """Serve both until Ctrl-C / SIGTERM (one signal stops both, gracefully).

    Raises PortUnavailable, before starting anything, when a port cannot be listened on.
    """
    broker_socket = listening_socket(host, port, "the broker")
    try:
        emulator_socket = listening_socket("127.0.0.1", emulator_port, "the emulator")
    except PortUnavailable:
        broker_socket.close()
        raise
    api_key = new_api_key()
    settings = demo_settings(host, port, emulator_port, api_key)
    configure_logging("info", as_json=False)
    broker = BrokerServer(settings, create_app(settings))
    with broker_socket, emulator_socket:
        with asyncio.Runner(loop_factory=broker.main.config.get_loop_factory()) as runner:
            runner.run(serve_demo(broker, (broker_socket, emulator_socket), api_key))


async def serve_demo(
    broker: BrokerServer, sockets: tuple[socket.socket, socket.socket], api_key: str
) -> None:
    """Start the emulator, then the broker; print the curl line once both accept connections."""
    broker_socket, emulator_socket = sockets
    emulator_port = emulator_socket.getsockname()[1]
    app = create_emulator_app(EmulatorSettings(clients={DEMO_CLIENT_ID: DEMO_CLIENT_SECRET}))
    emulator = Listener(uvicorn_config(app, "127.0.0.1", emulator_port, broker.settings))
    emulator_task = asyncio.create_task(emulator.serve(sockets=[emulator_socket]))
    broker_task = asyncio.create_task(broker.serve(broker_socket, handle_signals=True))
    try:
        while not (emulator.started and broker.main.started):
            for task in (emulator_task, broker_task):
                if task.done():
                    task.result()  # re-raise the start-up error
                    raise RuntimeError("the demo stopped before it started")
            await asyncio.sleep(0.01)
        server = broker.settings.server
        base = f"http://{server.host}:{server.port}"
        print(  # noqa: T201 - the point of the demo
            f"\nBroker on {base}, emulated Paysera upstream on http://127.0.0.1:{emulator_port}\n"
            "Fetch a token:\n\n"
            f"  curl -s -H 'X-API-Key: {api_key}' '{base}/token?client=checkout'\n\n"
            f"Dashboard: {base}/health   (Ctrl-C stops both)\n",
            flush=True,
        )
        await broker_task
    finally:
        broker.stop()
        emulator.should_exit = True
        await asyncio.wait([emulator_task, broker_task])
