"""`unless_disconnected`: a route's wait is cancelled when its client goes, and only then."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from starlette.requests import Request
from starlette.types import Message

from app.api.disconnect import unless_disconnected
from app.errors import ClientDisconnected


class Connection:
    """An ASGI receive channel: body chunks, then `http.disconnect` once `leave()` is called."""

    def __init__(self, *chunks: bytes) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            self.messages.put_nowait({"type": "http.request", "body": chunk, "more_body": more})
        self.receives = 0

    async def receive(self) -> Message:
        """The next message; waits while there is none, as a server does."""
        self.receives += 1
        return await self.messages.get()

    def leave(self) -> None:
        """The client closes its connection."""
        self.messages.put_nowait({"type": "http.disconnect"})

    def request(self) -> Request:
        """A request reading from this connection."""
        return Request({"type": "http", "method": "POST", "headers": []}, self.receive)


class Wait:
    """A wait that ends when told to, noting whether it was cancelled and cleaned up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cleaned_up = False

    async def __call__(self, result: str = "granted") -> str:
        try:
            await self.release.wait()
            return result
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # cleanup that itself awaits, as leaving the queue does
            self.cleaned_up = True
            raise


async def _settle(until: Callable[[], bool]) -> None:
    for _ in range(100):
        if until():
            return
        await asyncio.sleep(0)
    pytest.fail("the condition never held")


def _other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def _waiting(*chunks: bytes) -> tuple[Connection, Wait, asyncio.Task[str]]:
    """A route waiting in `unless_disconnected` on a connection with this body, once the
    watcher has read the whole body and waits for the next message."""
    connection, wait = Connection(*chunks), Wait()
    call = asyncio.create_task(unless_disconnected(connection.request(), wait()))
    await _settle(lambda: connection.receives == len(chunks) + 1)
    return connection, wait, call


async def test_the_result_comes_back_and_the_watcher_is_gone() -> None:
    """A wait that ends while the client stays returns its result; no task is left behind."""
    before = _other_tasks()
    _, wait, call = await _waiting(b"")
    wait.release.set()
    assert await call == "granted"
    assert _other_tasks() == before


async def test_a_disconnect_cancels_the_wait_after_its_cleanup() -> None:
    """When the client leaves, the wait is cancelled, its cleanup finishes before the call
    ends, and the call raises ClientDisconnected."""
    before = _other_tasks()
    connection, wait, call = await _waiting(b"")
    connection.leave()
    with pytest.raises(ClientDisconnected):
        await call
    assert wait.cleaned_up
    assert _other_tasks() == before


async def test_body_chunks_the_route_did_not_read_are_not_a_disconnect() -> None:
    """Chunks of a body nobody read are skipped; only `http.disconnect` ends the wait."""
    _, wait, call = await _waiting(b"a", b"b", b"c")
    assert not call.done()
    wait.release.set()
    assert await call == "granted"


async def test_the_waits_own_error_propagates() -> None:
    """An error of the wait (no permit in time, say) reaches the route as it is."""

    async def fails() -> str:
        await asyncio.sleep(0)
        raise LookupError("no permit")

    with pytest.raises(LookupError, match="no permit"):
        await unless_disconnected(Connection(b"").request(), fails())


async def test_cancelling_the_route_cancels_the_wait_and_the_watcher() -> None:
    """A server that cancels the request's task (at shutdown) cancels the wait too, after its
    cleanup, and leaves no task behind."""
    before = _other_tasks()
    _, wait, call = await _waiting(b"")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert wait.cleaned_up
    assert _other_tasks() == before


async def test_a_failing_receive_is_not_taken_for_a_disconnect() -> None:
    """A receive that raises says nothing about the client: the wait goes on to its result."""

    async def broken() -> Message:
        raise RuntimeError("receive failed")

    wait = Wait()
    request = Request({"type": "http", "method": "POST", "headers": []}, broken)
    call = asyncio.create_task(unless_disconnected(request, wait()))
    await asyncio.sleep(0.01)
    wait.release.set()
    assert await call == "granted"
