"""The store ports' behaviour, the same tests on the memory store and on a real Redis.

Every test here runs twice (`[memory]`, `[redis]`): the core relies on these semantics whichever
adapter `app.main.build_store` picks. On Redis, `peer` is a second store on the same key prefix,
i.e. another broker instance; the memory store is its own peer. Redis-only concerns (key TTLs,
failover, topologies) stay in their own modules.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

import pytest

from app.budget.model import Outcome, PermitRequest, Window
from app.tokens.model import (
    ChangeKind,
    DiscardOutcome,
    HoldReason,
    Lease,
    Token,
    TokenChange,
    digest,
)
from tests.support.stores import Backend, Feed, open_backend

CLIENT = "checkout"
OTHER = "payouts"
SHORT = 0.3  # seconds: a TTL the Redis case really waits out
FLOOR = 0.3  # the forced-refresh floor (min_forced_refresh_interval_seconds)
LONG = 30.0  # a TTL no test outlives


@pytest.fixture
async def backend(store_config: dict[str, Any]) -> AsyncIterator[Backend]:
    """A started store of each kind ("memory", "redis" with a fresh key prefix)."""
    async with open_backend(store_config) as opened:
        yield opened


def token(backend: Backend, name: str, expires_in: float = 3600.0) -> Token:
    """A token obtained now that expires in `expires_in` seconds."""
    now = backend.clock.time()
    return Token(name, expires_at=now + expires_in, obtained_at=now)


def assert_same_token(actual: Token | None, expected: Token) -> None:
    """Same token, type and times (Redis moves the times through its own clock: ~ms apart)."""
    assert actual is not None
    assert (actual.access_token, actual.token_type) == (expected.access_token, expected.token_type)
    assert actual.expires_at == pytest.approx(expected.expires_at, abs=0.05)
    assert actual.obtained_at == pytest.approx(expected.obtained_at, abs=0.05)


# -- tokens: load and save ------------------------------------------------------------------------


async def test_started_store_answers_and_knows_no_token(backend: Backend) -> None:
    """A fresh store answers ping and holds neither a token nor a hold for any client."""
    assert await backend.store.ping()
    record = await backend.store.load(CLIENT)
    assert (record.token, record.hold) == (None, None)


async def test_saved_token_is_loaded_by_every_instance(backend: Backend) -> None:
    """save() returns the token it stored, and another instance loads it with its times."""
    saved = Token("tok-saved", backend.clock.time() + 600, backend.clock.time() - 5, "bearer")
    assert await backend.store.save(CLIENT, saved) == saved
    assert_same_token((await backend.peer.load(CLIENT)).token, saved)
    assert (await backend.peer.load(OTHER)).token is None


async def test_save_keeps_the_later_expiring_token(backend: Backend) -> None:
    """A writer whose lease lapsed saves an older token after a newer one: the newer one stays,
    and the late writer is told which token won."""
    late_writer = token(backend, "tok-fetched-first", expires_in=2000)
    newer = token(backend, "tok-fetched-second", expires_in=3000)
    assert await backend.peer.save(CLIENT, newer) == newer
    winner = await backend.store.save(CLIENT, late_writer)
    assert_same_token(winner, newer)
    assert_same_token((await backend.store.load(CLIENT)).token, newer)
    newest = token(backend, "tok-fetched-third", expires_in=3500)
    assert await backend.store.save(CLIENT, newest) == newest
    assert_same_token((await backend.peer.load(CLIENT)).token, newest)


# -- tokens: discard (compare-and-delete with the forced-refresh floor) ---------------------------


async def test_discard_deletes_only_the_current_token(backend: Backend) -> None:
    """Reporting another token is NOT_CURRENT and keeps the stored one; reporting the stored
    token deletes it for every instance."""
    current = token(backend, "tok-current")
    await backend.store.save(CLIENT, current)
    other = await backend.store.discard(CLIENT, "tok-previous", FLOOR)
    assert other.outcome is DiscardOutcome.NOT_CURRENT
    assert_same_token((await backend.peer.load(CLIENT)).token, current)
    assert (await backend.peer.discard(CLIENT, "tok-current", FLOOR)).outcome is (
        DiscardOutcome.DISCARDED
    )
    assert (await backend.store.load(CLIENT)).token is None


@pytest.mark.parametrize(
    "reported",
    [
        "",
        "tok-unicodf",  # differs from the stored one in one letter
        "tok-unicod",  # a prefix
        "tok-unicode-and-more",
        "tok-unicode\x00",
        "Tok-Unicode",
        "tok-ünïcode",  # looks alike, non-ASCII
        "🔑" * 40,
        unicodedata.normalize("NFD", "tok-ünïcodé"),
    ],
)
async def test_discard_of_any_other_text_is_not_current(backend: Backend, reported: str) -> None:
    """Any text that is not exactly the stored token (non-ASCII, prefixes, NUL, empty) is
    NOT_CURRENT and deletes nothing. (The stored token is a legal RFC 6750 token: the Redis
    store never serves another kind, see test_tokens_at_rest.)"""
    stored = token(backend, "tok-unicode")
    await backend.store.save(OTHER, token(backend, "tok-of-another-client"))
    assert (await backend.store.discard(CLIENT, reported, FLOOR)).outcome is (
        DiscardOutcome.NOT_CURRENT  # no token stored yet
    )
    await backend.store.save(CLIENT, stored)
    assert (await backend.store.discard(CLIENT, reported, FLOOR)).outcome is (
        DiscardOutcome.NOT_CURRENT
    )
    assert_same_token((await backend.store.load(CLIENT)).token, stored)
    discarded = await backend.store.discard(CLIENT, "tok-unicode", FLOOR)
    assert discarded.outcome is DiscardOutcome.DISCARDED  # only the exact text


async def test_discard_inside_the_forced_refresh_floor_is_throttled(backend: Backend) -> None:
    """After a forced refresh, discarding the next token within `min_interval` is THROTTLED with
    the time left, keeps the token, and succeeds once the floor has passed."""
    await backend.store.save(CLIENT, token(backend, "tok-1"))
    assert (await backend.store.discard(CLIENT, "tok-1", FLOOR)).outcome is (
        DiscardOutcome.DISCARDED
    )
    second = token(backend, "tok-2")
    await backend.store.save(CLIENT, second)
    throttled = await backend.peer.discard(CLIENT, "tok-2", FLOOR)  # the floor is fleet-wide
    assert throttled.outcome is DiscardOutcome.THROTTLED
    assert backend.about(throttled.retry_after, FLOOR)
    assert_same_token((await backend.store.load(CLIENT)).token, second)
    await backend.elapse(FLOOR / 3)
    later = await backend.store.discard(CLIENT, "tok-2", FLOOR)
    assert later.outcome is DiscardOutcome.THROTTLED
    assert later.retry_after <= FLOOR * 2 / 3 + 1e-6
    # A report of a token that is not current is answered as such, throttled or not.
    stale = await backend.store.discard(CLIENT, "tok-1", FLOOR)
    assert stale.outcome is DiscardOutcome.NOT_CURRENT
    await backend.elapse(FLOOR * 2 / 3 + 0.01)
    assert (await backend.store.discard(CLIENT, "tok-2", FLOOR)).outcome is (
        DiscardOutcome.DISCARDED
    )


async def test_a_zero_floor_never_throttles(backend: Backend) -> None:
    """With `min_forced_refresh_interval_seconds = 0` every current token may be discarded."""
    for name in ("tok-a", "tok-b", "tok-c"):
        await backend.store.save(CLIENT, token(backend, name))
        assert (await backend.store.discard(CLIENT, name, 0)).outcome is DiscardOutcome.DISCARDED


# -- holds ----------------------------------------------------------------------------------------


async def test_hold_is_seen_by_every_instance_until_it_expires(backend: Backend) -> None:
    """A hold reaches every instance with its reason and time left, beside the token; it ends
    by itself after `seconds`."""
    stored = token(backend, "tok-held")
    await backend.store.save(CLIENT, stored)
    await backend.store.hold(CLIENT, HoldReason.UNAVAILABLE, SHORT)
    record = await backend.peer.load(CLIENT)
    assert_same_token(record.token, stored)
    assert record.hold is not None and record.hold.reason is HoldReason.UNAVAILABLE
    assert backend.about(record.hold.remaining, SHORT)
    assert (await backend.peer.load(OTHER)).hold is None
    await backend.elapse(SHORT + 0.05)
    after = await backend.peer.load(CLIENT)
    assert after.hold is None
    assert_same_token(after.token, stored)


async def test_the_latest_hold_decides(backend: Backend) -> None:
    """A new hold replaces the previous one, shorter or longer, and a hold of 0 s ends it."""
    await backend.store.hold(CLIENT, HoldReason.UNAVAILABLE, LONG)
    await backend.store.hold(CLIENT, HoldReason.REJECTED, 10.0)
    hold = (await backend.peer.load(CLIENT)).hold
    assert hold is not None and hold.reason is HoldReason.REJECTED
    assert backend.about(hold.remaining, 10.0)
    await backend.store.hold(CLIENT, HoldReason.UNAVAILABLE, LONG)
    hold = (await backend.peer.load(CLIENT)).hold
    assert hold is not None and hold.reason is HoldReason.UNAVAILABLE
    assert hold.remaining > 10.0
    await backend.store.hold(CLIENT, HoldReason.REJECTED, 0)  # min_forced_refresh_interval 0
    assert (await backend.peer.load(CLIENT)).hold is None


async def test_a_sub_millisecond_hold_is_accepted(backend: Backend) -> None:
    """A hold shorter than Redis' 1 ms resolution is taken (and lapses), not an error."""
    await backend.store.hold(CLIENT, HoldReason.REJECTED, 0.0004)
    await backend.elapse(0.01)
    assert (await backend.store.load(CLIENT)).hold is None


