"""UpstreamRefresher (permits, outcomes, backoff, holds) and RefreshAhead (the background loop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from app.errors import (
    BudgetExhausted,
    UpstreamCredentialsRejected,
    UpstreamError,
    UpstreamUnavailable,
)
from app.store.memory import MemoryStore
from app.tokens.l1 import L1Cache
from app.tokens.model import ClientPolicy, Hold, HoldReason, Token
from app.tokens.refresher import (
    PROBE_INTERVAL_SECONDS,
    RefreshAhead,
    UpstreamRefresher,
    lead_time,
)
from app.tokens.status import ClientStatus
from app.tokens.store_state import StoreState
from tests.support.clock import FakeClock, SteppedClock
from tests.tokens.doubles import CLIENT, CountingFetcher, RecordingEvents, settle, token_of

POLICY = ClientPolicy(refresh_buffer=300.0, min_forced_interval=10.0)


@dataclass
class Parts:
    """An UpstreamRefresher of one client and what a test inspects."""

    clock: FakeClock
    status: ClientStatus
    fetcher: CountingFetcher
    events: RecordingEvents
    permits: list[str]
    refresher: UpstreamRefresher


def build(*, permits: list[str] | None = None, permit_error: Exception | None = None) -> Parts:
    """A refresher; with `permits`, token requests take a permit first (recorded there)."""
    clock = FakeClock()
    status = ClientStatus()
    fetcher = CountingFetcher(clock)
    events = RecordingEvents()

    async def take_permit(client: str) -> None:
        assert permits is not None
        permits.append(client)
        if permit_error is not None:
            raise permit_error

    refresher = UpstreamRefresher(
        {CLIENT: POLICY},
        fetcher,
        {CLIENT: status},
        clock,
        events,
        None if permits is None else take_permit,
    )
    return Parts(clock, status, fetcher, events, [] if permits is None else permits, refresher)


@pytest.fixture
def parts() -> Parts:
    """A refresher whose token requests take no permit."""
    return build()


def unavailable(retry_after: float = 0.0) -> UpstreamUnavailable:
    """The upstream failed (test)."""
    return UpstreamUnavailable("down (test)", client=CLIENT, retry_after=retry_after)


def rejected() -> UpstreamCredentialsRejected:
    """The upstream rejected the credentials (test)."""
    return UpstreamCredentialsRejected("invalid_client (test)", client=CLIENT)


# -- backoff and holds ---------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_30_s_cap(parts: Parts) -> None:
    """While a valid token is served, each consecutive failure doubles the hold (1, 2, 4 ... s,
    jittered) until it is capped at 30 s."""
    token = token_of(parts.clock)
    for base in [1, 2, 4, 8, 16, 30, 30, 30]:
        hold = parts.refresher.hold_for(CLIENT, unavailable(), token)
        assert hold.reason is HoldReason.UNAVAILABLE
        assert 0.5 * base <= hold.remaining <= base


def test_backoff_jitter_spreads_between_half_and_all_of_the_backoff(parts: Parts) -> None:
    """The jitter draws the hold from [0.5, 1.0] x the backoff, across that whole range."""
    token = token_of(parts.clock)
    holds = []
    for _ in range(400):
        parts.status.upstream_failures = 3  # the next failure is the 4th: backoff 8 s
        holds.append(parts.refresher.hold_for(CLIENT, unavailable(), token).remaining)
    assert all(4.0 <= hold <= 8.0 for hold in holds)
    assert min(holds) < 4.4
    assert max(holds) > 7.6


@pytest.mark.parametrize(("retry_after", "low", "high"), [(20.0, 20.0, 20.0), (0.1, 0.5, 1.0)])
def test_backoff_honours_a_longer_retry_after_from_the_upstream(
    parts: Parts, retry_after: float, low: float, high: float
) -> None:
    """The hold lasts the upstream's retry_after when that is longer than the backoff."""
    hold = parts.refresher.hold_for(CLIENT, unavailable(retry_after), token_of(parts.clock))
    assert low <= hold.remaining <= high


