"""The dashboard's history: one-minute buckets in a fixed ring, the last hour, oldest first."""

from __future__ import annotations

from app.observability.history import BUCKETS, History
from tests.support.clock import FakeClock


def test_events_land_in_their_minute_and_the_hour_reads_oldest_first() -> None:
    """Refreshes, errors, grants and denials count in the minute they happen; quiet minutes are
    empty; the current minute is last."""
    clock = FakeClock(now=1_800_000_000.0)  # a whole minute
    history = History(clock)
    history.refresh(ok=True)
    history.refresh(ok=False)
    history.granted()
    clock.advance(60 * 5 + 1)
    history.error()
    history.denied()
    history.granted()
    buckets = history.buckets()
    assert len(buckets) == BUCKETS
    assert [b.start for b in buckets] == sorted(b.start for b in buckets)
    assert buckets[-1].start == 1_800_000_300.0
    first, now = buckets[-6], buckets[-1]
    assert (first.refreshes, first.refresh_failures, first.errors, first.grants) == (1, 1, 1, 1)
    assert (now.refreshes, now.errors, now.grants, now.denials) == (0, 1, 1, 1)
    assert all(b.refreshes == b.errors == b.grants == 0 for b in buckets[-5:-1])


def test_budget_use_keeps_the_peak_of_each_minute() -> None:
    """Several budget reports in one minute keep the largest use; unknown minutes stay None."""
    clock = FakeClock(now=1_800_000_000.0)
    history = History(clock)
    for used in (3, 9, 4):
        history.budget_use(used, 50)
    clock.advance(120)
    history.budget_use(1, 50)
    buckets = history.buckets()
    assert (buckets[-3].budget_used, buckets[-3].budget_limit) == (9, 50)
    assert buckets[-2].budget_used is None
    assert buckets[-1].budget_used == 1


def test_an_hour_later_old_minutes_are_gone_and_memory_stays_fixed() -> None:
    """After more than an hour the old counts no longer show, and a day of events keeps the
    ring at BUCKETS entries."""
    clock = FakeClock(now=1_800_000_000.0)
    history = History(clock)
    history.refresh(ok=False)
    clock.advance(60 * BUCKETS)
    assert sum(b.refresh_failures for b in history.buckets()) == 0
    for _ in range(24 * 60):
        history.granted()
        clock.advance(60)
    assert len(history._ring) == BUCKETS
    assert sum(b.grants for b in history.buckets()) == BUCKETS - 1  # the current minute is new
