"""Values the token service and its ports exchange."""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")


def is_b64token(value: str) -> bool:
    """Whether `value` may be a bearer token: RFC 6750 §2.1 `b64token` (also a legal header
    value, which a token with a control character or a space is not)."""
    return bool(_B64TOKEN.match(value))


def digest(secret: str) -> str:
    """Full SHA-256 hex of a token: identifies it in store messages without revealing it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a token that is safe to log: 12 hex chars of SHA-256."""
    return digest(secret)[:12]


@dataclass(frozen=True, slots=True)
class Token:
    """An upstream access token and its life; `repr` never shows the token itself."""

    access_token: str = field(repr=False)
    expires_at: float  # unix seconds, measured from when the request was sent
    obtained_at: float  # unix seconds, when the request was sent
    token_type: str = "Bearer"
    # Which credentials obtained it, as an opaque tag from the adapters ("" = not known). After
    # a client's credentials change the core serves only tokens of the new tag.
    minted_by: str = ""

    @property
    def lifetime(self) -> float:
        """Seconds between obtaining the token and its expiry."""
        return self.expires_at - self.obtained_at

    @property
    def digest(self) -> str:
        """See `digest()`."""
        return digest(self.access_token)

    @property
    def fingerprint(self) -> str:
        """See `fingerprint()`."""
        return fingerprint(self.access_token)

    def serve_until(self, refresh_buffer: float) -> float:
        """Unix time after which this token must not be handed out while the upstream answers.

        The buffer is capped at half the lifetime: a buffer longer than the token lives would
        make every request a refresh.
        """
        return self.expires_at - min(refresh_buffer, self.lifetime / 2)

    def __repr__(self) -> str:
        return f"Token(fp={self.fingerprint}, expires_at={self.expires_at:.0f})"


class HoldReason(enum.StrEnum):
    """Why the fleet is holding off the upstream token endpoint for a client."""

    REJECTED = "rejected"  # the upstream rejected the credentials
    UNAVAILABLE = "unavailable"  # the upstream failed; back off


@dataclass(frozen=True, slots=True)
class Hold:
    """A fleet-wide pause of upstream token requests for one client."""

    reason: HoldReason
    remaining: float  # seconds


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the shared store knows about one client: its token and any hold."""

    token: Token | None
    hold: Hold | None = None


class DiscardOutcome(enum.Enum):
    """What a compare-and-delete of a reported token did."""

    DISCARDED = "discarded"
    NOT_CURRENT = "not_current"
    THROTTLED = "throttled"


@dataclass(frozen=True, slots=True)
class DiscardResult:
    """Outcome of `TokenStore.discard`; `retry_after` is set when throttled."""

    outcome: DiscardOutcome
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class Lease:
    """The result of trying the refresh lock: held (with an owner id) or busy for `wait` s."""

    client: str
    owner: str | None  # None: someone else holds it
    wait: float = 0.0  # when busy: seconds until the other holder's lease lapses

    @property
    def acquired(self) -> bool:
        """Whether this instance holds the lock."""
        return self.owner is not None


class ChangeKind(enum.StrEnum):
    """What happened to a client's cached token."""

    SAVED = "saved"
    DISCARDED = "discarded"
    RELEASED = "released"  # a refresh lock was released (maybe after a failure): wake waiters


@dataclass(frozen=True, slots=True)
class TokenChange:
    """A change to one client's cached token, as broadcast to every instance."""

    client: str
    kind: ChangeKind
    digest: str  # `digest()` of the saved or discarded token; "-" for RELEASED


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """How the token core treats one upstream client (built from settings by `app.main`)."""

    refresh_buffer: float = 300.0
    min_forced_interval: float = 10.0
    upstream_timeout: float = 10.0
    permit_wait: float = 0.0  # longest wait for a budget permit before a token request

    @property
    def lock_ttl(self) -> float:
        """Longer than one upstream attempt (and its permit wait), so a live holder never loses
        its lock."""
        return self.permit_wait + self.upstream_timeout * 1.5 + 2.0
