"""The grant order and the outage share, pure: against brute-force models and simulations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.budget.fair import FairQueue, FairWindow, SlidingLog
from app.budget.model import (
    LEASE_GRACE_SECONDS,
    SNAPSHOT_MAX_GRANTS,
    Outcome,
    PermitRequest,
    Snapshot,
    Window,
    tag_cost,
)
from app.budget.outage import Observed, share_capacity
from tests.budget.test_limiter import worst_window

CALLERS = ["a", "b", "c"]


@dataclass
class Model:
    """The queue's rules written the slow, obvious way."""

    entries: list[dict[str, object]] = field(default_factory=list)
    vtime: int = 0
    last: dict[str, int] = field(default_factory=dict)
    seq: int = 0

    def order(self) -> list[str]:
        """Ids in grant order: token requests by arrival, then API requests by (tag, id)."""
        ranked = sorted(self.entries, key=lambda e: (not e["token"], e["tag"], e["id"]))
        return [str(e["id"]) for e in ranked]

    def add(self, request_id: str, caller: str, cost: int, token: bool) -> None:
        """Tag = max(V, last[caller]) + cost; token requests get the next arrival number."""
        if token:
            self.seq += 1
            tag = self.seq
        else:
            tag = max(self.vtime, self.last.get(caller, 0)) + cost
            self.last[caller] = tag
        self.entries.append({"id": request_id, "caller": caller, "tag": tag, "token": token})

    def remove(self, request_id: str, granted: bool) -> None:
        """A granted API head moves V; a caller with nothing left forgets its tag."""
        entry = next(e for e in self.entries if e["id"] == request_id)
        api = [
            i for i in self.order() if not next(e for e in self.entries if e["id"] == i)["token"]
        ]
        if granted and not entry["token"] and api and api[0] == request_id:
            self.vtime = max(self.vtime, int(entry["tag"]))  # type: ignore[call-overload]
        self.entries.remove(entry)
        if not any(e["caller"] == entry["caller"] for e in self.entries):
            self.last.pop(str(entry["caller"]), None)
        if not self.entries:
            self.vtime, self.seq, self.last = 0, 0, {}


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "grant", "drop"]),
        st.sampled_from(CALLERS),
        st.sampled_from([0.5, 1.0, 3.0]),  # weight
        st.booleans(),  # token request
        st.integers(0, 50),  # which queued request a grant or drop takes
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations)
def test_the_queue_orders_like_the_brute_force_model(
    ops: list[tuple[str, str, float, bool, int]],
) -> None:
    """After any sequence of arrivals, grants and departures, every waiter has the same
    requests ahead of it as in the brute-force model, and virtual time agrees."""
    queue, model = FairQueue(), Model()
    for step, (op, caller, weight, token, pick) in enumerate(ops):
        if op == "add":
            request = PermitRequest(f"r{step:03d}", caller, tag_cost(weight), token)
            queue.add(request, 0.0)
            model.add(request.id, caller, request.cost, token)
        elif model.entries:
            victim = model.order()[pick % len(model.entries)]
            queue.remove(victim, granted=op == "grant")
            model.remove(victim, op == "grant")
        order = model.order()
        for index, request_id in enumerate(order):
            waiter = queue.get(request_id)
            assert waiter is not None
            tokens, api = queue.ahead(waiter)
            assert tokens + api == index
        assert queue.vtime == model.vtime and len(queue) == len(order)


def saturate(weights: dict[str, float], heavy_waiting: int, seconds: float) -> dict[str, int]:
    """A window of 10 per 5 s for `seconds`: `light` asks one request at a time, `heavy` keeps
    `heavy_waiting` queued; everyone asks again exactly when told. Grants per caller."""
    budget, window = FairWindow(), Window(10, 5.0)
    pending: dict[str, tuple[float, str]] = {}  # id -> (next ask, caller)
    counter = 0

    def arrive(caller: str, now: float) -> None:
        nonlocal counter
        counter += 1
        pending[f"{caller}{counter:05d}"] = (now, caller)

    arrive("light", 0.0)
    for _ in range(heavy_waiting):
        arrive("heavy", 0.0)
    grants = {"light": 0, "heavy": 0}
    while pending:
        request_id, (now, caller) = min(pending.items(), key=lambda item: item[1][0])
        if now > seconds:
            break
        cost = tag_cost(weights[caller])
        answer = budget.ask(now, window, PermitRequest(request_id, caller, cost), 1000.0)
        if answer.outcome is Outcome.GRANTED:
            del pending[request_id]
            grants[caller] += 1
            arrive(caller, now)  # light asks again; heavy tops its queue up
        else:
            pending[request_id] = (now + answer.delay, caller)
    return grants


@pytest.mark.parametrize(("heavy_weight", "light_share"), [(1.0, 0.5), (3.0, 0.25)])
def test_a_light_caller_gets_its_weighted_share_beside_a_heavy_one(
    heavy_weight: float, light_share: float
) -> None:
    """A caller asking one permit at a time beside one keeping 16 queued gets its share by
    weight (1:1 half, 1:3 a quarter), not what first-come-first-served would leave it."""
    grants = saturate({"light": 1.0, "heavy": heavy_weight}, 16, 120.0)
    total = sum(grants.values())
    assert total >= 230  # 10 per 5 s for 120 s: the queue wastes no slot
    assert grants["light"] / total == pytest.approx(light_share, abs=0.03)