@pytest.mark.parametrize("kind", ["none", "expired"])
def test_with_nothing_valid_to_serve_the_upstream_is_probed_every_second(
    parts: Parts, kind: str
) -> None:
    """Without a valid token, however many failures came before, the hold is the 1 s probe
    interval (or the upstream's longer retry_after), so callers get a token soon after the
    upstream returns."""
    token = None if kind == "none" else token_of(parts.clock, lifetime=100, age=100)
    parts.status.upstream_failures = 6
    assert parts.refresher.hold_for(CLIENT, unavailable(), token).remaining == (
        PROBE_INTERVAL_SECONDS
    )
    assert parts.refresher.hold_for(CLIENT, unavailable(7.0), token).remaining == 7.0


@pytest.mark.parametrize(("left", "hold"), [(3.0, 3.0), (0.4, PROBE_INTERVAL_SECONDS)])
def test_the_backoff_never_outlasts_the_served_tokens_expiry(
    parts: Parts, left: float, hold: float
) -> None:
    """A hold ends when the token served meanwhile expires (at least 1 s), not a full backoff
    later."""
    token = token_of(parts.clock, lifetime=100, age=100 - left)
    parts.status.upstream_failures = 4  # the next failure is the 5th: backoff 16 s
    assert parts.refresher.hold_for(CLIENT, unavailable(), token).remaining == pytest.approx(hold)


def test_rejected_credentials_hold_for_the_forced_refresh_floor_without_a_failure_count(
    parts: Parts,
) -> None:
    """Rejected credentials hold the client for min_forced_interval and do not grow the
    backoff, but are recorded as the last error."""
    parts.refresher.hold_for(CLIENT, unavailable(), None)
    hold = parts.refresher.hold_for(CLIENT, rejected(), token_of(parts.clock))
    assert hold == Hold(HoldReason.REJECTED, POLICY.min_forced_interval)
    assert parts.status.upstream_failures == 1
    assert parts.status.last_error_category == "rejected"
    assert parts.status.last_error == "invalid_client (test)"


async def test_a_successful_fetch_resets_the_backoff(parts: Parts) -> None:
    """After a token arrives, the next failure backs off from 1 s again."""
    for _ in range(4):
        parts.refresher.hold_for(CLIENT, unavailable(), None)
    token = await parts.refresher.fetch(CLIENT)
    assert parts.status.upstream_failures == 0
    assert parts.refresher.hold_for(CLIENT, unavailable(), token).remaining <= 1.0


def test_held_serves_an_unexpired_token_and_reports_it_stale(parts: Parts) -> None:
    """During a hold, a token with life left is served, `served_stale` is emitted and the
    client's hold_until is set."""
    token = token_of(parts.clock, lifetime=100, age=90)
    served = parts.refresher.held(CLIENT, token, Hold(HoldReason.UNAVAILABLE, 5.0))
    assert served is token
    assert parts.events.named("served_stale") == [(CLIENT, token, 10.0, "unavailable")]
    assert parts.status.hold_until == parts.clock.monotonic() + 5.0


@pytest.mark.parametrize("kind", ["none", "expired"])
def test_held_without_a_valid_token_raises_upstream_unavailable_with_the_hold_as_retry_after(
    parts: Parts, kind: str
) -> None:
    """During an unavailability hold with no unexpired token, UpstreamUnavailable carries the
    hold's remaining time and the failure that caused it."""
    token = None if kind == "none" else token_of(parts.clock, lifetime=100, age=100)
    cause = unavailable()
    with pytest.raises(UpstreamUnavailable) as raised:
        parts.refresher.held(CLIENT, token, Hold(HoldReason.UNAVAILABLE, 5.0), cause)
    assert raised.value.retry_after == 5.0
    assert raised.value.client == CLIENT
    assert raised.value.__cause__ is cause
    assert parts.events.named("served_stale") == []


@pytest.mark.parametrize("with_cause", [True, False])
def test_held_on_rejected_credentials_raises_credentials_rejected(
    parts: Parts, with_cause: bool
) -> None:
    """During a rejection hold with no unexpired token, UpstreamCredentialsRejected is raised
    (the upstream's own error when this instance just got it)."""
    cause = rejected() if with_cause else None
    with pytest.raises(UpstreamCredentialsRejected) as raised:
        parts.refresher.held(CLIENT, None, Hold(HoldReason.REJECTED, 10.0), cause)
    assert raised.value.client == CLIENT
    if cause is not None:
        assert raised.value is cause


