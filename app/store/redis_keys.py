"""The Redis adapter's key names.

Key schema v2 (see alembic-free-migrations.md); `P` is `store.key_prefix`. Every key of one
client carries the hash tag `{client.FP}`, FP being the fingerprint of the client's credentials
(`app.store.sealing`), so a script's keys share one Redis Cluster slot and each generation of
credentials has keys of its own:

    P:v2:{client.FP}:token   hash   sealed, digest, expires_at: the token sealed with AES-256-GCM
    P:v2:{client.FP}:hold    string why the fleet holds off the upstream; expires with the hold
    P:v2:{client.FP}:forced  string present while a forced refresh is too recent
    P:v2:{client.FP}:lock    string refresh lock owner; SET NX PX, compare-and-delete release
    P:v2:changes             pub/sub channel, messages "client.FP kind digest"
    P:v1:{budget}:grants     zset   "caller permit-id" -> grant time (ms of Redis time); the
                                    fleet's sliding window
    P:v1:{budget}:cooldown   string present until the upstream's reported reset (or a failover
                                    fence) has passed
    P:v1:{budget}:epoch      string run_id of the Redis process that counts the window
    P:v1:{budget}:tq         zset   waiting token requests -> arrival number
    P:v1:{budget}:aq         zset   waiting API permit requests -> virtual finish tag
    P:v1:{budget}:leases     zset   waiting request -> ms at which it is dropped unless asked again
    P:v1:{budget}:waiters    hash   waiting request -> "t caller" / "a caller"
    P:v1:{budget}:fair       hash   v (virtual time), seq, pace, tag:CALLER, n:CALLER (while any
                                    waits)
    P:v1:instances           zset   "INSTANCE VERSION" -> Redis ms at which its heartbeat lapses

The budget and instance keys keep their v1 names: a budget window must never be split between
two schema versions during a rolling upgrade. The fair queue (issue 18) only added keys and
names its grants "caller permit-id": instances of either version count every grant in the one
window, so the limit holds across the upgrade (the fair order only among the new ones).
"""

from __future__ import annotations

from collections.abc import Callable

from app.store.sealing import SCHEMA_VERSION

FLEET_SCHEMA_VERSION = "v1"
"""The budget and instance keys: unchanged since v1 (the token keys are `SCHEMA_VERSION`)."""


def _no_fingerprint(_client: str) -> str:
    return ""


class KeySchema:
    """Key names under a prefix: a client's keys (v2) name its credentials' fingerprint."""

    def __init__(self, prefix: str, fingerprint: Callable[[str], str] = _no_fingerprint) -> None:
        self.base = f"{prefix}:{FLEET_SCHEMA_VERSION}"
        self.tokens = f"{prefix}:{SCHEMA_VERSION}"
        self.changes = f"{self.tokens}:changes"
        self.instances = f"{self.base}:instances"
        self._fingerprint = fingerprint

    def tag(self, client: str, fingerprint: str | None = None) -> str:
        """`client.FP`: the hash tag of one client's keys under one generation of credentials
        (the current one unless `fingerprint` is given)."""
        return f"{client}.{self._fingerprint(client) if fingerprint is None else fingerprint}"

    def client(self, client: str, kind: str, fingerprint: str | None = None) -> str:
        """`P:v2:{client.FP}:kind`."""
        return f"{self.tokens}:{{{self.tag(client, fingerprint)}}}:{kind}"

    def token(self, client: str, fingerprint: str) -> list[str]:
        """The keys `load.lua` and `save.lua` take: the client's token entry and its hold."""
        return [self.client(client, "token", fingerprint), self.client(client, "hold", fingerprint)]

    @property
    def budget(self) -> list[str]:
        """The budget scripts' keys: grants zset and cooldown, in one slot."""
        return [f"{self.base}:{{budget}}:grants", f"{self.base}:{{budget}}:cooldown"]

    @property
    def budget_epoch(self) -> str:
        """The run_id of the Redis process that counts the window; in the budget's slot."""
        return f"{self.base}:{{budget}}:epoch"

    @property
    def budget_queue(self) -> list[str]:
        """The fair queue's keys: token queue, API queue, leases, waiters, state."""
        return [
            f"{self.base}:{{budget}}:{kind}" for kind in ("tq", "aq", "leases", "waiters", "fair")
        ]
