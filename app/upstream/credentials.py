"""Each client's upstream credentials, with `client_secret_file`s reloaded when they change.

Kubernetes updates a mounted Secret by swapping a symlink (`..data`) to a new directory, so the
file keeps its path and gets a new inode; other tools rewrite it in place. A cheap `stat` of each
secret file every `SECRET_RELOAD_INTERVAL_SECONDS` (following symlinks, `app/file_stamp.py`)
sees both, as the TLS certificate reload does (`app/transport/tls.py`). A changed, readable,
non-empty file becomes the client's credentials at once: the token client sends the new secret
from its next request, and the listeners `app.main` registers move the cache keys and encryption
key along (the credential fingerprint follows the secret) and make the token service forget
tokens of the old secret. The reload is logged with the client and the new fingerprint, never
the secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from app.config import ClientSettings
from app.file_stamp import FileStamp, file_stamp
from app.observability.logs import REDACTOR, log_event

log = logging.getLogger(__name__)

SECRET_RELOAD_INTERVAL_SECONDS = 2.0

Fingerprint = Callable[[str, str], str]
"""(client_id, secret) -> a short name of the credentials that reveals neither."""


def _no_fingerprint(_client_id: str, _secret: str) -> str:
    return ""


@dataclass(frozen=True, slots=True)
class Credentials:
    """One client's credentials as the upstream sees them; `repr` hides the secret."""

    client_id: str
    secret: SecretStr = field(repr=False)
    fingerprint: str  # tags the tokens they obtain (`Token.minted_by`) and the cache keys


CredentialsListener = Callable[[str, Credentials], None]
"""Called with (client, new credentials) after a client's secret changed."""


class ClientCredentials:
    """The current credentials of every configured client."""

    def __init__(
        self, clients: Mapping[str, ClientSettings], fingerprint: Fingerprint = _no_fingerprint
    ) -> None:
        self._fingerprint = fingerprint
        self._files = {
            name: spec.client_secret_file
            for name, spec in clients.items()
            if spec.client_secret_file is not None
        }
        self._stamps: dict[str, FileStamp] = {
            name: file_stamp(path) for name, path in self._files.items()
        }
        self._failed: dict[str, FileStamp] = {}
        self._current = {
            name: self._credentials(spec.client_id, spec.secret()) for name, spec in clients.items()
        }
        self._listeners: list[CredentialsListener] = []
        self.reloads = 0

    def _credentials(self, client_id: str, secret: SecretStr) -> Credentials:
        value = secret.get_secret_value()
        REDACTOR.add_secret(value)
        return Credentials(client_id, secret, self._fingerprint(client_id, value))

    @property
    def clients(self) -> tuple[str, ...]:
        """The configured clients."""
        return tuple(self._current)

    def get(self, client: str) -> Credentials:
        """The credentials of `client` right now."""
        return self._current[client]

    def fingerprint(self, client: str) -> str:
        """The fingerprint of `client`'s current credentials."""
        return self._current[client].fingerprint

    @property
    def watched(self) -> bool:
        """Whether any client reads its secret from a file."""
        return bool(self._files)

    def subscribe(self, listener: CredentialsListener) -> None:
        """Call `listener` after every change of a client's credentials, in subscription order."""
        self._listeners.append(listener)

    def reload_if_changed(self) -> list[str]:
        """Re-read every secret file whose stamp changed; the clients whose secret changed."""
        changed = []
        for client, path in self._files.items():
            stamp = file_stamp(path)
            if stamp is None or stamp in (self._stamps[client], self._failed.get(client)):
                continue  # unchanged, known bad, or missing for a moment mid-swap
            if self._reload(client, path, stamp):
                changed.append(client)
        return changed

    def _reload(self, client: str, path: Path, stamp: FileStamp) -> bool:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return self._reload_failed(client, stamp, f"cannot read the file: {type(exc).__name__}")
        if not value:
            return self._reload_failed(client, stamp, "the file is empty")
        self._stamps[client] = stamp
        self._failed.pop(client, None)
        old = self._current[client]
        if value == old.secret.get_secret_value():
            return False  # rewritten with the same secret
        new = self._current[client] = self._credentials(old.client_id, SecretStr(value))
        self.reloads += 1
        log_event(
            log,
            logging.INFO,
            "credentials.reloaded",
            client=client,
            file=str(path),
            fingerprint=new.fingerprint,
            previous_fingerprint=old.fingerprint,
        )
        for listener in self._listeners:
            listener(client, new)
        return True

    def _reload_failed(self, client: str, stamp: FileStamp, reason: str) -> bool:
        self._failed[client] = stamp  # tried again when the file changes again
        log_event(
            log,
            logging.ERROR,
            "credentials.reload_failed",
            client=client,
            file=str(self._files[client]),
            reason=reason,
            outcome="still using the previous secret",
        )
        return False

    async def watch(self, interval: float = SECRET_RELOAD_INTERVAL_SECONDS) -> None:
        """Check the secret files every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
            except Exception:  # a bug in one round must not stop the reloads for good
                log.exception("credentials.watch_failed")
