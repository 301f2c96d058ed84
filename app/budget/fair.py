"""The grant order: weighted fair queueing in front of a sliding window, decided at "now".

A permit is never assigned to a future slot. A request that cannot be granted now is queued
with a tag and told when to ask again (its predicted slot); it is granted when it asks and
fewer of the requests queued ahead of it are due (their predicted slot has come) than slots are
free. Those ahead still find their slots when they ask, and a slot nobody due claims (its
waiter left) goes to whoever asks next: the queue is work-conserving.

While API requests of two or more callers are queued, API grants are paced, one per
`seconds / limit` on a schedule (`pace`: the next paced slot, advanced one spacing per paced
grant, catching up at most half a spacing after a late one): a window that filled in a burst
would otherwise free its slots in a burst, and a caller asking one permit at a time would
always arrive after they were gone. Token requests are never paced.

Order: the broker's token requests first (FIFO), then API requests by virtual finish tag
(ties by id): `tag = max(V, last_tag[caller]) + cost`, `cost = TAG_SCALE / weight`, and V moves
to the tag of each head that is granted. A caller with many queued requests has tags far ahead
of V; a caller asking one at a time gets a tag near V and passes them, so waiting callers share
grants by weight (FIFO within one caller). Every waiter holds a lease (its predicted delay plus
`LEASE_GRACE_SECONDS`) and is dropped when it lapses, so a dead instance's waiters block nobody
for long. When nothing waits, V and the tags reset.

`FairWindow` is the in-process budget (the memory store, and the outage share through another
`Capacity`); `app/store/lua/budget_ask.lua` is the same algorithm on Redis.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from app.budget.model import (
    LEASE_GRACE_SECONDS,
    SNAPSHOT_MAX_GRANTS,
    TOKEN_CALLER,
    Answer,
    Outcome,
    PermitRequest,
    Snapshot,
    Usage,
    Window,
)

EPSILON = 0.001  # windows are closed intervals; the Lua scripts work in ms and add 1 ms
NOISE = 1e-9  # float noise on comparisons of times, taken the cautious way (Lua has whole ms)


@dataclass(frozen=True, slots=True)
class Waiter:
    """One queued request."""

    id: str
    caller: str
    tag: int  # API: virtual finish tag; token request: arrival number
    token: bool


class FairQueue:
    """Queued requests in grant order, their leases, and the virtual time."""

    def __init__(self) -> None:
        self._waiters: dict[str, Waiter] = {}
        self._due: dict[str, float] = {}  # predicted slot; dropped LEASE_GRACE_SECONDS after
        self._tokens: list[tuple[int, str]] = []
        self._api: list[tuple[int, str]] = []
        self.vtime = 0
        self.pace: float | None = None  # the next paced API slot, while callers compete
        self._last: dict[str, int] = {}
        self._count: Counter[str] = Counter()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def get(self, request_id: str) -> Waiter | None:
        """The queued request with this id, if any."""
        return self._waiters.get(request_id)

    def last_tag(self, caller: str) -> int | None:
        """The tag of `caller`'s latest queued request (None when it has none)."""
        return self._last.get(caller)

    def add(self, request: PermitRequest, due: float) -> Waiter:
        """Queue `request` behind the others by its tag, due at `due`."""
        if request.token:
            self._seq += 1
            waiter = Waiter(request.id, request.caller, self._seq, True)
            bisect.insort(self._tokens, (waiter.tag, waiter.id))
        else:
            tag = max(self.vtime, self._last.get(request.caller, 0)) + request.cost
            waiter = Waiter(request.id, request.caller, tag, False)
            bisect.insort(self._api, (tag, waiter.id))
            self._last[request.caller] = tag
        self._waiters[waiter.id] = waiter
        self._due[waiter.id] = due
        self._count[waiter.caller] += 1
        return waiter

    def renew(self, request_id: str, due: float) -> None:
        """A waiter's new predicted slot (its lease runs LEASE_GRACE_SECONDS past it)."""
        self._due[request_id] = due

    def ahead(self, waiter: Waiter) -> tuple[int, int]:
        """(token requests, API requests) queued ahead of `waiter`."""
        if waiter.token:
            return bisect.bisect_left(self._tokens, (waiter.tag, waiter.id)), 0
        return len(self._tokens), bisect.bisect_left(self._api, (waiter.tag, waiter.id))

    def due_ahead(self, waiter: Waiter, now: float) -> tuple[int, int]:
        """(token requests, API requests) ahead of `waiter` whose predicted slot has come."""
        tokens, api = self.ahead(waiter)
        due = self._due
        return (
            sum(1 for _, i in self._tokens[:tokens] if due[i] <= now + NOISE),
            sum(1 for _, i in self._api[:api] if due[i] <= now + NOISE),
        )

    def remove(self, request_id: str, *, granted: bool = False, restore: int | None = None) -> None:
        """Take a waiter out. A granted API head moves V to its tag; `restore` puts back the
        caller's previous last tag (a new arrival denied at once)."""
        waiter = self._waiters.pop(request_id, None)
        if waiter is None:
            return
        del self._due[request_id]
        queue = self._tokens if waiter.token else self._api
        index = bisect.bisect_left(queue, (waiter.tag, waiter.id))
        if granted and not waiter.token and index == 0:
            self.vtime = max(self.vtime, waiter.tag)
        del queue[index]
        self._count[waiter.caller] -= 1
        if self._count[waiter.caller] <= 0:
            del self._count[waiter.caller]
            self._last.pop(waiter.caller, None)
        elif restore is not None and self._last.get(waiter.caller) == waiter.tag:
            self._last[waiter.caller] = restore
        if not self._waiters:  # nothing waits: virtual time starts again
            self.vtime, self._seq, self.pace = 0, 0, None
            self._last.clear()

    def prune(self, now: float) -> None:
        """Drop every waiter whose lease has lapsed (its instance died or lost the store)."""
        lapsed = now - LEASE_GRACE_SECONDS - NOISE
        for request_id in [i for i, due in self._due.items() if due < lapsed]:
            self.remove(request_id)

    def api_callers(self) -> int:
        """How many callers (other than the broker's token requests) have requests queued."""
        return sum(1 for caller in self._count if caller != TOKEN_CALLER)

    def waiting(self) -> dict[str, int]:
        """Queued requests per caller."""
        return dict(self._count)


