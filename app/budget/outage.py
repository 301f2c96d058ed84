"""The budget while the shared store is unreachable: this instance's share of the fleet limit.

With `n` the fleet size this instance last saw, it grants alone at most `limit // n` permits per
window, so `n` instances together stay within `limit` once the store's last grants have left
the window. Until then the rule is exact too, from the last snapshot of the shared window this
instance received (the ages of the grants in it, at `sent`..`received`) and the moment it found
the store gone (`since`):

* every grant the snapshot showed is counted until it has surely left the window;
* grants made after the snapshot and before the store died are unknown, but the window that
  ends at the death held at most `limit`, of which the snapshot surely shows some: the rest,
  `unknown = limit - shown`, is counted as granted at `since` (no later than the death);
* this instance may hold a local grant at `t` only while `n * (own(t) + 1) + fleet(t) <= limit`:
  every instance keeps to `(limit - fleet(t)) // n`, so all of them together add at most
  `limit - fleet(t)` to the shared grants still in the window.

An instance that never saw the window counts `limit` unknown grants: it grants nothing for one
window, then its share. The local grants themselves are kept across outages (`own`), and when
the store answers again the service fences the shared window until they have left it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from app.budget.fair import EPSILON, FairWindow, SlidingLog
from app.budget.model import Snapshot, Window


@dataclass(frozen=True, slots=True)
class Observed:
    """A snapshot of the shared window and when (monotonic) the call that brought it ran."""

    snapshot: Snapshot
    sent: float
    received: float


@dataclass
class ShareCapacity:
    """`Capacity` of one instance alone: its share of the limit, after the fleet's last grants."""

    window: Window
    fleet: int  # instances, as last seen
    fleet_times: list[float]  # known shared grants, at the latest time each may have happened
    unknown: int  # shared grants made after the snapshot, counted at `since`
    since: float
    own: SlidingLog  # this instance's local grants

    @property
    def limit(self) -> int:
        """The share per window, reported as the limit while the store is down."""
        return self.window.limit // self.fleet

    def _reserve(self, token: bool) -> int:
        return 0 if token else math.ceil(self.window.reserve / self.fleet)

    def _fleet_at(self, t: float) -> int:
        start = t - self.window.seconds
        known = len(self.fleet_times) - bisect.bisect_left(self.fleet_times, start)
        return known + (self.unknown if self.since >= start else 0)

    def _room(self, t: float, extra: list[float], token: bool) -> int:
        start = t - self.window.seconds
        own = len(self.own.times) - bisect.bisect_left(self.own.times, start)
        own += sum(1 for x in extra if x >= start)
        share = (self.window.limit - self._fleet_at(t)) // self.fleet
        return share - self._reserve(token) - own

    def free(self, now: float, pace: float | None = None) -> tuple[int, int]:  # noqa: ARG002
        """See `Capacity.free` (a share is small: not paced)."""
        return max(0, self._room(now, [], True)), max(0, self._room(now, [], False))

    def _departures(self, extra: list[float]) -> list[float]:
        times = [*self.fleet_times, *self.own.times, *extra]
        if self.unknown:
            times.append(self.since)
        return sorted(x + self.window.seconds + EPSILON for x in times)

    def _earliest(self, t: float, extra: list[float], token: bool) -> float:
        departures = self._departures(extra)
        index = bisect.bisect_right(departures, t)
        while self._room(t, extra, token) <= 0:
            if index >= len(departures):
                return math.inf  # a share of 0: never
            t, index = departures[index], index + 1
        return t

    def next_slot(
        self,
        now: float,
        ahead: tuple[int, int],
        token: bool,
        pace: float | None = None,  # noqa: ARG002
    ) -> float:
        """See `Capacity.next_slot` (the requests ahead counted alike, an estimate)."""
        extra: list[float] = []
        t = now
        for _ in range(ahead[0] + ahead[1] + 1):
            t = self._earliest(t, extra, token)
            if math.isinf(t):
                return t
            extra.append(t)
        return t

    def record(self, now: float, caller: str) -> None:
        """See `Capacity.record`."""
        self.own.add(now, caller)

    def figures(self, now: float, token: bool) -> tuple[int, float]:
        """See `Capacity.figures`."""
        start = now - self.window.seconds
        in_window = [x for x in (*self.fleet_times, *self.own.times) if x >= start]
        if self.unknown and self.since >= start:
            in_window.append(self.since)
        reset = min(in_window, default=now) + self.window.seconds - now
        return max(0, self._room(now, [], token)), reset


def share_capacity(
    window: Window, fleet: int, observed: Observed | None, since: float, own: SlidingLog
) -> ShareCapacity:
    """The capacity of an outage that began at `since`, from the last snapshot seen."""
    if observed is None:
        return ShareCapacity(window, fleet, [], window.limit, since, own)
    ages = observed.snapshot.ages
    start = since - window.seconds
    surely_in = sum(1 for age in ages if observed.sent - age >= start)
    latest = sorted(observed.received - age for age in ages)
    fleet_times = latest[bisect.bisect_left(latest, start) :]
    return ShareCapacity(window, fleet, fleet_times, max(0, window.limit - surely_in), since, own)


class OutageWindow(FairWindow):
    """The fair queue in front of this instance's share (the local grants persist outside)."""

    def __init__(self, capacity: ShareCapacity) -> None:
        super().__init__()
        self._share = capacity
        self.log = capacity.own

    def capacity(self, window: Window) -> ShareCapacity:  # noqa: ARG002 - as FairWindow's
        """Always the share this outage began with."""
        return self._share
