"""Neither the SDK's logs nor its exceptions ever show a token or the API key."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from token_broker_client import BrokerAuth, BrokerError
from token_broker_client.auth import fingerprint

from tests.client.support import KINDS, METHODS, Setup, call
from tests.conftest import API_KEYS


async def test_logs_hold_fingerprints_only(
    setup: Setup, make_auth: Callable[..., BrokerAuth], caplog: pytest.LogCaptureFixture
) -> None:
    """A revoked token's retry, with every library at DEBUG, logs the token's fingerprint and
    neither token nor the API key."""
    caplog.set_level(logging.DEBUG)
    auth = make_auth(setup.url)
    old = await auth.atoken()
    await setup.emulator.revoke()
    for kind in KINDS:
        assert (await call(kind, auth, setup.emulator.base_url + METHODS)).status == 200
    new = await auth.atoken()
    errors: list[BrokerError] = []
    for bad in (make_auth(setup.url, api_key="tbk_" + "x" * 32), make_auth(setup.url, client="x")):
        with pytest.raises(BrokerError) as raised:
            await bad.atoken()
        errors.append(raised.value)
    text = caplog.text + "".join(f"{e}{e!r}{e.args!r}" for e in errors)
    assert f"token_fp={fingerprint(old)}" in caplog.text
    for secret in (old, new, API_KEYS["orders"], "tbk_" + "x" * 32):
        assert secret not in text
