"""Values the budget service and its store exchange."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

TOKEN_CALLER = "-"
"""The caller name of the broker's own token requests (no configured caller can be named so)."""
ANONYMOUS = "?"
"""The caller name of an API permit asked without a caller (tests, tools)."""
LEASE_GRACE_SECONDS = 1.0
"""A waiter that has not asked again within its predicted delay plus this is dropped."""
TAG_SCALE = 1000
"""Virtual-time units one permit costs a caller of weight 1 (tags stay integers)."""
SNAPSHOT_MAX_GRANTS = 1000
"""A window holding more grants is not listed in a snapshot (an outage then counts it full)."""


def tag_cost(weight: float) -> int:
    """What one permit adds to a caller's virtual finish tag: TAG_SCALE / weight, at least 1."""
    return max(1, round(TAG_SCALE / weight))


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` permits in any `seconds` (the window plus the safety margin), of which
    API permits may take at most `limit - reserve`."""

    limit: int
    seconds: float
    reserve: int = 0

    @property
    def api_limit(self) -> int:
        """How many permits of one window API requests may take."""
        return self.limit - self.reserve


@dataclass(frozen=True, slots=True)
class PermitRequest:
    """One request for a permit, asked again (same id) until it is granted or denied.

    `cost` is the caller's tag cost (`tag_cost(weight)`); token requests have no tag and come
    before every API request. `snapshot` asks the store for the window's grant ages (the outage
    share is computed from them); `fence` (seconds) asks it to grant nothing that long, because
    this instance granted from its own share and the shared window does not know those grants.
    """

    id: str
    caller: str
    cost: int
    token: bool = False
    snapshot: bool = False
    fence: float = 0.0


class Outcome(enum.Enum):
    """What the store decided about a permit request."""

    GRANTED = "granted"  # use the permit now
    WAITING = "waiting"  # ask again after `delay`
    DENIED = "denied"  # not within the caller's wait; `delay` is when a permit would come


@dataclass(frozen=True, slots=True)
class Answer:
    """A store's answer to a permit request.

    Granted: `remaining` and `reset` (seconds until the oldest grant in the window leaves it)
    as the upstream would report them now. Waiting: ask again in `delay` seconds (the predicted
    moment a slot is free for it). Denied: the permit would come only after `delay` seconds,
    later than the caller wanted to wait; the request is no longer queued.
    """

    outcome: Outcome
    delay: float = 0.0
    remaining: int = 0
    reset: float = 0.0
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet's grants in the window as the store saw them: their ages in seconds."""

    ages: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """Grants in the current window, per caller, the requests waiting per caller, the cooldown."""

    used: int
    cooldown: float
    granted: Mapping[str, int] = field(default_factory=dict)
    waiting: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """The fleet budget's rules (built from `[budget]` and `[callers.*]` by `app.main`).

    `token_reserve` applies only to token requests that take permits (`count_token_requests`);
    `main.py` passes 0 otherwise. `outage_share`: grant from this instance's share while the
    store is unreachable (else fail closed); the share is `limit // fleet size`, the fleet size
    being the one last seen, or `expected_instances` before any was seen.
    """

    limit: int = 50
    window_seconds: float = 60.0
    max_wait_seconds: float = 30.0
    safety_margin_seconds: float = 1.0
    token_reserve: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)
    outage_share: bool = True
    expected_instances: int = 1

    @property
    def window(self) -> Window:
        """The window the store enforces: `window_seconds` plus the safety margin."""
        reserve = min(self.token_reserve, self.limit - 1)
        return Window(self.limit, self.window_seconds + self.safety_margin_seconds, reserve)

    def cost_of(self, caller: str) -> int:
        """The tag cost of one permit for `caller` (weight 1 when not configured)."""
        return tag_cost(self.weights.get(caller, 1.0))


@dataclass(frozen=True, slots=True)
class ShareUsage:
    """This instance granting alone while the store is down: its share and its own use."""

    share: int  # permits per window
    fleet: int  # the fleet size the share was computed from
    usage: Usage
