"""Schemathesis against the broker's own OpenAPI document, served by a real broker process.

Every generated request is sent with a valid API key so it reaches the handlers. With the
emulated upstream healthy there must be no 5xx at all, and every error must be contract JSON.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from app.config import Settings
from app.main import create_app
from tests.conftest import API_KEYS
from tests.reliability.conftest import report_figures
from tests.reliability.live import LiveBroker, live_broker

EXAMPLES_PER_OPERATION = 40
HEADERS = {"X-API-Key": API_KEYS["billing"]}
SEEN: Counter[str] = Counter()  # "METHOD /path status" -> count, over the whole module


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    """A broker process whose waits are short, so generated `wait` values cost little."""
    directory = tmp_path_factory.mktemp("fuzz")
    with live_broker(
        directory,
        budget={"limit": 100_000, "max_wait_seconds": 0.2},
        proxy={"budget_wait_seconds": 0.2, "timeout_seconds": 5},
    ) as running:
        yield running


def openapi_document() -> dict[str, Any]:
    """`create_app(...).openapi()`: what `/openapi.json` serves (the config does not change it)."""
    client = {"token_url": "http://127.0.0.1:9/t", "api_base_url": "http://127.0.0.1:9"}
    client |= {"client_id": "x", "client_secret": "y"}
    callers = {"x": {"api_key_sha256": "0" * 64, "clients": ["checkout"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. FastAPI's duplicate operationId warning
        return create_app(Settings(clients={"checkout": client}, callers=callers)).openapi()


DOCUMENT = openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_live_document_is_the_apps(live: LiveBroker) -> None:
    """The broker process serves the same OpenAPI document as the one fuzzed here."""
    served = httpx.get(f"{live.url}/openapi.json").json()
    assert served == DOCUMENT


@pytest.fixture(scope="module", autouse=True)
def fuzz_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Report how many requests of each status the fuzzing sent, after the module."""
    yield
    operations = sum(len(ops) for ops in DOCUMENT["paths"].values())
    statuses: Counter[str] = Counter()
    for key, count in SEEN.items():
        statuses[key.rsplit(" ", 1)[1]] += count
    report_figures(
        request.config,
        "schemathesis",
        {
            "operations": operations,
            "requests": sum(SEEN.values()),
            "by_status": dict(sorted(statuses.items())),
            "server_errors": sum(n for status, n in statuses.items() if int(status) >= 500),
        },
    )


def assert_contract_error(response: Any) -> None:
    """A 4xx/5xx is `{"error", "error_description"}` JSON (the emulator's, proxied, are too)."""
    if response.status_code < 400 or response.request.method == "HEAD":
        return  # HEAD answers have no body
    body = response.json()
    assert set(body) == {"error", "error_description"}, body
    assert all(isinstance(v, str) and v for v in body.values()), body


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_contract_json_errors(case: Any, live: LiveBroker) -> None:
    """Generated requests with a valid key never get a 5xx, and every error is contract JSON."""
    response = case.call(base_url=live.url, headers=HEADERS, timeout=10)
    SEEN[f"{case.method} {case.path} {response.status_code}"] += 1
    case.validate_response(response, checks=[not_a_server_error])
    assert_contract_error(response)
