"""Which certificate a request presents: a trusted proxy's XFCC header or the TLS handshake's."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from app.auth.identity import is_trusted_peer, presented_identities

SIDECAR = "127.0.0.2"
TRUSTED = [ipaddress.ip_network(f"{SIDECAR}/32")]
HANDSHAKE = ["CN=shop"]
ORDERS_XFCC = "By=spiffe://corp/ns/tb/sa/broker;URI=spiffe://corp/ns/shop/sa/orders"


@pytest.mark.parametrize(
    ("host", "networks", "trusted"),
    [
        ("127.0.0.2", ["127.0.0.2/32"], True),
        ("127.0.0.1", ["127.0.0.2/32"], False),
        ("10.1.2.3", ["10.0.0.0/8", "fd00::/8"], True),
        ("::ffff:10.0.0.5", ["10.0.0.0/8"], True),  # IPv4-mapped, from a dual-stack socket
        ("fd00::1", ["fd00::/8"], True),
        ("fd00::1", ["10.0.0.0/8"], False),
        ("fe80::1%eth0", ["fe80::/10"], True),
        ("10.0.0.1", [], False),
        (None, ["0.0.0.0/0"], False),
        ("/run/broker.sock", ["0.0.0.0/0"], False),
    ],
)
def test_trusted_peer(host: str | None, networks: list[str], trusted: bool) -> None:
    """Only a direct peer address inside a configured CIDR counts as a trusted proxy."""
    parsed = [ipaddress.ip_network(n) for n in networks]
    assert is_trusted_peer(host, parsed) is trusted


def test_xfcc_from_a_trusted_peer_replaces_the_handshakes_certificate() -> None:
    """From a trusted proxy, the identities are the header's, not the handshake's."""
    identities = presented_identities([ORDERS_XFCC], SIDECAR, TRUSTED, HANDSHAKE)
    assert identities == ["URI:spiffe://corp/ns/shop/sa/orders"]


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [("127.0.0.1", TRUSTED), (None, TRUSTED), (SIDECAR, [])],
    ids=["untrusted-peer", "no-peer-address", "no-trusted-proxies"],
)
def test_xfcc_from_anyone_else_is_ignored(
    peer: str | None, trusted: list[ipaddress.IPv4Network]
) -> None:
    """From a peer outside the trusted CIDRs the header is ignored: the handshake decides."""
    assert presented_identities([ORDERS_XFCC], peer, trusted, HANDSHAKE) == HANDSHAKE
    assert presented_identities([ORDERS_XFCC], peer, trusted, None) is None


def test_without_xfcc_the_handshake_decides() -> None:
    """A trusted proxy that sends no header leaves the handshake's certificate, if any."""
    assert presented_identities([], SIDECAR, TRUSTED, HANDSHAKE) == HANDSHAKE
    assert presented_identities([], SIDECAR, TRUSTED, None) is None


def test_repeated_header_lines_are_one_list_and_the_last_element_counts() -> None:
    """Several header lines are joined as one list; the nearest proxy's element is the last."""
    farther = "By=spiffe://corp/ns/edge/sa/gateway;DNS=attacker.example"
    identities = presented_identities([farther, ORDERS_XFCC], SIDECAR, TRUSTED, None)
    assert identities == ["URI:spiffe://corp/ns/shop/sa/orders"]


def test_malformed_xfcc_from_a_trusted_peer_is_no_certificate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A malformed header is no certificate at all (not the handshake's) and logs a warning."""
    with caplog.at_level(logging.WARNING, logger="app.auth.identity"):
        identities = presented_identities(['URI="unterminated'], SIDECAR, TRUSTED, HANDSHAKE)
    assert identities is None
    assert [record.getMessage() for record in caplog.records] == ["auth.xfcc_malformed"]
