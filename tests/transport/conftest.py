"""Fixtures of the transport tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.support.tls import Pki, server_files


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A server CA, a separate CA for client certificates, and the broker's files."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    return Pki(server_ca, client_ca, server_files(tmp_path, server_ca, client_ca), tmp_path)
