"""The typed state the lifespan builds once and every request reads."""

from __future__ import annotations

from dataclasses import dataclass

from app.auth.callers import CallerAuthenticator
from app.budget.service import BudgetService
from app.clock import Clock
from app.config import Settings
from app.observability.metrics import BrokerMetrics
from app.store.ports import Store
from app.tokens.service import TokenService
from app.upstream.proxy import UpstreamProxy


@dataclass
class Services:
    """Everything a request handler may use."""

    settings: Settings
    store: Store
    tokens: TokenService
    budget: BudgetService
    proxy: UpstreamProxy
    auth: CallerAuthenticator
    clock: Clock
    instance: str
    version: str
    started_at: float
    metrics: BrokerMetrics
