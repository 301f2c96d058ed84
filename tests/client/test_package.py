"""The SDK as a distribution: httpx its only dependency, requests never imported by it."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distribution

PROBE = """
import json, sys
import token_broker_client
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_sdk_loads_neither_requests_nor_the_broker() -> None:
    """`import token_broker_client` in a fresh interpreter loads httpx but not requests or app."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(probe.stdout))
    assert "httpx" in loaded
    assert "requests" not in loaded
    assert not any(name == "app" or name.startswith("app.") for name in loaded)


def test_distribution_requires_httpx_only() -> None:
    """paysera-token-broker-client requires httpx, and requests only as the `requests` extra."""
    dist = distribution("paysera-token-broker-client")
    required = dist.requires or []
    plain = [r for r in required if "extra ==" not in r]
    extras = [r for r in required if "extra ==" in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in plain] == ["httpx"]
    assert all(r.startswith("requests") and "'requests'" in r for r in extras), extras