async def test_a_newer_token_ends_the_hold_and_a_losing_save_does_not(backend: Backend) -> None:
    """Saving a token that wins ends the client's hold; a save that loses leaves it in place."""
    await backend.store.save(CLIENT, token(backend, "tok-long", expires_in=3600))
    await backend.store.hold(CLIENT, HoldReason.UNAVAILABLE, LONG)
    await backend.store.save(CLIENT, token(backend, "tok-short", expires_in=60))  # loses
    assert (await backend.peer.load(CLIENT)).hold is not None
    await backend.store.save(CLIENT, token(backend, "tok-longer", expires_in=7200))
    record = await backend.peer.load(CLIENT)
    assert record.hold is None
    assert record.token is not None and record.token.access_token == "tok-longer"


# -- the refresh lock -----------------------------------------------------------------------------


async def test_lock_is_exclusive_until_released(backend: Backend) -> None:
    """One instance holds a client's lock; others are told how long it may last; after the
    release (True, once) the next one gets it."""
    lease = await backend.store.acquire(CLIENT, LONG)
    assert lease.acquired and lease.client == CLIENT
    busy = await backend.peer.acquire(CLIENT, LONG)
    assert not busy.acquired
    assert backend.about(busy.wait, LONG)
    assert (await backend.peer.acquire(OTHER, LONG)).acquired  # each client has its own lock
    assert await backend.store.release(lease) is True
    assert await backend.store.release(lease) is False  # no longer its lock
    nxt = await backend.peer.acquire(CLIENT, LONG)
    assert nxt.acquired and nxt.owner != lease.owner  # a fresh owner id per acquisition
    assert await backend.peer.release(nxt) is True


