"""OpenTelemetry tracing with the official instrumentations; off unless `[tracing]` is set.

`start_tracing` is called by `app.main` (the composition root) only when `otlp_endpoint` is set;
nothing here imports OpenTelemetry before that, so an untraced broker never loads it. When on:

* every request gets a SERVER span (FastAPI/ASGI instrumentation; a caller's W3C `traceparent`
  continues its trace), except `/health*` and `/metrics`, which probes and scrapes poll;
* every upstream call (token requests, proxied calls) gets a CLIENT span, and its `traceparent`
  header reaches Paysera (httpx instrumentation of the broker's one `httpx.AsyncClient`);
* every Redis command gets a CLIENT span, its arguments masked (`EVALSHA ? ? ?`);
* log lines written inside a span carry `trace_id` and `span_id` (`logs.TRACE_CONTEXT`).

Spans without a parent that the broker starts on its own (heartbeats, background refreshes) are
not recorded: they would be one-span traces every few seconds. The tracer provider is this app's
own, never the process-global one, so several apps in one process (the tests) do not mix.
Propagation uses OpenTelemetry's global propagator, W3C Trace Context and Baggage by default
(`OTEL_PROPAGATORS` changes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.observability import logs

if TYPE_CHECKING:  # only main.py hands settings over; OpenTelemetry is loaded at start only
    from fastapi import FastAPI
    from httpx import AsyncClient
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

    from app.config import TracingSettings

# Polled by probes and Prometheus: never traced (regular expressions searched in the URL).
UNTRACED_URLS = "/health,/metrics"


@dataclass
class Tracing:
    """This app's tracer provider and the instrumentations bound to it."""

    provider: TracerProvider

    def instrument_app(self, app: FastAPI) -> None:
        """SERVER spans for the app's requests (the instrumentation wraps the whole stack)."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls=UNTRACED_URLS,
            exclude_spans=["receive", "send"],
        )

    def instrument_http(self, client: AsyncClient) -> None:
        """CLIENT spans for upstream calls, with `traceparent` injected into each request."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=self.provider)

    def instrument_store(self, store: object) -> None:
        """CLIENT spans for Redis commands when `store` is the Redis adapter (its `redis`)."""
        client = getattr(store, "redis", None)
        if client is None:
            return  # the in-memory store: nothing leaves the process
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor.instrument_client(client, tracer_provider=self.provider)

    def close(self) -> None:
        """Export what is buffered and stop the exporter."""
        self.provider.shutdown()


def _exporter(settings: TracingSettings) -> SpanExporter:
    endpoint = settings.otlp_endpoint
    assert endpoint is not None  # start_tracing is called only when tracing is on
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    path = "" if endpoint.rstrip("/").endswith("/v1/traces") else "/v1/traces"
    return HttpExporter(endpoint=endpoint.rstrip("/") + path)


def _sampler(ratio: float) -> Sampler:
    """The caller's decision when a request carries one, else `ratio` of traces; never a root
    CLIENT span (the broker's own background Redis and upstream calls)."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )
    from opentelemetry.trace import SpanKind, get_current_span

    class RequestsOnly(Sampler):
        def __init__(self) -> None:
            self._delegate = ParentBased(TraceIdRatioBased(ratio))

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Any] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            parent = get_current_span(parent_context).get_span_context()
            if kind == SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return self._delegate.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            description: str = self._delegate.get_description()  # type: ignore[no-untyped-call]
            return f"RequestsOnly({description})"

    return RequestsOnly()


def _current_trace() -> tuple[str, str] | None:
    """The active span's trace and span id in W3C hex, or None outside a recorded span."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def start_tracing(
    settings: TracingSettings, version: str, exporter: SpanExporter | None = None
) -> Tracing:
    """A tracer provider exporting to the configured collector (or to `exporter`, which the
    tests pass: an in-memory one, exported span by span), and log lines with trace ids."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: version})
    provider = TracerProvider(resource=resource, sampler=_sampler(settings.sample_ratio))
    if exporter is None:
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    logs.TRACE_CONTEXT = _current_trace
    return Tracing(provider)
