"""The main listener's TLS context, reloaded in place when its certificate files change.

cert-manager and service meshes rotate certificates often, so the broker watches
`tls_cert_file`, `tls_key_file` and `tls_client_ca_file` (a cheap `stat` every few seconds,
which also sees Kubernetes' atomic symlink swap of a mounted Secret). On a change it first loads
the new files into a scratch context; only if that succeeds (the key matches the certificate,
the CA file parses) does it load them into the live context. OpenSSL copies the certificate
into each connection when the connection starts, so new handshakes present the new certificate
and connections already open keep theirs: no listener restarts, no dropped requests.

A CA file that changes is loaded *in addition to* the CAs already trusted (OpenSSL can add to a
trust store, not remove from it): adding the next CA before rotating to it works without a
restart; withdrawing trust from a CA needs a restart (`kubectl rollout restart`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from app.config import ServerSettings
from app.file_stamp import FileStamp, file_stamp
from app.observability.logs import log_event

log = logging.getLogger(__name__)

RELOAD_INTERVAL_SECONDS = 5.0


def build_context(server: ServerSettings) -> ssl.SSLContext:
    """A server context from the settings' files; raises OSError/ssl.SSLError if they are bad."""
    assert server.tls_cert_file is not None and server.tls_key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    if server.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=server.tls_client_ca_file)
        # OPTIONAL still refuses a certificate from an unknown CA; it only lets callers
        # without any certificate through to the app, where an API key may authenticate them.
        context.verify_mode = (
            ssl.CERT_REQUIRED if server.tls_client_cert_required else ssl.CERT_OPTIONAL
        )
    return context


class ReloadingTlsContext:
    """One `ssl.SSLContext` for the life of the listener; its files reloaded when they change."""

    def __init__(self, server: ServerSettings) -> None:
        self._server = server
        self._files = [
            path
            for path in (server.tls_cert_file, server.tls_key_file, server.tls_client_ca_file)
            if path is not None
        ]
        self._loaded = self._stamps()
        self._failed: list[FileStamp] | None = None
        self.context = build_context(server)
        self.reloads = 0

    def _stamps(self) -> list[FileStamp]:
        return [file_stamp(path) for path in self._files]

    def reload_if_changed(self) -> bool:
        """Load the files into the live context if they changed and are valid; True if it did."""
        stamps = self._stamps()
        if stamps == self._loaded or stamps == self._failed or None in stamps:
            return False  # unchanged, known bad, or mid-rotation (a file is missing)
        try:
            build_context(self._server)  # a scratch context: the live one stays untouched
        except OSError as exc:  # ssl.SSLError is an OSError
            self._failed = stamps  # retried when the files change again, not every check
            self._log_failure(exc, "the new files are invalid; still serving the old ones")
            return False
        try:
            self._load_into_live_context()
        except OSError as exc:  # the files changed again since the check: retried next time
            self._log_failure(exc, "the files changed while loading; retrying")
            return False
        self._loaded, self._failed = stamps, None
        self.reloads += 1
        log_event(log, logging.INFO, "tls.reloaded", files=[str(p) for p in self._files])
        return True

    @staticmethod
    def _log_failure(exc: OSError, outcome: str) -> None:
        log_event(
            log,
            logging.ERROR,
            "tls.reload_failed",
            error=f"{type(exc).__name__}: {exc}",
            outcome=outcome,
        )

    def _load_into_live_context(self) -> None:
        server = self._server
        assert server.tls_cert_file is not None and server.tls_key_file is not None
        self.context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
        if server.tls_client_ca_file is not None:
            self.context.load_verify_locations(cafile=server.tls_client_ca_file)

    async def watch(self, interval: float = RELOAD_INTERVAL_SECONDS) -> None:
        """Check the files every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