def test_token_requests_come_first_and_keep_their_reserve() -> None:
    """API requests stop at limit - reserve; a token request behind queued API requests is
    granted at once from the reserve."""
    budget, window = FairWindow(), Window(4, 10.0, reserve=1)
    answers = [budget.ask(0.0, window, PermitRequest(f"a{i}", "a", 1000), 5.0) for i in range(5)]
    assert [a.outcome for a in answers] == [Outcome.GRANTED] * 3 + [Outcome.DENIED] * 2
    token = budget.ask(0.1, window, PermitRequest("t", "-", 1000, token=True), 5.0)
    assert token.outcome is Outcome.GRANTED and token.remaining == 0


def test_a_waiter_that_never_asks_again_blocks_nobody_past_its_lease() -> None:
    """A queued request whose instance died is dropped LEASE_GRACE_SECONDS after its predicted
    slot; the request behind it is then granted."""
    budget, window = FairWindow(), Window(1, 1.0)
    budget.ask(0.0, window, PermitRequest("first", "a", 1000), 0)
    dead = budget.ask(0.0, window, PermitRequest("w1-dead", "a", 1000), 10)
    alive = budget.ask(0.0, window, PermitRequest("w2-alive", "b", 1000), 10)
    assert dead.delay < alive.delay
    held = budget.ask(dead.delay + 0.5, window, PermitRequest("w2-alive", "b", 1000), 10)
    assert held.outcome is Outcome.WAITING  # the dead one still holds the free slot
    later = dead.delay + LEASE_GRACE_SECONDS + 0.01
    granted = budget.ask(later, window, PermitRequest("w2-alive", "b", 1000), 10)
    assert granted.outcome is Outcome.GRANTED


@st.composite
def outages(draw: st.DrawFn) -> tuple[int, float, int, list[float], float, float, list[float]]:
    """A fleet limit, window and size; shared grants that respect it (some after the last
    snapshot); the snapshot time; the death; the instances' local asks after it."""
    limit = draw(st.integers(2, 12))
    window = draw(st.floats(1.0, 5.0))
    fleet = draw(st.integers(1, 4))
    gaps = draw(st.lists(st.floats(0.0, 1.5), min_size=0, max_size=40))
    shared: list[float] = []
    t = 0.0
    for gap in gaps:
        t += gap
        if worst_window([*shared, t], window) <= limit:
            shared.append(t)
    death = t + draw(st.floats(0.0, 1.0))
    snapshot_at = draw(st.floats(max(0.0, death - 3.0), death))
    asks = draw(st.lists(st.floats(0.0, 3 * window), max_size=60))
    return limit, window, fleet, shared, snapshot_at, death, sorted(death + a for a in asks)


@settings(max_examples=400, deadline=None)
@given(case=outages())
def test_the_outage_share_keeps_the_fleet_within_the_limit(
    case: tuple[int, float, int, list[float], float, float, list[float]],
) -> None:
    """Whatever the fleet granted before Redis died (seen or not by the last snapshot), `fleet`
    instances granting greedily from their shares never put more than `limit` grants, shared
    and local together, in any window."""
    limit, seconds, fleet, shared, snapshot_at, death, asks = case
    window = Window(limit, seconds)
    ages = tuple(snapshot_at - t for t in shared if snapshot_at - seconds <= t <= snapshot_at)
    observed = Observed(Snapshot(ages), snapshot_at, snapshot_at)
    local: list[float] = []
    for instance in range(fleet):
        since = death + 0.01 * instance  # each notices the death a little later
        capacity = share_capacity(window, fleet, observed, since, SlidingLog())
        for t in asks:
            if t >= since and capacity.free(t)[0] > 0:
                capacity.record(t, "a")
                local.append(t)
    assert worst_window(shared + local, seconds) <= limit


def test_an_instance_that_never_saw_the_window_waits_one_window_then_takes_its_share() -> None:
    """Without any snapshot, the whole limit counts as granted at the outage's start: nothing
    for one window, then limit // fleet per window."""
    capacity = share_capacity(Window(10, 5.0), 3, None, 100.0, SlidingLog())
    assert capacity.free(104.9) == (0, 0)
    assert capacity.free(105.01) == (3, 3)
    assert capacity.limit == 3
    assert math.isinf(
        share_capacity(Window(2, 5.0), 3, None, 0.0, SlidingLog()).next_slot(10.0, (0, 0), False)
    )


def test_a_snapshot_lists_the_window_only_up_to_its_cap() -> None:
    """A snapshot gives the ages of the window's grants; past SNAPSHOT_MAX_GRANTS it gives none
    (an outage then counts the window as full), as budget_ask.lua does."""
    budget, window = FairWindow(), Window(SNAPSHOT_MAX_GRANTS + 5, 60.0)
    for i in range(3):
        budget.ask(float(i), window, PermitRequest(f"g{i}", "a", 1000), 0)
    listed = budget.ask(3.0, window, PermitRequest("s", "a", 1000, snapshot=True), 0)
    assert listed.snapshot == Snapshot((3.0, 2.0, 1.0, 0.0))
    for i in range(SNAPSHOT_MAX_GRANTS):
        budget.ask(4.0, window, PermitRequest(f"h{i}", "a", 1000), 0)
    assert budget.ask(4.0, window, PermitRequest("t", "a", 1000, snapshot=True), 0).snapshot is None