async def test_lock_lapses_after_its_ttl(backend: Backend) -> None:
    """A holder that never releases (it died) blocks the client only for the lock's TTL."""
    assert (await backend.store.acquire(CLIENT, SHORT)).acquired
    await backend.elapse(SHORT + 0.05)
    assert (await backend.peer.acquire(CLIENT, LONG)).acquired


async def test_release_after_the_lease_lapsed_returns_false(backend: Backend) -> None:
    """Releasing a lease that lapsed reports False (a refresh slower than the lock's TTL)."""
    lease = await backend.store.acquire(CLIENT, SHORT)
    assert lease.acquired
    await backend.elapse(SHORT + 0.05)
    assert await backend.store.release(lease) is False
    assert (await backend.peer.acquire(CLIENT, LONG)).acquired


async def test_release_never_frees_another_owners_lock(backend: Backend) -> None:
    """A lapsed holder's release is False and leaves the lock of the instance that took over."""
    lapsed = await backend.store.acquire(CLIENT, SHORT)
    await backend.elapse(SHORT + 0.05)
    taken_over = await backend.peer.acquire(CLIENT, LONG)
    assert taken_over.acquired
    assert await backend.store.release(lapsed) is False
    assert not (await backend.store.acquire(CLIENT, LONG)).acquired  # still the new owner's
    busy = await backend.store.acquire(CLIENT, LONG)
    assert await backend.store.release(busy) is False  # a lease never acquired frees nothing
    assert not (await backend.store.acquire(CLIENT, LONG)).acquired
    assert await backend.store.release(Lease(CLIENT, "forged-owner-id")) is False
    assert await backend.peer.release(taken_over) is True


