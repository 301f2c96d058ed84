"""Stop waiting for a caller that has gone: cancel a route's long wait when its client disconnects.

Starlette does not cancel a route whose client goes away: a request waiting for a budget permit
would keep its place in the queue, and take the permit when its turn came, for nobody. Here the
wait runs beside a watcher that awaits the request's next ASGI message. Once the route has what
it needs of the request (FastAPI reads a JSON body before the route runs; a route without one
leaves it to the watcher, which skips it), the next message is `http.disconnect`, which the
server sends only when the connection is lost (or after the response, when the watcher is gone).
Awaiting it costs nothing while the client stays: no polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from app.errors import ClientDisconnected

T = TypeVar("T")


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # the rest of a body the route did not read


async def unless_disconnected(request: Request, wait: Coroutine[Any, Any, T]) -> T:
    """The result of `wait`, which is cancelled if the client disconnects first (then
    ClientDisconnected). Errors of `wait` propagate; the watcher never outlives this call."""
    work = asyncio.ensure_future(wait)
    watcher = asyncio.ensure_future(_until_disconnected(request.receive))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            if watcher.exception() is None:  # the client is gone (a failed receive tells nothing)
                work.cancel()
            await asyncio.wait((work,))
    finally:  # also when this request's own task is cancelled (a server shutting down)
        watcher.cancel()
        work.cancel()
        # Let both finish: a cancelled wait withdraws its reservation before it ends.
        await asyncio.wait((work, watcher))
        if not watcher.cancelled():
            watcher.exception()  # retrieved: a receive that failed has nothing to report
    if work.cancelled():
        raise ClientDisconnected("the client disconnected before the wait ended")
    return work.result()
