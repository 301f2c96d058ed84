"""`create_app(settings)` wires settings, store, upstream client and services at start-up."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI

from app import __version__
from app.api import budget, discovery, health, oauth, oauth_revoke, proxy, tokens
from app.api import metrics as metrics_api
from app.api.errors import install_error_handlers
from app.api.openapi import install_openapi
from app.api.token_answer import TokenAnswers
from app.api.warm_token import BrokerApp, WarmTokenPath
from app.auth.callers import CallerAuthenticator
from app.budget.model import BudgetPolicy
from app.budget.service import BudgetService
from app.clock import SYSTEM_CLOCK, Clock
from app.config import BudgetSettings, CallerSettings, Settings, StoreSettings
from app.observability.fleet import FleetView, heartbeating
from app.observability.logs import log_event
from app.observability.metrics import BrokerMetrics
from app.observability.request_log import RequestLog, RequestLogMiddleware, refused_request_log
from app.observability.tracing import Tracing, start_tracing
from app.services import Services
from app.store.memory import MemoryStore
from app.store.ports import Store
from app.store.sealing import Key, Sealers, credential_fingerprint, parse_keyring
from app.tokens.model import ClientPolicy
from app.tokens.service import TokenService
from app.transport.limits import REFUSAL_HOOK_STATE
from app.transport.quick import QUICK_ANSWER_STATE
from app.upstream.credentials import ClientCredentials, Credentials
from app.upstream.oauth import UpstreamTokenClient
from app.upstream.proxy import UpstreamProxy

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

HTTP_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def _not_counted(_client: str, _reason: str) -> None:
    pass


def build_store(
    settings: StoreSettings,
    clock: Clock,
    metrics: BrokerMetrics | None = None,
    credentials: ClientCredentials | None = None,
) -> Store:
    """The embedded store, or the Redis adapter when `redis_url` is set; bound to each client's
    `credentials` (their fingerprint names the generation, and keys Redis entries)."""
    if settings.redis_url is None:
        if credentials is None:
            return MemoryStore(clock=clock)
        return MemoryStore(clock=clock, generation=credentials.fingerprint)
    from app.store.redis import RedisStore  # imported only when configured

    exhausted = metrics.store_pool_exhausted.inc if metrics is not None else None
    rejected = metrics.cache_entry_rejected if metrics is not None else _not_counted
    sealers = Sealers(keyring_of(settings))
    if credentials is not None:
        bind_sealers(sealers, credentials)
    log_event(log, logging.INFO, "store.tokens_at_rest", mode=sealers.mode, cipher="AES-256-GCM")
    return RedisStore(
        settings,
        clock=clock,
        sealers=sealers,
        on_rejected=rejected,
        on_pool_exhausted=exhausted,
    )


def keyring_of(settings: StoreSettings) -> tuple[Key, ...]:
    """The keys of `store.encryption_keys_file` (first encrypts); none without it."""
    if settings.encryption_keys_file is None:
        return ()
    return parse_keyring(settings.encryption_keys_file.read_text(encoding="utf-8"))


def bind_sealers(sealers: Sealers, credentials: ClientCredentials) -> None:
    """Seal each client's entries under its current credentials, now and after every reload."""

    def bind(client: str, current: Credentials) -> None:
        sealers.bind(client, current.client_id, current.secret.get_secret_value())

    for client in credentials.clients:
        bind(client, credentials.get(client))
    credentials.subscribe(bind)


def policies_of(settings: Settings) -> dict[str, ClientPolicy]:
    """The token service's view of each configured client."""
    return {
        name: ClientPolicy(
            refresh_buffer=spec.refresh_buffer_seconds,
            min_forced_interval=spec.min_forced_refresh_interval_seconds,
            upstream_timeout=spec.timeout_seconds,
            permit_wait=settings.budget.max_wait_seconds
            if settings.budget.count_token_requests
            else 0.0,
        )
        for name, spec in settings.clients.items()
    }


def budget_policy_of(
    settings: BudgetSettings, callers: Mapping[str, CallerSettings] | None = None
) -> BudgetPolicy:
    """The budget service's rules: the callers' weights, the token reserve (only when token
    requests take permits), and what to do while the store is unreachable."""
    return BudgetPolicy(
        limit=settings.limit,
        window_seconds=settings.window_seconds,
        max_wait_seconds=settings.max_wait_seconds,
        safety_margin_seconds=settings.safety_margin_seconds,
        token_reserve=settings.token_reserve if settings.count_token_requests else 0,
        weights={name: caller.budget_weight for name, caller in (callers or {}).items()},
        outage_share=settings.on_store_unavailable == "local_share",
        expected_instances=settings.expected_instances,
    )