# -- the change feed ------------------------------------------------------------------------------


async def test_changes_reach_the_subscribers_of_every_instance(backend: Backend) -> None:
    """SAVED, DISCARDED and RELEASED reach every subscriber in order, with the token's digest;
    nothing is announced for a losing save, a hold, a refused discard or a lapsed release."""
    mine, theirs = Feed(), Feed()
    backend.store.subscribe(mine)
    backend.peer.subscribe(theirs)
    first, second = token(backend, "tok-first"), token(backend, "tok-second", 7200)
    await backend.store.save(CLIENT, first)
    await backend.store.save(CLIENT, token(backend, "tok-stale", 60))  # loses: silent
    await backend.store.hold(CLIENT, HoldReason.UNAVAILABLE, LONG)  # silent
    await backend.store.discard(CLIENT, "tok-stale", LONG)  # not current: silent
    await backend.store.discard(CLIENT, "tok-first", LONG)
    lease = await backend.store.acquire(CLIENT, LONG)
    assert not (await backend.peer.acquire(CLIENT, LONG)).acquired  # busy: silent
    await backend.store.release(lease)
    lapsing = await backend.store.acquire(OTHER, SHORT)
    await backend.elapse(SHORT + 0.05)
    assert not await backend.store.release(lapsing)  # lapsed: silent
    await backend.store.save(CLIENT, second)
    await backend.store.discard(CLIENT, "tok-second", LONG)  # throttled: silent
    await backend.peer.save(OTHER, first)  # the last one: every earlier one has arrived
    expected = [
        TokenChange(CLIENT, ChangeKind.SAVED, digest("tok-first")),
        TokenChange(CLIENT, ChangeKind.DISCARDED, digest("tok-first")),
        TokenChange(CLIENT, ChangeKind.RELEASED, "-"),
        TokenChange(CLIENT, ChangeKind.SAVED, digest("tok-second")),
        TokenChange(OTHER, ChangeKind.SAVED, digest("tok-first")),
    ]
    assert await mine.wait_for(len(expected)) == expected
    assert await theirs.wait_for(len(expected)) == expected


# -- the budget -----------------------------------------------------------------------------------


def ask(name: str, caller: str = "orders") -> PermitRequest:
    """An API permit request of `caller` (weight 1)."""
    return PermitRequest(name, caller, 1000)


