"""Caller SDK for paysera-token-broker: the broker's token as httpx/requests auth.

`BrokerAuth` caches the token the broker hands out, shares it between threads and tasks (one
broker request in flight), reports a token Paysera rejects and retries that request once, and
asks the fleet budget for permits. The broker's errors arrive as the exceptions in `errors`.
"""

from token_broker_client._broker import Permit, __version__
from token_broker_client.auth import BrokerAuth, PermitRequest
from token_broker_client.errors import (
    BrokerError,
    BrokerUnavailable,
    BudgetExhausted,
    ClientRequired,
    Forbidden,
    InvalidRequest,
    RefreshThrottled,
    RetryLater,
    Unauthorized,
    UnknownClient,
    UpstreamCredentialsRejected,
)

__all__ = [
    "BrokerAuth",
    "BrokerError",
    "BrokerUnavailable",
    "BudgetExhausted",
    "ClientRequired",
    "Forbidden",
    "InvalidRequest",
    "Permit",
    "PermitRequest",
    "RefreshThrottled",
    "RetryLater",
    "Unauthorized",
    "UnknownClient",
    "UpstreamCredentialsRejected",
    "__version__",
]
