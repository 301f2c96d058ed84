"""The token cache: one token per `BrokerAuth`, one broker request in flight, any threads or loops.

Who waits on what:

- All state (the cached token, the flight in progress) sits behind one `threading.Lock`, held
  only for a few assignments, never across I/O, so asyncio code may take it too.
- A caller that finds no fresh token either starts a *flight* (one broker request) or joins the
  one in progress. A sync caller runs the request in its own thread and waits on a
  `threading.Event`; an async caller hands the request to a short-lived worker thread (with the
  SDK's one sync `httpx.Client`) and awaits an asyncio future that the flight resolves through
  `loop.call_soon_threadsafe`. So threads, tasks and tasks on several event loops all share the
  one request, and a cancelled task never strands the others: the worker thread finishes the
  request and wakes everyone whatever happens to the task that started it.
- A token is used until `expires_in` minus a margin (10 %, at most 30 s), measured on the
  monotonic clock from the moment the request was sent.
- Reporting a rejected token: if the cache already holds a different token, that one is the
  answer and nothing is sent; otherwise the token is dropped and one `POST /token/invalidate`
  fetches the next, however many threads and tasks report it at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from token_broker_client.errors import BrokerUnavailable

MAX_MARGIN_SECONDS = 30.0
MARGIN_SHARE = 0.1
ROUNDS = 3  # claims per call: a joined flight may bring back the very token being reported


def fresh_for(expires_in: float) -> float:
    """How long a token with `expires_in` seconds left is used: less a margin of 10 %, <= 30 s."""
    return max(0.0, expires_in - min(MAX_MARGIN_SECONDS, MARGIN_SHARE * expires_in))


@dataclass(frozen=True)
class CachedToken:
    """A token and the monotonic time until which it is used."""

    access_token: str = field(repr=False)
    expires_in: int
    fresh_until: float


Fetch = Callable[[str | None], CachedToken]  # (rejected token or None) -> the broker's token


def abandoned() -> BrokerUnavailable:
    """The error of a flight whose thread stopped without an answer (interpreter exit, say)."""
    return BrokerUnavailable("the request to the broker was abandoned")


class _Flight:
    """One broker request in progress, and everybody waiting for its answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.done = threading.Event()
        self.token: CachedToken | None = None
        self.error: BaseException | None = None

    def waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future of `loop` that resolves when the flight ends (at once if it has)."""
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not self._finished:
                self._waiters.append((loop, future))
                return future
        future.set_result(None)
        return future

    def finish(self, token: CachedToken | None, error: BaseException | None) -> None:
        """Record the answer and wake every waiter, in whichever thread or loop it waits."""
        with self._lock:
            self.token, self.error, self._finished = token, error, True
            waiters, self._waiters = self._waiters, []
        self.done.set()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop is closed: nothing waits there any more
                pass

    def outcome(self) -> CachedToken:
        """The token the flight brought, or its error raised."""
        if self.token is not None:
            return self.token
        raise self.error if self.error is not None else abandoned()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # a waiter whose task was cancelled has a cancelled future
        future.set_result(None)


class TokenCache:
    """The shared token of one `BrokerAuth`; see the module docstring for who waits on what."""

    def __init__(self, fetch: Fetch, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._token: CachedToken | None = None
        self._flight: _Flight | None = None

    def clear(self) -> None:
        """Forget the cached token (a flight in progress still delivers its answer)."""
        with self._lock:
            self._token = None

    def get(self, rejected: str | None = None) -> str:
        """A fresh token (not `rejected`), fetching one in this thread if nobody is."""
        for _ in range(ROUNDS - 1):
            token, flight, lead = self._claim(rejected)
            if token is not None:
                return token
            assert flight is not None
            if lead:
                self._fly(flight, rejected)
            else:
                flight.done.wait()
            answer = flight.outcome().access_token
            if answer != rejected:
                return answer
        return self._last_round()

    async def aget(self, rejected: str | None = None) -> str:
        """A fresh token (not `rejected`) without blocking the running loop."""
        loop = asyncio.get_running_loop()
        for _ in range(ROUNDS - 1):
            token, flight, lead = self._claim(rejected)
            if token is not None:
                return token
            assert flight is not None
            waiter = flight.waiter(loop)
            if lead:
                self._fly_in_thread(flight, rejected)
            await waiter
            answer = flight.outcome().access_token
            if answer != rejected:
                return answer
        return self._last_round()

    def _last_round(self) -> str:
        """After ROUNDS - 1 flights brought back `rejected`: the cached token, whatever it is."""
        with self._lock:
            if self._token is not None:
                return self._token.access_token
        raise abandoned()

    def _claim(self, rejected: str | None) -> tuple[str | None, _Flight | None, bool]:
        """(a usable token, None, False), or (None, the flight to wait for, whether we lead it)."""
        with self._lock:
            token = self._token
            if token is not None:
                if rejected is not None and token.access_token == rejected:
                    self._token = token = None  # reported: nobody else gets it from here
                elif token.fresh_until > self._clock():
                    return token.access_token, None, False
            if self._flight is not None:
                return None, self._flight, False
            self._flight = _Flight()
            return None, self._flight, True

    def _fly_in_thread(self, flight: _Flight, rejected: str | None) -> None:
        """Run `flight` in a worker thread of its own, so no task's cancellation can stop it."""
        worker = threading.Thread(
            target=self._fly, args=(flight, rejected), name="token-broker-fetch", daemon=True
        )
        try:
            worker.start()
        except BaseException as exc:  # no thread to be had: fail this flight, not every later one
            self._end(flight, None, exc if isinstance(exc, Exception) else None)
            raise

    def _fly(self, flight: _Flight, rejected: str | None) -> None:
        """Make the broker request of `flight`, store the answer, wake the waiters."""
        token: CachedToken | None = None
        error: BaseException | None = None
        try:
            token = self._fetch(rejected)
        except Exception as exc:  # shared with every waiter, as concurrent.futures does
            error = exc
        finally:
            self._end(flight, token, error)

    def _end(self, flight: _Flight, token: CachedToken | None, error: BaseException | None) -> None:
        """Store the flight's answer and wake its waiters."""
        with self._lock:
            if token is not None:
                self._token = token
            self._flight = None
        flight.finish(token, error)
