"""Prometheus metrics: one registry per app, fed by the core's event hooks and the request log.

The core (`app/tokens`, `app/budget`) knows nothing of Prometheus: it calls the no-op hooks
`TokenEvents` / `BudgetEvents`, which `TokenMetrics` / `BudgetMetrics` here implement. Gauges
that describe current state (seconds to expiry, budget use, store reachability) are set when
`/metrics` is scraped. Labels stay low-cardinality by construction: client and caller names
must be configured ones (anything else counts as `other`), routes are templates, outcomes come
from a fixed vocabulary. No token, secret, key or raw path ever becomes a label.

Every metric lives in the app's own `CollectorRegistry` (several apps in one test process do not
collide), except `PROXY_CALLS`: a module-level counter that the proxy increments directly, which
every app's registry exposes. One process serves one app in production, so that is exact there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Generic, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from app.budget.ports import BudgetEvents
from app.clock import SYSTEM_CLOCK, Clock
from app.observability.history import History
from app.observability.logs import REDACTOR, log_event
from app.observability.recent_errors import RecentErrors
from app.tokens.model import Token
from app.tokens.ports import TokenEvents

log = logging.getLogger("app.tokens")  # the core's events are logged under its name
budget_log = logging.getLogger("app.budget")

PREFIX = "token_broker"
OTHER = "other"
NONE = "-"

PROXY_CALLS = Counter(
    f"{PREFIX}_proxy_calls",
    "Upstream API calls made by /proxy, by client and upstream status class (2xx, 4xx, ...).",
    ["client", "status_class"],
    registry=None,  # registered in every app's registry (see the module docstring)
)

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

M = TypeVar("M", bound=MetricWrapperBase)


def status_class(status: int) -> str:
    """`2xx`, `4xx`, ... for an HTTP status (the label value of `PROXY_CALLS`)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