async def test_permits_are_granted_at_once_up_to_the_limit(backend: Backend) -> None:
    """`limit` permits come at once with the upstream-style remaining/reset; the next one is
    refused with the time until a permit would be free."""
    window = Window(3, SHORT)
    grants = [await backend.store.ask(window, ask(f"p{i}"), 0) for i in range(3)]
    assert [(g.outcome, g.delay, g.remaining) for g in grants] == [
        (Outcome.GRANTED, 0, 2),
        (Outcome.GRANTED, 0, 1),
        (Outcome.GRANTED, 0, 0),
    ]
    assert all(backend.about(g.reset, SHORT) for g in grants)
    refused = await backend.peer.ask(window, ask("p3"), 0)  # one window for the whole fleet
    assert refused.outcome is Outcome.DENIED and refused.remaining == 0
    assert backend.about(refused.delay, SHORT + 0.001)  # + 1 ms: the window is closed
    assert (await backend.store.usage(window)).used == 3
    await backend.elapse(refused.delay)
    assert (await backend.store.ask(window, ask("p4"), 0)).outcome is Outcome.GRANTED


async def test_queued_requests_of_one_caller_are_served_in_arrival_order(backend: Backend) -> None:
    """Later requests of one caller are never told an earlier slot than earlier ones; the third
    of a 2-per-window budget waits until the first has left the window."""
    window = Window(2, SHORT)
    delays, slots = [], []
    for i in range(7):
        answer = await backend.store.ask(window, ask(str(i)), 10)
        delays.append(answer.delay)
        # When the caller may have it. A delay counts from the store's own now, which on Redis
        # runs on between two calls, so slots are compared rather than delays.
        slots.append(backend.clock.monotonic() + answer.delay)
    assert all(b >= a - backend.tolerance for a, b in pairwise(slots))
    assert delays[:2] == [0, 0] and slots[2] - slots[0] > SHORT - backend.tolerance
    assert slots[6] - slots[0] > 3 * SHORT - backend.tolerance


async def test_a_waiter_that_leaves_frees_its_place(backend: Backend) -> None:
    """A waiter that goes away leaves the queue (as seen by every instance) and the next
    request gets its place; leaving with an unknown id changes nothing."""
    window = Window(1, SHORT)
    assert (await backend.store.ask(window, ask("now"), 0)).outcome is Outcome.GRANTED
    later = await backend.store.ask(window, ask("later"), 10)
    assert later.outcome is Outcome.WAITING and later.delay > SHORT - backend.tolerance
    usage = await backend.store.usage(window)
    assert usage.used == 1 and usage.waiting == {"orders": 1}  # a queued request is no grant
    await backend.peer.leave("later")
    await backend.peer.leave("never-queued")
    assert (await backend.store.usage(window)).waiting == {}
    again = await backend.store.ask(window, ask("again"), 10)
    assert again.outcome is Outcome.WAITING
    assert backend.about(again.delay, SHORT + 0.001)  # the freed place, not the one after


async def test_departures_never_let_a_later_request_pass_an_earlier_one(backend: Backend) -> None:
    """With requests leaving in the middle of one caller's queue, a new request of that caller
    is still told a slot no earlier than the earlier requests still queued."""
    window = Window(2, SHORT)
    for name in ("a", "b", "c", "d", "e"):
        await backend.store.ask(window, ask(name), 10)
    await backend.store.leave("c")
    await backend.store.leave("d")
    late = await backend.store.ask(window, ask("f"), 10)
    late_slot = backend.clock.monotonic() + late.delay
    earlier = await backend.store.ask(window, ask("e"), 10)  # asks again: its place moved up
    assert backend.clock.monotonic() + earlier.delay <= late_slot + backend.tolerance
    assert late.outcome is earlier.outcome is Outcome.WAITING


async def test_cooldown_holds_waiters_and_new_requests_until_it_ends(backend: Backend) -> None:
    """A queued request keeps its place through a cooldown but is granted nothing before it
    ends: asking again it is told the cooldown left; new requests come after it too."""
    window = Window(1, SHORT)
    assert (await backend.store.ask(window, ask("a"), 5)).outcome is Outcome.GRANTED
    second = await backend.store.ask(window, ask("b"), 5)
    assert second.outcome is Outcome.WAITING and second.delay > SHORT - backend.tolerance
    assert await backend.peer.cool_down(3.0) == pytest.approx(3.0, abs=0.001)
    held = await backend.store.ask(window, ask("b"), 5)
    assert held.outcome is Outcome.WAITING and backend.about(held.delay, 3.0)
    assert (await backend.store.usage(window)).used == 1
    third = await backend.store.ask(window, ask("c"), 10)
    assert third.outcome is Outcome.WAITING and third.delay >= 3.0 - backend.tolerance
    assert (await backend.store.ask(window, ask("d"), 1.0)).outcome is Outcome.DENIED