def test_no_permit_keeps_serving_a_valid_token(parts: Parts) -> None:
    """Without a budget permit, a token with life left is served and the client waits for the
    permit's retry_after before asking again."""
    token = token_of(parts.clock, lifetime=100, age=90)
    exc = BudgetExhausted("no permit (test)", client=CLIENT, retry_after=12.0, limit=50)
    assert parts.refresher.no_permit(CLIENT, token, exc) is token
    assert parts.status.hold_until == parts.clock.monotonic() + 12.0


@pytest.mark.parametrize("kind", ["none", "expired"])
def test_no_permit_without_a_valid_token_raises_upstream_unavailable(
    parts: Parts, kind: str
) -> None:
    """Without a budget permit or a token with life left, the answer is UpstreamUnavailable
    with the permit's retry_after."""
    token = None if kind == "none" else token_of(parts.clock, lifetime=100, age=100)
    exc = BudgetExhausted("no permit (test)", client=CLIENT, retry_after=12.0, limit=50)
    with pytest.raises(UpstreamUnavailable) as raised:
        parts.refresher.no_permit(CLIENT, token, exc)
    assert raised.value.retry_after == 12.0
    assert raised.value.__cause__ is exc


# -- fetch ---------------------------------------------------------------------------------------


async def test_fetch_takes_a_budget_permit_before_the_upstream_request() -> None:
    """When token requests count, a permit is taken first, and without one nothing is fetched."""
    granted = build(permits=[])
    await granted.refresher.fetch(CLIENT)
    assert (granted.permits, granted.fetcher.calls) == ([CLIENT], 1)
    exhausted = BudgetExhausted("no permit (test)", client=CLIENT, retry_after=3.0, limit=50)
    denied = build(permits=[], permit_error=exhausted)
    with pytest.raises(BudgetExhausted):
        await denied.refresher.fetch(CLIENT)
    assert (denied.permits, denied.fetcher.calls) == ([CLIENT], 0)


@pytest.mark.parametrize(
    ("error", "outcome"), [(None, "ok"), (unavailable(), "unavailable"), (rejected(), "rejected")]
)
async def test_fetch_reports_each_upstream_request_with_its_outcome(
    parts: Parts, error: UpstreamError | None, outcome: str
) -> None:
    """Every upstream request emits one `upstream_request` event naming its outcome."""
    parts.fetcher.error = error
    try:
        await parts.refresher.fetch(CLIENT)
    except UpstreamError as exc:
        assert exc is error
    assert parts.events.named("upstream_request") == [(CLIENT, outcome)]
    assert (parts.status.last_refresh_outcome == "ok") == (error is None)


@pytest.mark.parametrize(
    ("lifetime", "lead"), [(1.0, 0.3), (3.0, 0.3), (100.0, 10.0), (300.0, 30.0), (3600.0, 30.0)]
)
def test_lead_time_is_a_tenth_of_the_lifetime_between_0_3_and_30_s(
    lifetime: float, lead: float
) -> None:
    """The refresh-ahead lead is 10 % of the token's lifetime, at least 0.3 s and at most 30 s."""
    assert lead_time(lifetime) == pytest.approx(lead)


# -- refresh ahead -------------------------------------------------------------------------------


class Obtainer:
    """RefreshAhead's `obtain`: records (wall time, ahead) and puts a fresh token into L1."""

    def __init__(self, clock: SteppedClock, l1: L1Cache) -> None:
        self.clock = clock
        self.l1 = l1
        self.calls: list[tuple[float, float]] = []
        self.errors: list[Exception] = []  # raised by the next calls, in order
        self.on_error: Callable[[], None] = lambda: None  # runs before an error is raised

    async def __call__(self, client: str, ahead: float) -> Token:
        self.calls.append((self.clock.time(), ahead))
        if self.errors:
            self.on_error()
            raise self.errors.pop(0)
        token = token_of(self.clock, name=f"ahead-{len(self.calls)}")
        self.l1.put(client, token, token.serve_until(POLICY.refresh_buffer))
        return token


