"""Schemathesis against the broker's own OpenAPI document, served by a real broker process.

Generated requests carry, in turn, a valid API key, a valid key and a configured client, a key
whose caller may not use the client, and no key (`credentials_for`), so they reach past the
first checks. With the emulated upstream healthy there must be no 5xx at all, and every answer
must be what the document says of its operation: a documented status, content type, headers and
body (errors are contract JSON). The last test compares, per operation, the statuses observed
with the documented ones.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.main import create_app
from tests.conftest import API_KEYS
from tests.reliability.conftest import report_figures
from tests.reliability.live import LiveBroker, live_broker

EXAMPLES_PER_OPERATION = 40
HEADERS = {"X-API-Key": API_KEYS["billing"]}
SEEN: Counter[str] = Counter()  # "METHOD /path status" -> count, over the whole module
ROTATION: Counter[str] = Counter()  # operation -> cases sent (see `credentials_for`)
OTHER_METHODS: Counter[int] = Counter()  # status -> count, of requests with an undocumented method


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
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT))  # it may rewrite what it gets


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


def assert_contract_error(response: Any, path: str) -> None:
    """A broker 4xx/5xx is `{"error", "error_description"}` JSON (a proxied answer is the
    upstream's, which may be anything: the document says so)."""
    if response.status_code < 400 or response.request.method == "HEAD":
        return  # HEAD answers have no body
    if path.startswith("/proxy/"):
        return
    body = response.json()
    assert set(body) == {"error", "error_description"}, body
    assert all(isinstance(v, str) and v for v in body.values()), body


def credentials_for(case: Any) -> dict[str, str]:
    """Rotate what an operation's cases carry, so that fuzzing gets past the first checks: the
    billing key as generated; the billing key with a configured client; orders' key with a
    client orders may not use; no key at all."""
    turn = ROTATION[case.operation.label] % 4
    ROTATION[case.operation.label] += 1
    if turn == 1:
        with_client(case, "checkout")
    elif turn == 2:
        with_client(case, "payouts")
        return {"X-API-Key": API_KEYS["orders"]}
    elif turn == 3:
        return {}
    return HEADERS


def with_client(case: Any, name: str) -> None:
    """Set the case's `client` parameter (path or query) to `name`, where it has one."""
    if any(p.name == "client" for p in case.operation.path_parameters):
        case.path_parameters = {**(case.path_parameters or {}), "client": name}
    elif any(p.name == "client" for p in case.operation.query):
        case.query = {**(case.query or {}), "client": name}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_contract_json_errors(case: Any, live: LiveBroker) -> None:
    """Generated requests never get a 5xx and every answer is the one the document describes
    for its operation: status, content type, headers and body (errors are contract JSON)."""
    response = case.call(base_url=live.url, headers=credentials_for(case), timeout=10)
    if case.method.lower() == case.operation.method.lower():
        SEEN[f"{case.method} {case.path} {response.status_code}"] += 1
    else:  # schemathesis probing a method the path does not have
        OTHER_METHODS[response.status_code] += 1
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
    assert_contract_error(response, case.path)


def test_observed_statuses_are_the_documented_ones(request: pytest.FixtureRequest) -> None:
    """Every status the fuzzing above saw is documented for its operation (the proxy's
    `default` stands for the upstream's answers); what it never provoked is reported."""
    if not SEEN:
        pytest.fail("run with test_no_server_error_and_contract_json_errors, which fills SEEN")
    observed: dict[str, set[str]] = {}
    for key in SEEN:
        method, path, status = key.split(" ")
        observed.setdefault(f"{method.lower()} {path}", set()).add(status)
    undocumented, unprovoked = {}, {}
    for operation, statuses in sorted(observed.items()):
        method, path = operation.split(" ")
        documented = set(DOCUMENT["paths"][path][method]["responses"])
        extra = statuses - documented if "default" not in documented else set()
        if extra:
            undocumented[operation] = sorted(extra)
        unprovoked[operation] = sorted(documented - statuses - {"default"})
    report_figures(request.config, "schemathesis documented but not provoked", unprovoked)
    assert not undocumented
    assert set(OTHER_METHODS) <= {405}  # a method the path does not have
    all_operations = {f"{m} {p}" for p, ops in DOCUMENT["paths"].items() for m in ops}
    assert set(observed) == all_operations  # every operation was exercised