def permit_taker(budget_service: BudgetService) -> Callable[[str], Awaitable[None]]:
    """Token requests take budget permits too (`budget.count_token_requests`); they come before
    waiting API permits and may use the token reserve."""

    async def take(client: str) -> None:
        await budget_service.acquire(
            client, budget_service.policy.max_wait_seconds, token_request=True
        )

    return take


def instance_id() -> str:
    """Host name plus a random suffix: unique per process, readable in /health."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


@asynccontextmanager
async def open_services(
    settings: Settings,
    clock: Clock = SYSTEM_CLOCK,
    metrics: BrokerMetrics | None = None,
    tracing: Tracing | None = None,
) -> AsyncIterator[Services]:
    """Open the store and the upstream HTTP client, build the services, close both after."""
    if metrics is None:
        metrics = BrokerMetrics(settings.clients, settings.callers, clock=clock)
    credentials = ClientCredentials(settings.clients, fingerprint=credential_fingerprint)
    store = build_store(settings.store, clock, metrics, credentials)
    if tracing is not None:
        tracing.instrument_store(store)
    await store.start()
    try:
        async with httpx.AsyncClient(limits=HTTP_LIMITS, follow_redirects=False) as http:
            if tracing is not None:
                tracing.instrument_http(http)
            fetcher = UpstreamTokenClient(
                http, settings.clients, clock=clock, credentials=credentials
            )
            fleet_view = FleetView(settings.budget.expected_instances)
            budget_service = BudgetService(
                budget_policy_of(settings.budget, settings.callers),
                store,
                clock=clock,
                events=metrics.budget,
                fleet_size=fleet_view.last_size,
            )
            token_service = TokenService(
                policies_of(settings),
                (store, store),
                # This instance's own store while the shared one is down: its locks and holds
                # keep in-process single flight and backoff working.
                MemoryStore(clock=clock, generation=credentials.fingerprint),
                fetcher,
                clock=clock,
                take_permit=permit_taker(budget_service)
                if settings.budget.count_token_requests
                else None,
                events=metrics.tokens,
            )
            store.subscribe(token_service.on_change)
            # After the store's keys (bound above), so the service re-reads under the new ones.
            credentials.subscribe(
                lambda client, new: token_service.credentials_changed(client, new.fingerprint)
            )
            services = Services(
                settings=settings,
                store=store,
                tokens=token_service,
                budget=budget_service,
                proxy=UpstreamProxy(
                    http, settings.clients, settings.proxy, token_service, budget_service
                ),
                auth=CallerAuthenticator(settings.callers, settings.clients),
                clock=clock,
                instance=instance_id(),
                version=__version__,
                started_at=clock.time(),
                metrics=metrics,
            )
            metrics.state.build_info.labels(__version__).set(1)
            watcher = asyncio.create_task(credentials.watch()) if credentials.watched else None
            try:
                async with heartbeating(store, services.instance, services.version, fleet_view):
                    yield services
            finally:
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
                await token_service.close()
    finally:
        await store.close()


def create_app(
    settings: Settings, *, clock: Clock = SYSTEM_CLOCK, span_exporter: SpanExporter | None = None
) -> BrokerApp:
    """The broker's ASGI app for `settings`; `span_exporter` replaces the OTLP exporter of a
    configured `[tracing]` (the tests pass an in-memory one)."""
    metrics = BrokerMetrics(settings.clients, settings.callers, clock=clock)
    tracing = None
    if settings.tracing.enabled:
        tracing = start_tracing(settings.tracing, __version__, span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        try:
            async with open_services(settings, clock, metrics, tracing) as services:
                app.state.services = services
                yield {"services": services, "token_answers": TokenAnswers()}
        finally:
            if tracing is not None:
                tracing.close()

    app = BrokerApp(
        title="paysera-token-broker",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # an API answers the path it was asked, never a redirect
    )
    install_error_handlers(app)
    # Requests the HTTP layer refuses before routing are logged and counted like any other
    # (app.transport reads this hook; the app itself never sees those requests).
    request_log = RequestLog(metrics)
    setattr(app.state, REFUSAL_HOOK_STATE, refused_request_log(request_log))
    app.add_middleware(RequestLogMiddleware, settings=settings, request_log=request_log)
    app.include_router(tokens.router)
    app.include_router(oauth.router)
    app.include_router(oauth_revoke.router)
    app.include_router(discovery.router)
    app.include_router(budget.router)
    app.include_router(proxy.router)
    app.include_router(health.router)
    app.include_router(metrics_api.router)
    install_openapi(app)
    if tracing is not None:
        tracing.instrument_app(app)  # every request gets its span: no warm path around it
    else:
        app.warm_path = WarmTokenPath(settings.clients, request_log)
        # Under BrokerServer the HTTP protocol itself answers warm GET /token (no ASGI task).
        setattr(app.state, QUICK_ANSWER_STATE, app.quick_answers)
    return app
