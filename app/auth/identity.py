"""Which client certificate a request presents: a trusted proxy's XFCC, or the TLS handshake's.

From a peer inside `server.xfcc_trusted_proxies` that sends X-Forwarded-Client-Cert, the
certificate is the one that header describes (its last element: the nearest proxy's), and a
malformed header counts as no certificate. From any other peer the header is ignored and the
certificate is the one verified in the connection's TLS handshake, if any. The transport reads
the handshake's certificate into identities; this module only decides which one to believe.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Iterable, Sequence

from app.auth.xfcc import nearest_identities
from app.errors import MalformedXfcc
from app.observability.logs import log_event

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def presented_identities(
    xfcc_values: Sequence[str],
    peer: str | None,
    trusted_proxies: Collection[Network],
    handshake_identities: list[str] | None,
) -> list[str] | None:
    """Identities of the certificate the request presents; None when it presents none.

    `xfcc_values` are the request's X-Forwarded-Client-Cert header lines, `peer` the direct
    peer's address, `handshake_identities` those of the certificate verified in its handshake.
    """
    if xfcc_values and trusted_proxies and is_trusted_peer(peer, trusted_proxies):
        try:
            # Repeated header lines are one comma-separated list (RFC 9110 section 5.3).
            return nearest_identities(",".join(xfcc_values))
        except MalformedXfcc as exc:
            log_event(log, logging.WARNING, "auth.xfcc_malformed", peer=peer, problem=str(exc))
            return None
    return handshake_identities


def is_trusted_peer(host: str | None, networks: Iterable[Network]) -> bool:
    """Whether the direct peer address lies in one of `networks` (IPv4-mapped IPv6 counts)."""
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a unix socket path or a name: never a trusted proxy
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate in network
        for network in networks
        for candidate in candidates
        if candidate.version == network.version
    )
