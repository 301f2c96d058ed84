"""The memory store keeps state per generation of a client's credentials, like Redis' keys."""

from __future__ import annotations

from app.store.memory import MemoryStore
from app.tokens.model import HoldReason, Token
from tests.support.clock import FakeClock

CLIENT = "checkout"


def token(name: str, minted_by: str = "") -> Token:
    """A token valid for an hour on the fake clock."""
    return Token(name, 1_800_003_600.0, 1_800_000_000.0, minted_by=minted_by)


async def test_a_new_generation_finds_nothing_of_the_old_one() -> None:
    """After the fingerprint changes, the old token and hold are not found."""
    generation = {CLIENT: "g1"}
    store = MemoryStore(clock=FakeClock(), generation=generation.__getitem__)
    await store.save(CLIENT, token("old", "g1"))
    await store.hold(CLIENT, HoldReason.REJECTED, 30)
    generation[CLIENT] = "g2"
    record = await store.load(CLIENT)
    assert record.token is None and record.hold is None


async def test_a_token_of_other_credentials_is_not_stored() -> None:
    """`save` returns a token minted under other credentials without storing it."""
    store = MemoryStore(clock=FakeClock(), generation=lambda _client: "g2")
    stale = token("stale", "g1")
    assert await store.save(CLIENT, stale) is stale
    assert (await store.load(CLIENT)).token is None
    assert await store.save(CLIENT, token("fresh", "g2")) == token("fresh", "g2")


async def test_a_lock_of_the_old_generation_does_not_block_or_release_the_new_one() -> None:
    """The new generation takes its own lock; releasing the old lease does not free it."""
    generation = {CLIENT: "g1"}
    store = MemoryStore(clock=FakeClock(), generation=generation.__getitem__)
    old = await store.acquire(CLIENT, 10)
    generation[CLIENT] = "g2"
    new = await store.acquire(CLIENT, 10)
    assert old.acquired and new.acquired
    assert await store.release(old) is False
    assert (await store.acquire(CLIENT, 10)).acquired is False
    assert await store.release(new) is True
