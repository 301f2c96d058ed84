"""The last hour of this instance's refreshes, errors and budget use, for the dashboard's charts.

A ring of one-minute buckets fed by the same event hooks that feed the metrics (`TokenMetrics`,
`BudgetMetrics`) and by each budget report (/health, /metrics). Memory is fixed: `BUCKETS`
small records, reused as the minutes turn; a bucket older than the ring reads as empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.clock import SYSTEM_CLOCK, Clock

BUCKET_SECONDS = 60
BUCKETS = 60  # one hour


@dataclass
class Bucket:
    """What happened in one minute (`start` in unix seconds)."""

    start: float
    refreshes: int = 0  # upstream token requests that succeeded
    refresh_failures: int = 0  # ... that failed (rejected, unavailable, error)
    errors: int = 0  # failed refreshes plus store errors
    grants: int = 0  # budget permits this instance granted
    denials: int = 0  # permit requests it refused (no permit within the wait)
    budget_used: int | None = None  # the most permits seen in use in one window (fleet-wide)
    budget_limit: int | None = None


@dataclass
class History:
    """One hour of one-minute buckets, oldest first when read."""

    clock: Clock = SYSTEM_CLOCK
    bucket_seconds: int = BUCKET_SECONDS
    size: int = BUCKETS
    _ring: list[Bucket | None] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._ring = [None] * self.size

    def _now(self) -> Bucket:
        """The current minute's bucket, started afresh when its slot held an older minute."""
        number = int(self.clock.time() // self.bucket_seconds)
        slot = number % self.size
        start = float(number * self.bucket_seconds)
        bucket = self._ring[slot]
        if bucket is None or bucket.start != start:
            bucket = self._ring[slot] = Bucket(start)
        return bucket

    def refresh(self, ok: bool) -> None:
        """An upstream token request finished."""
        bucket = self._now()
        if ok:
            bucket.refreshes += 1
        else:
            bucket.refresh_failures += 1
            bucket.errors += 1

    def error(self) -> None:
        """Some other error (the store did not answer)."""
        self._now().errors += 1

    def granted(self) -> None:
        """A budget permit was granted."""
        self._now().grants += 1

    def denied(self) -> None:
        """A permit request was refused."""
        self._now().denials += 1

    def budget_use(self, used: int, limit: int) -> None:
        """The fleet's permits in use in the current window, as a budget report saw it."""
        bucket = self._now()
        bucket.budget_used = max(used, bucket.budget_used or 0)
        bucket.budget_limit = limit

    def buckets(self) -> list[Bucket]:
        """The last `size` minutes, oldest first, the current one last; quiet minutes empty."""
        last = int(self.clock.time() // self.bucket_seconds)
        out = []
        for number in range(last - self.size + 1, last + 1):
            start = float(number * self.bucket_seconds)
            bucket = self._ring[number % self.size]
            out.append(bucket if bucket is not None and bucket.start == start else Bucket(start))
        return out
