"""L1Cache: when this instance's copy of a token is served, re-checked or dropped."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from app.tokens.l1 import L1_HARD_AGE_SECONDS, L1Cache
from app.tokens.store_state import StoreState
from tests.support.clock import FakeClock
from tests.tokens.doubles import CLIENT, GatedStore, RecordingEvents, settle, token_of

MAX_AGE = 0.5


@dataclass
class Parts:
    """An L1 over the memory store, with the clock and state the test moves."""

    clock: FakeClock
    store: GatedStore
    state: StoreState
    l1: L1Cache


@pytest.fixture
def parts() -> Parts:
    """An empty L1 with max_age 0.5 s over a reachable memory store."""
    clock = FakeClock()
    store = GatedStore(clock=clock)
    events = RecordingEvents()
    state = StoreState(clock, events)
    return Parts(clock, store, state, L1Cache(store, state, clock, events, MAX_AGE))


def test_peek_serves_a_token_until_its_serve_until(parts: Parts) -> None:
    """An entry is served while the wall clock is before its serve_until, and not from then on."""
    token = token_of(parts.clock)
    parts.l1.put(CLIENT, token, serve_until=parts.clock.time() + 0.3)
    parts.clock.advance(0.29)
    assert parts.l1.peek(CLIENT) is token
    parts.clock.advance(0.01)
    assert parts.l1.peek(CLIENT) is None
    assert parts.l1.peek("billing") is None


async def test_a_burst_of_peeks_past_max_age_starts_one_revalidation(parts: Parts) -> None:
    """Past max_age the entry is still served, and a burst of peeks makes one store read."""
    token = token_of(parts.clock)
    await parts.store.save(CLIENT, token)
    parts.l1.put(CLIENT, token, token.serve_until(300))
    parts.store.gate = asyncio.Event()  # hold the read open while the burst arrives
    parts.clock.advance(MAX_AGE + 0.1)
    for _ in range(50):
        assert parts.l1.peek(CLIENT) is token
        await asyncio.sleep(0)
    assert parts.store.loads == 1
    parts.store.gate.set()
    await settle()
    assert parts.l1.peek(CLIENT) is token  # confirmed just now: no new read
    await settle()
    assert parts.store.loads == 1


async def test_past_the_hard_age_an_entry_is_not_served_while_the_store_answers(
    parts: Parts,
) -> None:
    """An entry unconfirmed for longer than the hard age is withheld (the caller re-checks it)."""
    token = token_of(parts.clock)
    parts.l1.put(CLIENT, token, token.serve_until(300))
    parts.clock.advance(L1_HARD_AGE_SECONDS + 0.01)
    assert parts.l1.peek(CLIENT) is None
    assert parts.l1.servable_but_unconfirmed(CLIENT)


async def test_past_the_hard_age_an_entry_is_served_while_the_store_is_down(
    parts: Parts,
) -> None:
    """With the store unreachable, an entry past the hard age is still served (and re-checked)."""
    token = token_of(parts.clock)
    parts.l1.put(CLIENT, token, token.serve_until(300))
    parts.state.note(ok=False)
    parts.clock.advance(L1_HARD_AGE_SECONDS + 0.01)
    assert parts.l1.peek(CLIENT) is token
    await settle()
    assert parts.store.loads == 1


def test_usable_rejects_a_token_this_instance_saw_discarded(parts: Parts) -> None:
    """A discarded token is tombstoned: `usable` refuses it (and only it, and only for its
    client) and its L1 entry goes."""
    old, new = token_of(parts.clock, name="old"), token_of(parts.clock, name="new")
    parts.l1.put(CLIENT, old, old.serve_until(300))
    parts.l1.forget(CLIENT, old.digest)
    assert parts.l1.usable(CLIENT, old) is None
    assert parts.l1.entry(CLIENT) is None
    assert parts.l1.usable(CLIENT, new) is new
    assert parts.l1.usable("billing", old) is old
    assert parts.l1.usable(CLIENT, None) is None


def test_saw_saved_drops_an_entry_holding_a_different_token(parts: Parts) -> None:
    """A broadcast that another token was saved drops ours; one naming our token keeps it."""
    ours, theirs = token_of(parts.clock, name="ours"), token_of(parts.clock, name="theirs")
    parts.l1.put(CLIENT, ours, ours.serve_until(300))
    parts.l1.saw_saved(CLIENT, ours.digest)
    assert parts.l1.peek(CLIENT) is ours
    parts.l1.saw_saved(CLIENT, theirs.digest)
    assert parts.l1.peek(CLIENT) is None


async def test_revalidation_confirms_an_entry_the_store_still_holds(parts: Parts) -> None:
    """A re-check that finds the same token in the store restarts the entry's age."""
    token = token_of(parts.clock)
    await parts.store.save(CLIENT, token)
    parts.l1.put(CLIENT, token, token.serve_until(300))
    parts.clock.advance(0.6)
    await parts.l1.revalidate_soon(CLIENT)
    parts.clock.advance(0.6)  # 1.2 s since put, 0.6 s since the re-check
    assert parts.l1.entry(CLIENT) is not None
    assert parts.l1.peek(CLIENT) is token


@pytest.mark.parametrize("stored", ["another", "none"])
async def test_revalidation_drops_an_entry_the_store_no_longer_holds(
    parts: Parts, stored: str
) -> None:
    """A re-check that finds another token, or none, in the store drops the entry."""
    token = token_of(parts.clock)
    if stored == "another":
        await parts.store.save(CLIENT, token_of(parts.clock, lifetime=7200, name="another"))
    parts.l1.put(CLIENT, token, token.serve_until(300))
    await parts.l1.revalidate_soon(CLIENT)
    assert parts.l1.entry(CLIENT) is None


async def test_revalidation_confirms_as_of_the_read_not_its_answer(parts: Parts) -> None:
    """A slow re-check dates the confirmation to when the store was asked, so a token discarded
    during the read is not trusted for longer than the hard age allows."""
    token = token_of(parts.clock)
    await parts.store.save(CLIENT, token)
    parts.l1.put(CLIENT, token, token.serve_until(300))
    parts.store.gate = asyncio.Event()
    parts.clock.advance(0.6)
    asked_at = parts.clock.monotonic()
    running = parts.l1.revalidate_soon(CLIENT)
    await settle()
    parts.clock.advance(0.4)
    parts.store.gate.set()
    await running
    entry = parts.l1.entry(CLIENT)
    assert entry is not None
    assert entry.checked_at == asked_at


async def test_a_failed_revalidation_keeps_the_entry_and_marks_the_store_down(
    parts: Parts,
) -> None:
    """When the store cannot be read, the entry stays and is served past the hard age."""
    token = token_of(parts.clock)
    parts.l1.put(CLIENT, token, token.serve_until(300))
    parts.store.failing = True
    parts.clock.advance(0.6)
    await parts.l1.revalidate_soon(CLIENT)
    assert not parts.state.ok
    parts.clock.advance(L1_HARD_AGE_SECONDS)
    assert parts.l1.peek(CLIENT) is token