class Capacity(Protocol):
    """How many permits may be granted now, and when the next ones could be."""

    @property
    def limit(self) -> int:
        """The limit reported with a grant."""
        ...

    def free(self, now: float, pace: float | None) -> tuple[int, int]:
        """(permits free now for any request, of which API requests may take); `pace`: the
        next paced API slot (None: not paced)."""
        ...

    def next_slot(
        self, now: float, ahead: tuple[int, int], token: bool, pace: float | None
    ) -> float:
        """The earliest time at which a request with `ahead` queued before it can be granted,
        if every one ahead takes its slot as early as possible (none before `now`)."""
        ...

    def record(self, now: float, caller: str) -> None:
        """Count a grant made now."""
        ...

    def figures(self, now: float, token: bool) -> tuple[int, float]:
        """(remaining, reset seconds) as the upstream would report them now."""
        ...


class SlidingLog:
    """Grant times (sorted, as granted) with their callers, trimmed to the window."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.callers: list[str] = []

    def trim(self, now: float, seconds: float) -> None:
        """Forget grants that can no longer share a window with `now` (closed intervals)."""
        cut = bisect.bisect_left(self.times, now - seconds - NOISE)
        if cut:
            del self.times[:cut], self.callers[:cut]

    def add(self, now: float, caller: str) -> None:
        """A grant at `now` (never earlier than the last one)."""
        self.times.append(now)
        self.callers.append(caller)

    def by_caller(self) -> dict[str, int]:
        """Grants in the log per caller."""
        return dict(Counter(self.callers))


def projected_slots(
    grants: list[float], limit: int, seconds: float, start: float, count: int
) -> list[float]:
    """When the next `count` permits can be granted in a sliding window of `limit` per
    `seconds` that holds `grants` (sorted), each as early as it can be and none before
    `start`."""
    n = len(grants)
    future: list[float] = []
    for j in range(count):
        index = n + j - limit
        slot = start
        if index >= 0:
            earlier = grants[index] if index < n else future[index - n]
            slot = max(slot, earlier + seconds + EPSILON)
        future.append(slot)
    return future


@dataclass
class SlidingCapacity:
    """The exact sliding window (the shared budget's rule), paced under contention."""

    log: SlidingLog
    window: Window

    @property
    def limit(self) -> int:
        """The window's limit."""
        return self.window.limit

    def free(self, now: float, pace: float | None) -> tuple[int, int]:
        """See `Capacity.free` (the log is trimmed to `now` by the caller)."""
        times = self.log.times
        total, api = self.window.limit - len(times), self.window.api_limit - len(times)
        if pace is not None:
            api = min(api, 1 if now >= pace - NOISE else 0)
        return total, api

    def next_slot(
        self, now: float, ahead: tuple[int, int], token: bool, pace: float | None
    ) -> float:
        """See `Capacity.next_slot`."""
        tokens, api = ahead
        w, times = self.window, self.log.times
        if token:
            return projected_slots(times, w.limit, w.seconds, now, tokens + 1)[tokens]
        mine = projected_slots(times, w.api_limit, w.seconds, now, api + 1)
        every = projected_slots(times, w.limit, w.seconds, now, tokens + api + 1)
        spacing = spacing_of(w)
        slot = -math.inf if pace is None else pace - spacing
        for j in range(api + 1):
            paced = slot if pace is None else slot + spacing
            slot = max(mine[j], every[tokens + j], paced)
        return slot

    def record(self, now: float, caller: str) -> None:
        """See `Capacity.record`."""
        self.log.add(now, caller)

    def figures(self, now: float, token: bool) -> tuple[int, float]:
        """See `Capacity.figures`."""
        limit = self.window.limit if token else self.window.api_limit
        used = len(self.log.times)
        return max(0, limit - used), self.log.times[0] + self.window.seconds - now


def spacing_of(window: Window) -> float:
    """The pace of API grants while anything is queued."""
    return window.seconds / window.limit


def grantable(free: tuple[int, int], due: tuple[int, int], token: bool) -> bool:
    """Whether a request with `due` requests ahead of it fits in the `free` slots now."""
    tokens, api = due
    if token:
        return tokens < free[0]
    return api < free[1] and tokens + api < free[0]


class FairWindow:
    """An in-process budget: the fair queue in front of a capacity, with a cooldown.

    Not thread-safe and not async: each call decides at once, as one Lua script does.
    """

    def __init__(self) -> None:
        self.queue = FairQueue()
        self.log = SlidingLog()
        self.cooldown_until = -math.inf

    def capacity(self, window: Window) -> Capacity:
        """The rule grants are checked against (the exact sliding window here)."""
        return SlidingCapacity(self.log, window)

    def ask(self, now: float, window: Window, request: PermitRequest, max_wait: float) -> Answer:
        """Grant `request` now, queue it and say when to ask again, or deny it; with the
        window's grant ages when the request asks for a snapshot."""
        answer = self._decide(now, window, request, max_wait)
        if not request.snapshot or len(self.log.times) > SNAPSHOT_MAX_GRANTS:
            return answer
        ages = tuple(now - t for t in self.log.times)
        return dataclasses.replace(answer, snapshot=Snapshot(ages))

    def _decide(
        self, now: float, window: Window, request: PermitRequest, max_wait: float
    ) -> Answer:
        self.log.trim(now, window.seconds)
        self.queue.prune(now)
        capacity = self.capacity(window)
        waiter = self.queue.get(request.id)
        new = waiter is None
        restore = self.queue.last_tag(request.caller)
        if waiter is None and len(self.queue):
            waiter = self.queue.add(request, now)  # its place decides; the lease is set below
        ahead = self.queue.ahead(waiter) if waiter is not None else (0, 0)
        cooldown = self.cooldown_until - now
        due = self.queue.due_ahead(waiter, now) if waiter is not None else (0, 0)
        pace = None  # callers competing: API grants one per spacing
        if waiter is not None and self.queue.api_callers() >= 2:
            pace = -math.inf if self.queue.pace is None else self.queue.pace
        if cooldown <= 0 and grantable(capacity.free(now, pace), due, request.token):
            capacity.record(now, request.caller)
            if pace is not None and not request.token:
                spacing = spacing_of(window)
                self.queue.pace = max(pace, now - spacing / 2) + spacing
            if waiter is not None:
                self.queue.remove(waiter.id, granted=True)
            remaining, reset = capacity.figures(now, request.token)
            return Answer(Outcome.GRANTED, 0.0, remaining, reset)
        slot = capacity.next_slot(max(now, self.cooldown_until), ahead, request.token, pace)
        delay = slot - now
        if delay > max_wait + NOISE:
            if waiter is not None:
                self.queue.remove(waiter.id, restore=restore if new else None)
            return Answer(Outcome.DENIED, delay)
        if waiter is None:
            waiter = self.queue.add(request, now)
        self.queue.renew(waiter.id, now + delay)
        return Answer(Outcome.WAITING, delay)

    def leave(self, request_id: str) -> None:
        """A waiter that went away."""
        self.queue.remove(request_id)

    def cool_down(self, now: float, seconds: float) -> float:
        """Grant nothing for `seconds` (extends, never shortens); the cooldown left."""
        self.cooldown_until = max(self.cooldown_until, now + seconds)
        return self.cooldown_until - now

    def usage(self, now: float, window: Window) -> Usage:
        """Grants in the window (per caller), waiters per caller, the cooldown left."""
        self.log.trim(now, window.seconds)
        self.queue.prune(now)
        return Usage(
            len(self.log.times),
            max(0.0, self.cooldown_until - now),
            self.log.by_caller(),
            self.queue.waiting(),
        )
