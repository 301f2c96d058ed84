"""The typed state the lifespan builds once and every request reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.auth.callers import CallerAuthenticator
from app.clock import Clock
from app.config import Settings
from app.store.ports import Store
from app.tokens.service import TokenService


@dataclass
class Services:
    """Everything a request handler may use."""

    settings: Settings
    store: Store
    tokens: TokenService
    auth: CallerAuthenticator
    clock: Clock
    instance: str
    version: str
    started_at: float
    extra: dict[str, Any] = field(default_factory=dict)
