"""One broker request for everybody: threads, tasks and several event loops share one BrokerAuth."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import httpx
from token_broker_client import BrokerAuth

from tests.client.support import INVALIDATE, METHODS, TOKEN, Setup
from tests.support.tls import NO_TLS

THREADS = 12
TASKS = 8  # per event loop
LOOPS = 2  # event loops of their own, each in a thread, beside the test's loop


def in_threads(work: Callable[[], object], count: int) -> list[threading.Thread]:
    """Start `count` threads running `work`, released together by a barrier."""
    barrier = threading.Barrier(count)

    def run() -> None:
        barrier.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


async def joined(threads: list[threading.Thread]) -> None:
    """Wait for `threads` without blocking the loop that serves the broker."""
    await asyncio.to_thread(lambda: [thread.join(30) for thread in threads])
    assert not any(thread.is_alive() for thread in threads)


async def test_cold_start_from_threads_tasks_and_loops_is_one_broker_request(
    setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """Threads, tasks on the test's loop and tasks on two other loops asking at once for a cold
    token cause one broker request and all get the same token."""
    await setup.emulator.configure(token_latency=0.5)  # the one request outlasts every arrival
    auth = make_auth(setup.url)
    tokens: list[str] = []
    lock = threading.Lock()

    def keep(token: str) -> None:
        with lock:
            tokens.append(token)

    async def tasks() -> None:
        for token in await asyncio.gather(*(auth.atoken() for _ in range(TASKS))):
            keep(token)

    before = await setup.broker_requests()
    threads = in_threads(lambda: keep(auth.token()), THREADS)
    threads += in_threads(lambda: asyncio.run(tasks()), LOOPS)
    await tasks()
    await joined(threads)
    after = await setup.broker_requests()
    assert len(tokens) == THREADS + TASKS * (LOOPS + 1)
    assert len(set(tokens)) == 1
    assert after[TOKEN] - before[TOKEN] == 1
    assert (await setup.emulator.stats())["token_requests"] == 1


async def test_a_revoked_token_seen_by_many_callers_is_reported_once(
    setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """Threads and tasks that all get 401 for the same revoked token cause one invalidation at
    the broker and one upstream token request, and every call ends 200 after one retry."""
    auth = make_auth(setup.url)
    await auth.atoken()
    await setup.emulator.revoke()
    await setup.emulator.configure(token_latency=0.3)  # reports arrive while it is fetched
    url = setup.emulator.base_url + METHODS
    outcomes: list[tuple[int, int]] = []  # (status, responses before it)
    lock = threading.Lock()

    def sync_call() -> None:
        with httpx.Client(auth=auth, verify=NO_TLS, timeout=10) as client:
            response = client.get(url)
        with lock:
            outcomes.append((response.status_code, len(response.history)))

    async def async_call(client: httpx.AsyncClient) -> None:
        response = await client.get(url)
        outcomes.append((response.status_code, len(response.history)))

    before, stats = await setup.broker_requests(), await setup.emulator.stats()
    threads = in_threads(sync_call, THREADS)
    async with httpx.AsyncClient(auth=auth, verify=NO_TLS, timeout=10) as client:
        await asyncio.gather(*(async_call(client) for _ in range(TASKS)))
    await joined(threads)
    after, stats_after = await setup.broker_requests(), await setup.emulator.stats()
    assert outcomes == [(200, 1)] * (THREADS + TASKS)
    assert after[INVALIDATE] - before[INVALIDATE] == 1
    assert after[TOKEN] == before[TOKEN]
    assert stats_after["token_requests"] - stats["token_requests"] == 1
    assert stats_after["api_unauthorized"] - stats["api_unauthorized"] == THREADS + TASKS


async def test_a_cancelled_task_does_not_strand_the_others(
    setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """The task that started the broker request is cancelled; the tasks waiting on the same
    request still get the token, and no second request is made."""
    await setup.emulator.configure(token_latency=0.5)
    auth = make_auth(setup.url)
    before = await setup.broker_requests()
    leader = asyncio.create_task(auth.atoken())
    await asyncio.sleep(0.1)  # the leader's request is under way
    followers = [asyncio.create_task(auth.atoken()) for _ in range(5)]
    await asyncio.sleep(0.05)
    leader.cancel()
    tokens = await asyncio.gather(*followers)
    after = await setup.broker_requests()
    assert leader.cancelled()
    assert len(set(tokens)) == 1
    assert await auth.atoken() == tokens[0]
    assert after[TOKEN] - before[TOKEN] == 1