async def test_cooldown_extends_but_never_shortens(backend: Backend) -> None:
    """cool_down returns the time left: a shorter one keeps the longer, a longer one extends it;
    once it has passed a permit comes at once again."""
    window = Window(5, SHORT)
    assert await backend.store.cool_down(SHORT) == pytest.approx(SHORT, abs=0.001)
    kept = await backend.peer.cool_down(0.1)
    assert backend.about(kept, SHORT)
    usage = await backend.store.usage(window)
    assert usage.used == 0 and backend.about(usage.cooldown, SHORT)
    blocked = await backend.store.ask(window, ask("blocked"), 0)
    assert blocked.outcome is Outcome.DENIED and backend.about(blocked.delay, SHORT)
    assert await backend.store.cool_down(2 * SHORT) == pytest.approx(2 * SHORT, abs=0.001)
    await backend.elapse(2 * SHORT + 0.01)
    assert (await backend.store.usage(window)).cooldown == 0
    assert (await backend.store.ask(window, ask("after"), 0)).outcome is Outcome.GRANTED


async def test_a_cooldown_of_no_time_changes_nothing(backend: Backend) -> None:
    """cool_down(0) (or less than Redis' 1 ms) is no error: it starts no pause and reports the
    one running, if any."""
    window = Window(5, SHORT)
    assert await backend.store.cool_down(0) == 0
    assert await backend.store.cool_down(0.0004) <= 0.001
    await backend.elapse(0.01)
    assert (await backend.store.ask(window, ask("free"), 0)).outcome is Outcome.GRANTED
    await backend.store.cool_down(SHORT)
    assert backend.about(await backend.peer.cool_down(0), SHORT)


async def test_usage_counts_the_current_window_only(backend: Backend) -> None:
    """usage() counts the grants of the last window (per caller) and forgets them once it has
    passed."""
    window = Window(5, SHORT)
    for i in range(3):
        assert (await backend.store.ask(window, ask(f"p{i}"), 0)).outcome is Outcome.GRANTED
    usage = await backend.peer.usage(window)
    assert usage.used == 3 and usage.granted == {"orders": 3}
    await backend.elapse(SHORT + 0.05)
    assert (await backend.peer.usage(window)).used == 0
    grant = await backend.store.ask(window, ask("fresh"), 0)
    assert grant.outcome is Outcome.GRANTED and grant.remaining == 4


# -- the fleet view -------------------------------------------------------------------------------


async def test_instances_alive_until_their_heartbeat_lapses(backend: Backend) -> None:
    """Each heartbeat keeps an instance listed (by every instance) with its version for `ttl`;
    then it drops out, and a new heartbeat brings it back."""
    assert await backend.peer.instances() == []
    await backend.store.heartbeat("b-host-2", "1.2.0", SHORT)
    await backend.peer.heartbeat("a-host-1", "1.3.0rc1", LONG)
    alive = await backend.peer.instances()
    assert [(i.instance, i.version) for i in alive] == [
        ("a-host-1", "1.3.0rc1"),
        ("b-host-2", "1.2.0"),
    ]
    assert backend.about(alive[1].expires_in, SHORT)
    assert backend.about(alive[0].expires_in, LONG)
    await backend.elapse(SHORT + 0.05)
    assert [i.instance for i in await backend.store.instances()] == ["a-host-1"]
    await backend.store.heartbeat("b-host-2", "1.2.1", SHORT)  # it came back, upgraded
    alive = await backend.peer.instances()
    assert [(i.instance, i.version) for i in alive] == [
        ("a-host-1", "1.3.0rc1"),
        ("b-host-2", "1.2.1"),
    ]
