"""Caller authentication by API key (and certificate identity) and authorisation per client."""

from __future__ import annotations

import hashlib

import pytest

from app.api.errors import broker_error_response, status_and_code
from app.auth.callers import Caller, CallerAuthenticator, hash_api_key, new_api_key
from app.config import CallerSettings
from app.errors import ClientRequired, Forbidden, Unauthorized, UnknownClient

ORDERS_KEY = "tbk_unit_orders_key_000000000000000000"
BILLING_KEY = "tbk_unit_billing_key_00000000000000000"
CLIENTS = ("checkout", "payouts", "refunds")


@pytest.fixture
def auth() -> CallerAuthenticator:
    """Three callers: one client by key, two clients by key, one client by certificate."""
    callers = {
        "orders": CallerSettings(api_key_sha256=hash_api_key(ORDERS_KEY), clients=["checkout"]),
        "billing": CallerSettings(
            api_key_sha256=hash_api_key(BILLING_KEY).upper(),  # hex case does not matter
            clients=["checkout", "payouts"],
        ),
        "shop": CallerSettings(
            mtls_identities=["URI:spiffe://corp/ns/shop/sa/shop", "CN=shop"],
            clients=["payouts", "payouts"],
        ),
    }
    return CallerAuthenticator(callers, CLIENTS)


def test_hash_api_key_is_hex_sha256() -> None:
    """The configured hash of a key is the lower-case hex SHA-256 of its UTF-8 bytes."""
    assert hash_api_key("abc") == hashlib.sha256(b"abc").hexdigest()


def test_new_api_keys_are_long_and_unique() -> None:
    """Fresh API keys carry the tbk_ prefix, 256 random bits, and never repeat."""
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(key.startswith("tbk_") and len(key) >= 4 + 43 for key in keys)


def test_key_hash_matches_its_caller(auth: CallerAuthenticator) -> None:
    """A presented key is matched to the caller whose configured hash it has."""
    orders = auth.authenticate(api_key=ORDERS_KEY, identities=None)
    billing = auth.authenticate(api_key=BILLING_KEY, identities=None)
    assert (orders.name, orders.clients) == ("orders", frozenset({"checkout"}))
    assert (billing.name, billing.clients) == ("billing", frozenset({"checkout", "payouts"}))


@pytest.mark.parametrize(
    "key",
    ["tbk_unknown", "", ORDERS_KEY + " ", ORDERS_KEY.upper(), hash_api_key(ORDERS_KEY)],
    ids=["unknown", "empty", "trailing-space", "upper-case", "the-hash-itself"],
)
def test_unknown_key_is_unauthorized(auth: CallerAuthenticator, key: str) -> None:
    """A key whose hash matches no caller (the stored hash itself included) is refused."""
    assert auth.by_api_key(key) is None
    with pytest.raises(Unauthorized):
        auth.authenticate(api_key=key, identities=None)


def test_no_credentials_is_unauthorized(auth: CallerAuthenticator) -> None:
    """A request without key or certificate is refused."""
    with pytest.raises(Unauthorized, match="credentials required"):
        auth.authenticate(api_key=None, identities=None)


def test_error_messages_never_contain_the_key(auth: CallerAuthenticator) -> None:
    """The Unauthorized message does not repeat the presented key."""
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(api_key="tbk_presented_secret_key", identities=None)
    assert "tbk_presented_secret_key" not in str(info.value)


def test_certificate_identity_names_its_caller(auth: CallerAuthenticator) -> None:
    """A certificate identity listed in mtls_identities authenticates that caller."""
    caller = auth.authenticate(api_key=None, identities=["DNS:ignored", "CN=shop"])
    assert caller.name == "shop"


def test_unknown_certificate_is_unauthorized(auth: CallerAuthenticator) -> None:
    """A certificate whose identities match no caller is refused."""
    with pytest.raises(Unauthorized):
        auth.authenticate(api_key=None, identities=["CN=stranger"])


def test_key_and_certificate_of_different_callers_are_unauthorized(
    auth: CallerAuthenticator,
) -> None:
    """A key and a certificate naming different callers are refused, not resolved."""
    with pytest.raises(Unauthorized):
        auth.authenticate(api_key=ORDERS_KEY, identities=["CN=shop"])


def test_wrong_key_beside_a_good_certificate_is_unauthorized(auth: CallerAuthenticator) -> None:
    """Every presented credential must be valid: a bad key next to a good certificate fails."""
    with pytest.raises(Unauthorized):
        auth.authenticate(api_key="tbk_wrong", identities=["CN=shop"])


def caller(auth: CallerAuthenticator, name: str) -> Caller:
    """The configured caller `name`."""
    found = auth.caller(name)
    assert found is not None
    return found


@pytest.mark.parametrize("client", [None, ""])
def test_single_client_caller_gets_its_default(
    auth: CallerAuthenticator, client: str | None
) -> None:
    """A caller allowed one client gets it when the request names none."""
    assert auth.authorize(caller(auth, "orders"), client) == "checkout"


def test_duplicate_listing_still_counts_as_one_client(auth: CallerAuthenticator) -> None:
    """A caller listing the same client twice still has it as its default."""
    assert auth.authorize(caller(auth, "shop"), None) == "payouts"


def test_multi_client_caller_must_name_one(auth: CallerAuthenticator) -> None:
    """A caller allowed several clients that names none gets client_required."""
    with pytest.raises(ClientRequired):
        auth.authorize(caller(auth, "billing"), None)


def test_named_allowed_client_is_granted(auth: CallerAuthenticator) -> None:
    """A caller naming one of its clients gets that client."""
    assert auth.authorize(caller(auth, "billing"), "payouts") == "payouts"


def test_known_client_not_listed_is_forbidden(auth: CallerAuthenticator) -> None:
    """A configured client the caller is not allowed is forbidden."""
    with pytest.raises(Forbidden):
        auth.authorize(caller(auth, "orders"), "payouts")


def test_unconfigured_client_is_unknown(auth: CallerAuthenticator) -> None:
    """A client that is not configured at all is unknown_client, whoever asks."""
    with pytest.raises(UnknownClient):
        auth.authorize(caller(auth, "orders"), "nope")
    with pytest.raises(UnknownClient):
        auth.authorize(caller(auth, "billing"), "Checkout")


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Unauthorized("x"), 401, "unauthorized"),
        (Forbidden("x"), 403, "forbidden"),
        (UnknownClient("x"), 404, "unknown_client"),
        (ClientRequired("x"), 400, "client_required"),
    ],
)
def test_auth_errors_map_to_contract_codes(error: Exception, status: int, code: str) -> None:
    """Each authentication/authorisation error has the contract's status and code."""
    assert status_and_code(error) == (status, code)  # type: ignore[arg-type]


def test_unauthorized_response_asks_for_the_api_key() -> None:
    """A 401 response carries WWW-Authenticate naming the X-API-Key header."""
    response = broker_error_response(Unauthorized("unknown API key"))
    assert response.status_code == 401
    assert "X-API-Key" in response.headers["www-authenticate"]