@dataclass
class Ahead:
    """A RefreshAhead over a stepped clock, its L1 and a recording `obtain`."""

    clock: SteppedClock
    status: ClientStatus
    l1: L1Cache
    obtain: Obtainer
    ahead: RefreshAhead
    serve_until: float  # of the token in L1 at the start


@pytest.fixture
async def ahead() -> AsyncIterator[Ahead]:
    """A RefreshAhead of one client whose L1 holds a one-hour token (buffer 300 s)."""
    clock = SteppedClock()
    status = ClientStatus()
    events = RecordingEvents()
    l1 = L1Cache(MemoryStore(clock=clock), StoreState(clock, events), clock, events, 0.5)
    token = token_of(clock)
    serve_until = token.serve_until(POLICY.refresh_buffer)
    l1.put(CLIENT, token, serve_until)
    obtain = Obtainer(clock, l1)
    refresh_ahead = RefreshAhead(l1, {CLIENT: status}, clock, obtain)
    yield Ahead(clock, status, l1, obtain, refresh_ahead, serve_until)
    await refresh_ahead.close()


async def step_until(ahead: Ahead, calls: int, step: float = 0.25) -> float:
    """Move the clock in steps, letting woken tasks run after each, until `obtain` has been
    called `calls` times (within an hour); the wall time then."""
    give_up = ahead.clock.time() + 3600.0
    while len(ahead.obtain.calls) < calls:
        assert ahead.clock.time() < give_up, "no refresh within an hour"
        ahead.clock.advance(step)
        await settle()
    return ahead.clock.time()


async def test_refresh_ahead_refreshes_before_serve_until(ahead: Ahead) -> None:
    """The background task asks for a new token a jittered lead (half to all of
    lead_time) before the token's serve_until, once, even if started twice."""
    ahead.ahead.start(CLIENT)
    ahead.ahead.start(CLIENT)
    await settle()
    lead = lead_time(3600.0)
    ahead.clock.advance(ahead.serve_until - lead - 0.01 - ahead.clock.time())
    await settle()
    assert ahead.obtain.calls == []
    await step_until(ahead, calls=1)
    [(called_at, wanted)] = ahead.obtain.calls
    assert lead / 2 <= wanted <= lead
    assert ahead.serve_until - wanted <= called_at < ahead.serve_until - wanted + 0.25
    ahead.clock.advance(ahead.serve_until - ahead.clock.time())  # past the old token's
    await settle()
    assert len(ahead.obtain.calls) == 1  # the new token is refreshed at its own time


async def test_refresh_ahead_waits_out_a_hold_instead_of_spinning(ahead: Ahead) -> None:
    """After a failed refresh the task sleeps until the client's hold ends, then tries again."""
    ahead.obtain.errors = [unavailable()]
    ahead.obtain.on_error = lambda: setattr(
        ahead.status, "hold_until", ahead.clock.monotonic() + 5.0
    )
    ahead.ahead.start(CLIENT)
    await settle()
    ahead.clock.advance(ahead.serve_until - 30.0 - ahead.clock.time())
    failed_at = await step_until(ahead, calls=1)
    ahead.clock.advance(4.9)
    await settle()
    assert len(ahead.obtain.calls) == 1
    retried_at = await step_until(ahead, calls=2, step=0.05)
    assert retried_at == pytest.approx(failed_at + 5.0)


async def test_refresh_ahead_outlives_a_bug_in_one_round(
    ahead: Ahead, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception in one round is logged and the next round still refreshes."""
    ahead.obtain.errors = [RuntimeError("a bug (test)")]
    ahead.ahead.start(CLIENT)
    await settle()
    ahead.clock.advance(ahead.serve_until - 30.0 - ahead.clock.time())
    with caplog.at_level(logging.ERROR, logger="app.tokens.refresher"):
        await step_until(ahead, calls=2, step=0.05)
    assert [record.message for record in caplog.records] == ["token.refresh_ahead_failed"]


async def test_closing_refresh_ahead_stops_its_tasks(ahead: Ahead) -> None:
    """After close(), no background refresh happens any more."""
    ahead.ahead.start(CLIENT)
    await settle()
    await ahead.ahead.close()
    ahead.clock.advance(4000.0)
    await asyncio.sleep(0)
    assert ahead.obtain.calls == []
    assert ahead.clock.sleeping == 0