class _Children(Generic[M]):
    """Label children cached by value tuple: the hot path skips `labels()` validation/locks."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class _LoopCounts:
    """Counter increments made on the event loop for every request, added to their Prometheus
    children when /metrics is scraped: a dict update per request instead of a lock and four
    calls per counter. The loop's thread both counts and scrapes, so no one reads a child
    between the two."""

    def __init__(self) -> None:
        self._counts: dict[Counter, int] = {}

    def inc(self, child: Counter) -> None:
        """Count one."""
        self._counts[child] = self._counts.get(child, 0) + 1

    def publish(self) -> None:
        """Add what was counted since the last scrape to the children."""
        counts, self._counts = self._counts, {}
        for child, count in counts.items():
            child.inc(count)


class BrokerMetrics:
    """The app's registry and every metric in it."""

    def __init__(
        self, clients: Iterable[str], callers: Iterable[str], *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        # The `*_created` series double the output and no dashboard of ours reads them. The
        # switch is process-wide, which is fine: this process exports only these metrics.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.clients = frozenset(clients)
        self.callers = frozenset(callers)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(PROXY_CALLS)
        # The process's own health (RSS, fds, CPU, GC, Python version): the standard families.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.per_request = _LoopCounts()  # the counters every request moves
        self.errors = RecentErrors(clock)
        self.history = History(clock)  # the dashboard's last hour
        self._http_metrics()
        self._token_metrics()
        self._budget_metrics()
        self.state = StateGauges(self.registry)
        self.tokens = TokenMetrics(self)
        self.budget = BudgetMetrics(self)

    def _http_metrics(self) -> None:
        r = self.registry
        self.http_requests = _Children(
            Counter(
                f"{PREFIX}_http_requests",
                "HTTP requests by route template, method and status class.",
                ["route", "method", "status_class"],
                registry=r,
            )
        )
        self.http_seconds = _Children(
            Histogram(
                f"{PREFIX}_http_request_duration_seconds",
                "Time to answer an HTTP request, by route template.",
                ["route"],
                buckets=HTTP_BUCKETS,
                registry=r,
            )
        )

    def _token_metrics(self) -> None:
        r = self.registry
        self.token_requests = _Children(
            Counter(
                f"{PREFIX}_token_requests",
                "Token requests (/token, /token/invalidate, OAuth endpoints) by client, caller "
                "and outcome (ok or the error code).",
                ["client", "caller", "outcome"],
                registry=r,
            )
        )
        self.cache_hits = _Children(
            Counter(
                f"{PREFIX}_token_cache_hits",
                "Tokens served from this instance's memory (l1) or the shared store (l2).",
                ["client", "level"],
                registry=r,
            )
        )
        self.upstream_requests = _Children(
            Counter(
                f"{PREFIX}_upstream_token_requests",
                "Token requests sent to the upstream, by client and outcome.",
                ["client", "outcome"],
                registry=r,
            )
        )
        self.upstream_seconds = _Children(
            Histogram(
                f"{PREFIX}_upstream_token_request_duration_seconds",
                "Latency of upstream token requests, by outcome.",
                ["outcome"],
                buckets=UPSTREAM_BUCKETS,
                registry=r,
            )
        )
        self.lock_waits = _Children(
            Counter(
                f"{PREFIX}_refresh_lock_waits",
                "Times this instance waited for another holder of a client's refresh lock.",
                ["client"],
                registry=r,
            )
        )
        self.lapsed_leases = _Children(
            Counter(
                f"{PREFIX}_refresh_lock_lapsed",
                "Refresh locks that lapsed before this instance released them (a refresh "
                "slower than the lock's TTL: another instance may have refreshed too).",
                ["client"],
                registry=r,
            )
        )
        self.cache_rejections = _Children(
            Counter(
                f"{PREFIX}_token_cache_rejected",
                "Cached tokens read from the shared store that did not decrypt, parse or pass "
                "the checks, by client and reason; each was treated as missing and removed.",
                ["client", "reason"],
                registry=r,
            )
        )
        self.store_errors = _Children(
            Counter(
                f"{PREFIX}_store_errors",
                "Failed store operations, by component (tokens, budget).",
                ["component"],
                registry=r,
            )
        )
        self.store_pool_exhausted = Counter(
            f"{PREFIX}_store_pool_exhausted",
            "Store commands that found every connection (store.max_connections) busy for "
            "store.pool_timeout_seconds and failed; each is also a store error.",
            registry=r,
        )

    def _budget_metrics(self) -> None:
        r = self.registry
        self.budget_grants = _Children(
            Counter(f"{PREFIX}_budget_grants", "Budget permits granted.", ["client"], registry=r)
        )
        self.budget_denials = _Children(
            Counter(
                f"{PREFIX}_budget_denials",
                "Budget permit requests refused (no permit within the wait).",
                ["client"],
                registry=r,
            )
        )
        self.budget_wait = Histogram(
            f"{PREFIX}_budget_wait_seconds",
            "How long granted permit requests waited.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.budget_cooldowns = Counter(
            f"{PREFIX}_budget_cooldowns",
            "Fleet pauses started by an upstream 429 or X-RateLimit-Remaining: 0.",
            registry=r,
        )

    # -- labels -------------------------------------------------------------------------------

    def client_label(self, client: str | None) -> str:
        """A configured client's name, `-` for none, `other` for anything else."""
        if client is None:
            return NONE
        return client if client in self.clients else OTHER

    def caller_label(self, caller: str | None) -> str:
        """A configured caller's name, `-` for none (unauthenticated), `other` otherwise."""
        if caller is None:
            return NONE
        return caller if caller in self.callers else OTHER

    # -- requests -----------------------------------------------------------------------------

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request."""
        self.per_request.inc(self.http_requests(route, method, status_class(status)))
        self.http_seconds(route).observe(seconds)

    def token_request(self, client: str | None, caller: str | None, outcome: str) -> None:
        """Count one token request."""
        labels = (self.client_label(client), self.caller_label(caller), outcome)
        self.per_request.inc(self.token_requests(*labels))

    def cache_entry_rejected(self, client: str, reason: str) -> None:
        """Count one cache entry the store adapter rejected (reasons: `EntryRejected.REASONS`)."""
        self.cache_rejections(self.client_label(client), reason).inc()

    # -- scrape -------------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry and its content type: OpenMetrics when `accept` (the request's Accept
        header) asks for it, else the Prometheus text format 0.0.4."""
        self.per_request.publish()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class StateGauges:
    """The gauges that describe the present (token expiries, store, budget, fleet size): set
    when /metrics is scraped (`app.api.metrics`), from the services' own reports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Always 1; the version as a label.", ["version"], registry=r
        )
        self.seconds_to_expiry = Gauge(
            f"{PREFIX}_token_expiry_seconds",
            "Seconds until the cached token of a client expires (absent: no token yet).",
            ["client"],
            registry=r,
        )
        # The name before the unit went last (0.1.0); exposed beside the new one for one
        # release so dashboards and alerts can move over. Remove in the release after next.
        self.seconds_to_expiry_alias = Gauge(
            f"{PREFIX}_token_seconds_to_expiry",
            "Deprecated alias of token_broker_token_expiry_seconds (removed after one release).",
            ["client"],
            registry=r,
        )
        self.token_valid = Gauge(
            f"{PREFIX}_token_valid",
            "1 while this instance holds an unexpired token for the client.",
            ["client"],
            registry=r,
        )
        self.store_up = Gauge(f"{PREFIX}_store_up", "1 when the store answers.", registry=r)
        self.budget_limit = Gauge(f"{PREFIX}_budget_limit", "Permits per window.", registry=r)
        self.budget_used = Gauge(
            f"{PREFIX}_budget_used", "Permits granted in the current window.", registry=r
        )
        self.budget_cooldown = Gauge(
            f"{PREFIX}_budget_cooldown_seconds", "Seconds left in the fleet's pause.", registry=r
        )
        self.budget_caller_granted = Gauge(
            f"{PREFIX}_budget_caller_granted",
            "Permits granted in the current window, fleet-wide, per caller (this instance's "
            "own while it grants alone).",
            ["caller"],
            registry=r,
        )
        self.budget_caller_waiting = Gauge(
            f"{PREFIX}_budget_caller_waiting",
            "Permit requests waiting, fleet-wide, per caller.",
            ["caller"],
            registry=r,
        )
        self.budget_token_granted = Gauge(
            f"{PREFIX}_budget_token_requests_granted",
            "Permits granted to the broker's own token requests in the current window.",
            registry=r,
        )
        self.budget_token_waiting = Gauge(
            f"{PREFIX}_budget_token_requests_waiting",
            "The broker's own token requests waiting for a permit.",
            registry=r,
        )
        self.budget_local_share = Gauge(
            f"{PREFIX}_budget_local_share",
            "Permits per window this instance grants alone while the store is unreachable "
            "(0 while the shared window decides).",
            registry=r,
        )
        self.fleet_instances = Gauge(
            f"{PREFIX}_fleet_instances", "Broker instances heartbeating into the store.", registry=r
        )

    def set_expiry(self, client: str, seconds_left: float | None) -> None:
        """Seconds left on `client`'s token; None when this instance holds none."""
        self.token_valid.labels(client).set(1 if seconds_left and seconds_left > 0 else 0)
        for gauge in (self.seconds_to_expiry, self.seconds_to_expiry_alias):
            if seconds_left is None:
                try:
                    gauge.remove(client)
                except KeyError:
                    pass
            else:
                gauge.labels(client).set(max(0.0, seconds_left))


class TokenMetrics(TokenEvents):
    """The token service's hooks, counted."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._m = metrics

    def cache_hit(self, client: str, level: str) -> None:
        """See `TokenEvents.cache_hit`."""
        self._m.per_request.inc(self._m.cache_hits(self._m.client_label(client), level))

    def lock_wait(self, client: str) -> None:
        """See `TokenEvents.lock_wait`."""
        self._m.lock_waits(self._m.client_label(client)).inc()

    def upstream_request(
        self, client: str, outcome: str, seconds: float, detail: str | None
    ) -> None:
        """See `TokenEvents.upstream_request`."""
        self._m.upstream_requests(self._m.client_label(client), outcome).inc()
        self._m.upstream_seconds(outcome).observe(seconds)
        self._m.history.refresh(outcome == "ok")
        if detail is not None:
            self._m.errors.add("upstream", client, outcome, detail)

    def token_held(self, client: str, token: Token) -> None:
        """See `TokenEvents.token_held`: the token is scrubbed from every later log line."""
        REDACTOR.add(token.access_token, key=client, expires_at=token.expires_at)

    def lease_lapsed(self, client: str) -> None:
        """See `TokenEvents.lease_lapsed`."""
        self._m.lapsed_leases(self._m.client_label(client)).inc()
        log_event(log, logging.WARNING, "token.refresh_lock_lapsed", client=client)

    def served_stale(self, client: str, token: Token, seconds_left: float, hold: str) -> None:
        """See `TokenEvents.served_stale`."""
        log_event(
            log,
            logging.WARNING,
            "token.served_stale",
            client=client,
            token_fp=token.fingerprint,
            seconds_left=round(seconds_left),
            hold=hold,
        )

    def store_state(self, ok: bool) -> None:
        """See `TokenEvents.store_state`."""
        log_event(log, logging.INFO if ok else logging.WARNING, "store.state", ok=ok)

    def store_error(self) -> None:
        """See `TokenEvents.store_error`."""
        self._m.store_errors("tokens").inc()
        self._m.history.error()
        self._m.errors.add("store", None, "unavailable", "the store did not answer (tokens)")


class BudgetMetrics(BudgetEvents):
    """The budget service's hooks, counted."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._m = metrics

    def granted(self, client: str, waited: float) -> None:
        """See `BudgetEvents.granted`."""
        self._m.budget_grants(self._m.client_label(client)).inc()
        self._m.budget_wait.observe(waited)
        self._m.history.granted()

    def denied(self, client: str) -> None:
        """See `BudgetEvents.denied`."""
        self._m.budget_denials(self._m.client_label(client)).inc()
        self._m.history.denied()

    def cooldown(self, seconds: float) -> None:
        """See `BudgetEvents.cooldown`."""
        self._m.budget_cooldowns.inc()
        message = f"the upstream asked the fleet to pause for {seconds:.0f} s"
        self._m.errors.add("budget", None, "rate_limited", message)

    def local_share(self, active: bool, share: int) -> None:
        """See `BudgetEvents.local_share`: logged, the gauge is set at scrape time."""
        if active:
            log_event(budget_log, logging.WARNING, "budget.local_share", per_window=share)
        else:
            log_event(budget_log, logging.INFO, "budget.shared_again")

    def store_error(self) -> None:
        """See `BudgetEvents.store_error`."""
        self._m.store_errors("budget").inc()
        self._m.history.error()
        self._m.errors.add("store", None, "unavailable", "the store did not answer (budget)")
