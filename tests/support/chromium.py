"""Headless Chromium driven over the DevTools protocol: a page at a given width, measured.

`--dump-dom` cannot say where things landed; the DevTools protocol can. Chromium is started
with `--remote-debugging-port=0` (it writes the port it chose into the profile directory), one
page is opened at the wanted viewport, loaded, measured with `Runtime.evaluate` (DevTools runs
it whatever the page's Content-Security-Policy says), and captured as a full-page PNG.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-first-run",
    "--remote-debugging-port=0",
)


def chromium_binary() -> str:
    """Path of Debian's chromium; a clear failure (never a skip) when it is missing."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is required for the dashboard tests: apt-get install -y chromium")


class DevTools:
    """One DevTools websocket: commands (optionally to a page session) and awaited events."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        """Send a command and return its result (events that arrive meanwhile are kept)."""
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._socket.send(json.dumps(message))
        while True:
            reply = json.loads(await self._socket.recv())
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    async def event(self, method: str) -> dict[str, Any]:
        """Wait for the next event called `method`."""
        while True:
            for i, seen in enumerate(self._events):
                if seen.get("method") == method:
                    del self._events[i]
                    return seen
            self._events.append(json.loads(await self._socket.recv()))


@dataclass(frozen=True)
class Shot:
    """A loaded page: what `measure` returned, and the full-page screenshot."""

    measured: Any
    png: bytes


@asynccontextmanager
async def chromium() -> AsyncIterator[DevTools]:
    """A headless Chromium with its browser-level DevTools connection."""
    # Chromium's helper processes may still write to the profile after the browser is killed:
    # what they leave behind is not the test's concern.
    with tempfile.TemporaryDirectory(prefix="tb-chromium-", ignore_cleanup_errors=True) as profile:
        process = await asyncio.create_subprocess_exec(
            chromium_binary(),
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            for _ in range(300):
                if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                    break
                if process.returncode is not None:
                    raise RuntimeError(f"chromium exited with {process.returncode}")
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("chromium did not open its DevTools port within 30 s")
            port, path = port_file.read_text().splitlines()[:2]
            async with connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as socket:
                yield DevTools(socket)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def shoot(browser: DevTools, url: str, width: int, measure: str) -> Shot:
    """Open `url` in a `width`-pixel-wide viewport, evaluate `measure` (a JS expression that
    returns JSON-able data) after load, and capture the whole page."""
    target = (await browser.call("Target.createTarget", url="about:blank"))["targetId"]
    attached = await browser.call("Target.attachToTarget", targetId=target, flatten=True)
    session = attached["sessionId"]
    await browser.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width,
        height=900,
        deviceScaleFactor=1,
        mobile=width < 600,
    )
    await browser.call("Page.enable", session)
    await browser.call("Page.navigate", session, url=url)
    await asyncio.wait_for(browser.event("Page.loadEventFired"), 30)
    evaluated = await browser.call(
        "Runtime.evaluate", session, expression=measure, returnByValue=True
    )
    if "exceptionDetails" in evaluated:
        raise RuntimeError(f"measure failed: {evaluated['exceptionDetails']}")
    metrics = await browser.call("Page.getLayoutMetrics", session)
    height = int(metrics["cssContentSize"]["height"]) + 1
    await browser.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=width < 600,
    )
    shot = await browser.call("Page.captureScreenshot", session, format="png")
    await browser.call("Target.closeTarget", targetId=target)
    return Shot(evaluated["result"]["value"], base64.b64decode(shot["data"]))
