"""OpenTelemetry tracing: a request's trace reaches Paysera, spans are exported, logs carry ids.

A real broker (uvicorn on loopback, the emulator as upstream, a real redis-server) is built by
`create_app` with an in-memory span exporter in place of the OTLP one; the emulator's echo
endpoint shows the headers a proxied call arrived with.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from app import __version__
from app.config import Settings, load_settings
from app.errors import ConfigError
from app.main import create_app
from app.observability.logs import log_event
from tests.conftest import Emulator, broker_config
from tests.contract import assert_token, orders
from tests.observability.conftest import LogCapture
from tests.support.servers import serve_app
from tests.tomlfile import write_toml

REPO = Path(__file__).resolve().parents[2]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
ECHO = "/proxy/checkout/checkout-project/integration/v1/echo"
TRACING = {"otlp_endpoint": "http://127.0.0.1:4317"}  # never dialled: the exporter is replaced


@asynccontextmanager
async def traced_broker(
    emulator: Emulator, store: dict[str, Any], exporter: InMemorySpanExporter, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A broker with `[tracing]` configured, exporting into `exporter`."""
    overrides.setdefault("tracing", TRACING)
    settings = Settings(**broker_config(emulator, store, **overrides))
    async with serve_app(create_app(settings, span_exporter=exporter)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            yield http


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of `span` in W3C hex."""
    assert span.context is not None
    return format_trace_id(span.context.trace_id), format_span_id(span.context.span_id)


def parent_id(span: ReadableSpan) -> str | None:
    """The span id of `span`'s parent, in hex."""
    return None if span.parent is None else format_span_id(span.parent.span_id)


def of_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    """The spans of `kind`."""
    return [span for span in spans if span.kind == kind]


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_a_proxied_call_carries_the_callers_trace_to_the_emulator(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """A caller's traceparent continues through the broker: the emulator receives a traceparent
    of the same trace whose parent is the broker's CLIENT span, itself under the SERVER span."""
    exporter = InMemorySpanExporter()
    async with traced_broker(emulator, store_config, exporter) as http:
        response = await http.get(ECHO, headers={**orders(), "traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    version, trace_id, upstream_parent, flags = response.json()["headers"]["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")

    spans = exporter.get_finished_spans()
    (server,) = of_kind(spans, SpanKind.SERVER)
    assert hex_ids(server)[0] == CALLER_TRACE
    assert parent_id(server) == CALLER_SPAN
    echo_calls = [s for s in of_kind(spans, SpanKind.CLIENT) if "echo" in str(s.attributes)]
    (echo_call,) = echo_calls
    assert hex_ids(echo_call) == (CALLER_TRACE, upstream_parent)
    assert all(hex_ids(span)[0] == CALLER_TRACE for span in spans)
    # The budget permit the call took is a Redis script, traced with its arguments masked.
    redis_spans = [s for s in spans if (s.attributes or {}).get("db.system") == "redis"]
    assert redis_spans
    for span in redis_spans:
        statement = str((span.attributes or {}).get("db.statement", ""))
        _command, *arguments = statement.split()
        assert arguments and arguments[-1] == "?", statement  # keys and values masked
        assert store_config["key_prefix"] not in statement


async def test_an_untraced_caller_starts_the_trace_the_emulator_sees(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """Without an incoming traceparent the broker starts a trace; the upstream gets its id."""
    exporter = InMemorySpanExporter()
    async with traced_broker(emulator, store_config, exporter) as http:
        response = await http.get(ECHO, headers=orders())
    assert response.status_code == 200, response.text
    echoed = response.json()["headers"]["traceparent"].split("-")[1]
    (server,) = of_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert parent_id(server) is None
    assert hex_ids(server)[0] == echoed != CALLER_TRACE


async def test_a_token_request_is_a_server_span_with_its_upstream_fetch_inside(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """GET /token gives one SERVER span; the cold fetch to the token endpoint is its child, and
    the token endpoint receives that fetch's traceparent."""
    exporter = InMemorySpanExporter()
    async with traced_broker(emulator, store_config, exporter) as http:
        assert_token(await http.get("/token", headers={**orders(), "traceparent": TRACEPARENT}))
    spans = exporter.get_finished_spans()
    (server,) = of_kind(spans, SpanKind.SERVER)
    attributes = server.attributes or {}
    assert "/token" in str(attributes.get("url.path") or attributes.get("http.target"))
    assert server.status.is_ok
    fetches = [s for s in of_kind(spans, SpanKind.CLIENT) if "openid-connect" in str(s.attributes)]
    (fetch,) = fetches
    assert hex_ids(fetch)[0] == hex_ids(server)[0] == CALLER_TRACE
    # The token endpoint received the fetch span as the parent of its traceparent.
    seen = (await emulator.http.get("/_emulator/last-token-request")).json()["trace_headers"]
    assert seen["traceparent"] == f"00-{CALLER_TRACE}-{hex_ids(fetch)[1]}-01"
    resource = server.resource.attributes
    assert (resource["service.name"], resource["service.version"]) == (
        "paysera-token-broker",
        __version__,
    )


async def test_a_warm_token_request_is_traced_too(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """A /token answered from memory by the warm path (before routing) is a SERVER span of the
    caller's trace, with no upstream call in it."""
    exporter = InMemorySpanExporter()
    async with traced_broker(emulator, store_config, exporter) as http:
        assert_token(await http.get("/token", headers=orders()))
        exporter.clear()
        assert_token(await http.get("/token", headers={**orders(), "traceparent": TRACEPARENT}))
    spans = exporter.get_finished_spans()
    (server,) = of_kind(spans, SpanKind.SERVER)
    assert hex_ids(server)[0] == CALLER_TRACE and parent_id(server) == CALLER_SPAN
    assert not [s for s in of_kind(spans, SpanKind.CLIENT) if "openid-connect" in str(s.attributes)]
    assert (await emulator.stats())["token_requests"] == 1


async def test_probes_scrapes_and_background_work_make_no_spans(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """/health*, /metrics and the broker's own background calls (heartbeats, Redis) are not
    recorded; a configured sample_ratio of 0 records no new trace either."""
    exporter = InMemorySpanExporter()
    async with traced_broker(emulator, store_config, exporter) as http:
        for path in ("/health", "/health/live", "/health/ready", "/metrics"):
            assert (await http.get(path)).status_code == 200
    assert exporter.get_finished_spans() == ()

    unsampled = InMemorySpanExporter()
    tracing = {**TRACING, "sample_ratio": 0.0}
    async with traced_broker(emulator, store_config, unsampled, tracing=tracing) as http:
        assert_token(await http.get("/token", headers=orders()))
    assert unsampled.get_finished_spans() == ()


async def test_log_lines_inside_a_span_carry_its_trace_id(
    emulator: Emulator, store_config: dict[str, Any], logs: LogCapture
) -> None:
    """The request's log line has the trace and span id of its SERVER span; a line outside any
    span has none."""
    logs.start("info")
    exporter = InMemorySpanExporter()
    async with traced_broker(emulator, store_config, exporter) as http:
        assert_token(await http.get("/token", headers={**orders(), "traceparent": TRACEPARENT}))
        log_event(logging.getLogger("app.test"), logging.WARNING, "test.outside_any_span")
    _, lines = logs.read()
    (request_line,) = [line for line in lines if line["event"] == "http.request"]
    (server,) = of_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert request_line["trace_id"] == CALLER_TRACE
    assert request_line["span_id"] == hex_ids(server)[1]
    issued = [line for line in lines if line["event"] == "token.issued"]
    assert issued and all(line["trace_id"] == CALLER_TRACE for line in issued)
    (outside,) = [line for line in lines if line["event"] == "test.outside_any_span"]
    assert "trace_id" not in outside and "span_id" not in outside


_UNTRACED_PROBE = """
import asyncio, json, sys
import httpx
from app.config import Settings
from app.main import create_app
from app.observability.logs import log_event
from app.observability import logs
from tests.support.servers import serve_app

async def main():
    settings = Settings(clients={"checkout": {"token_url": "http://127.0.0.1:9/t",
        "api_base_url": "http://127.0.0.1:9", "client_id": "c", "client_secret": "s3cret-value"}})
    app = create_app(settings)
    async with serve_app(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            status = (await http.get("/health/live")).status_code
    # FastAPI itself imports the OpenTelemetry *API* when it is installed; the SDK, the
    # instrumentations and the exporters are ours, loaded only when tracing is configured.
    ours = ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter")
    loaded = sorted(m for m in sys.modules if m.startswith(ours))
    from opentelemetry import trace
    provider = type(trace.get_tracer_provider()).__name__
    middleware = [m.cls.__name__ for m in app.user_middleware]
    print(json.dumps({"status": status, "loaded": loaded, "hook": logs.TRACE_CONTEXT is not None,
                      "middleware": middleware, "provider": provider}))

asyncio.run(main())
"""


def test_without_tracing_configured_nothing_of_opentelemetry_is_loaded() -> None:
    """An untraced broker serving requests loads no OpenTelemetry SDK, instrumentation or
    exporter, sets no tracer provider, adds no tracing middleware and no trace ids to logs."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_BROKER_")}
    probe = subprocess.run(
        [sys.executable, "-c", _UNTRACED_PROBE],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(probe.stdout.splitlines()[-1])
    assert result["status"] == 200
    assert result["loaded"] == []
    assert result["provider"] == "ProxyTracerProvider"  # the API's default: nothing set
    assert result["hook"] is False
    assert not [name for name in result["middleware"] if "OpenTelemetry" in name]


@pytest.mark.parametrize(
    ("tracing", "path"),
    [
        ({"otlp_endpoint": "otel-collector:4317"}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "http://user:pw@collector:4318"}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "http://c:4317", "sample_ratio": 1.5}, "tracing.sample_ratio"),
        ({"otlp_endpoint": "http://c:4317", "protocol": "zipkin"}, "tracing.protocol"),
        ({"otlp_endpoint": "http://c:4317", "service_name": ""}, "tracing.service_name"),
        ({"endpoint": "http://c:4317"}, "tracing.endpoint"),
    ],
    ids=["no-scheme", "credentials", "ratio", "protocol", "service-name", "typo"],
)
def test_bad_tracing_config_names_its_key_path(
    tracing: dict[str, Any], path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config and start-up refuse a bad [tracing] table, naming the key, never the value."""
    for name in list(os.environ):
        if name.startswith("TOKEN_BROKER_"):
            monkeypatch.delenv(name)
    config = {
        "clients": {"checkout": {"client_id": "c", "client_secret": "s3cret-value-1"}},
        "tracing": tracing,
    }
    file = tmp_path / "config.toml"
    write_toml(file, config)
    with pytest.raises(ConfigError) as refused:
        load_settings(file)
    assert [p for p, _ in refused.value.problems] == [path]
    assert "pw@" not in str(refused.value)


def test_tracing_is_off_by_default_and_on_with_an_endpoint() -> None:
    """No [tracing] table means no tracing; an endpoint alone turns it on with the defaults."""
    base = {"clients": {"checkout": {"client_id": "c", "client_secret": "s3cret-value-1"}}}
    assert not Settings(**base).tracing.enabled
    on = Settings(**base, tracing={"otlp_endpoint": "http://otel-collector:4317"}).tracing
    assert on.enabled
    assert (on.protocol, on.service_name, on.sample_ratio) == ("grpc", "paysera-token-broker", 1.0)
