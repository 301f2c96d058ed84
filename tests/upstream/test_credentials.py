"""Client credentials: secret files reloaded on change (Kubernetes symlink swap or rewrite)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
import pytest

from app.config import ClientSettings
from app.errors import UpstreamCredentialsRejected
from app.store.sealing import credential_fingerprint
from app.upstream.credentials import ClientCredentials, Credentials
from app.upstream.oauth import UpstreamTokenClient
from tests.conftest import EMULATOR_ID, Emulator
from tests.support.secret_volume import SecretVolume

OLD, NEW = "old-secret-value-0000000001", "new-secret-value-0000000002"


def settings(path: Path, token_url: str = "http://127.0.0.1:9/token") -> dict[str, ClientSettings]:
    """One client `checkout` reading its secret from `path`."""
    spec = ClientSettings(
        token_url=token_url,
        api_base_url="http://127.0.0.1:9",
        client_id=EMULATOR_ID,
        client_secret_file=path,
    )
    return {"checkout": spec}


def fields_logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    """The structured fields of every `event` line."""
    return [r.fields for r in caplog.records if r.getMessage() == event]  # type: ignore[attr-defined]


def test_a_symlink_swap_is_picked_up_and_logged_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a Kubernetes-style update the new secret and its fingerprint are current, the
    listeners hear it in order, and the log names client and fingerprints but not the secret."""
    volume = SecretVolume(tmp_path, OLD)
    credentials = ClientCredentials(settings(volume.path), fingerprint=credential_fingerprint)
    heard: list[tuple[str, str, Credentials]] = []
    credentials.subscribe(lambda client, new: heard.append(("first", client, new)))
    credentials.subscribe(lambda client, new: heard.append(("second", client, new)))
    assert credentials.reload_if_changed() == []
    volume.update(NEW)
    with caplog.at_level(logging.INFO):
        assert credentials.reload_if_changed() == ["checkout"]
    current = credentials.get("checkout")
    assert current.secret.get_secret_value() == NEW
    assert current.fingerprint == credential_fingerprint(EMULATOR_ID, NEW)
    assert [(order, client) for order, client, _ in heard] == [
        ("first", "checkout"),
        ("second", "checkout"),
    ]
    (logged,) = fields_logged(caplog, "credentials.reloaded")
    assert logged["fingerprint"] == current.fingerprint
    assert logged["previous_fingerprint"] == credential_fingerprint(EMULATOR_ID, OLD)
    assert OLD not in caplog.text and NEW not in caplog.text
    assert OLD not in repr(current) and NEW not in repr(current)


def test_a_file_rewritten_in_place_is_picked_up(tmp_path: Path) -> None:
    """A plain file overwritten with another secret is reloaded too."""
    path = tmp_path / "secret"
    path.write_text(OLD)
    credentials = ClientCredentials(settings(path))
    path.write_text(NEW + "\n")
    os.utime(path, ns=(1, 1))  # a different stamp even within the filesystem's time grain
    assert credentials.reload_if_changed() == ["checkout"]
    assert credentials.get("checkout").secret.get_secret_value() == NEW


def test_an_empty_or_missing_file_keeps_the_previous_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty update is refused (logged), a missing file is waited out, and the next good
    update still applies."""
    volume = SecretVolume(tmp_path, OLD)
    credentials = ClientCredentials(settings(volume.path))
    volume.update("")
    with caplog.at_level(logging.INFO):
        assert credentials.reload_if_changed() == []
        assert credentials.reload_if_changed() == []  # the same bad file: not retried
    assert [f["reason"] for f in fields_logged(caplog, "credentials.reload_failed")] == [
        "the file is empty"
    ]
    os.unlink(tmp_path / "..data")
    assert credentials.reload_if_changed() == []
    assert credentials.get("checkout").secret.get_secret_value() == OLD
    link = tmp_path / "..data"
    link.symlink_to("..2026_01")
    volume.update(NEW)
    assert credentials.reload_if_changed() == ["checkout"]


def test_the_same_secret_rewritten_changes_nothing(tmp_path: Path) -> None:
    """A new file with the same secret is not a change: no listener is called."""
    volume = SecretVolume(tmp_path, OLD)
    credentials = ClientCredentials(settings(volume.path))
    heard: list[str] = []
    credentials.subscribe(lambda client, _new: heard.append(client))
    volume.update(OLD)
    assert credentials.reload_if_changed() == [] and heard == []
    assert credentials.reloads == 0


async def test_the_token_client_sends_the_reloaded_secret(
    tmp_path: Path, emulator: Emulator
) -> None:
    """The upstream rejects the old secret once it moved on; after the reload the token client
    sends the new one and tags its token with the new fingerprint."""
    volume = SecretVolume(tmp_path, OLD)
    clients = settings(volume.path, emulator.token_url)
    credentials = ClientCredentials(clients, fingerprint=credential_fingerprint)
    await emulator.configure(clients={EMULATOR_ID: OLD})
    async with httpx.AsyncClient() as http:
        fetcher = UpstreamTokenClient(http, clients, credentials=credentials)
        first = await fetcher.fetch("checkout")
        await emulator.configure(clients={EMULATOR_ID: NEW})
        with pytest.raises(UpstreamCredentialsRejected):
            await fetcher.fetch("checkout")
        volume.update(NEW)
        credentials.reload_if_changed()
        second = await fetcher.fetch("checkout")
    assert first.minted_by == credential_fingerprint(EMULATOR_ID, OLD)
    assert second.minted_by == credential_fingerprint(EMULATOR_ID, NEW)
    assert (await emulator.stats())["tokens_issued"] == 2
