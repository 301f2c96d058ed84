"""5. Memory: RSS of one broker idle and after sustained `GET /token` load."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.benchmarks import deployment
from tests.benchmarks.report import Section, mib
from tests.benchmarks.wrk import run_wrk
from tests.support import processes


@dataclass(frozen=True)
class MemoryPlan:
    """How long to load the broker, in chunks between RSS samples."""

    load_seconds: float = 180.0
    chunk_seconds: float = 10.0
    connections: int = 64


def measure(plan: MemoryPlan, redis_url: str, directory: Path, prefix: str) -> Section:
    """Start a broker, sample RSS idle, under load and after it."""
    with processes.emulator(directory, deployment.CLIENTS, "emulator-memory") as upstream:
        config = deployment.broker_config(upstream, redis_url, prefix)
        with deployment.brokers(config, directory) as (broker,):
            url = f"{broker.url}/token?client=checkout"
            httpx.get(url, headers=deployment.HEADERS, timeout=10).raise_for_status()
            time.sleep(2)
            idle = broker.rss_kib() * 1024
            samples = []
            requests = 0
            started = time.monotonic()
            while time.monotonic() - started < plan.load_seconds - 0.5:
                result = run_wrk(
                    url,
                    connections=plan.connections,
                    seconds=plan.chunk_seconds,
                    headers=deployment.HEADERS,
                )
                if not result.clean:
                    raise RuntimeError(f"memory load had errors: {result}")
                requests += result.requests
                samples.append(broker.rss_kib() * 1024)
            loaded = time.monotonic() - started
            time.sleep(2)
            after = broker.rss_kib() * 1024
    samples = samples or [idle]
    section = Section(
        "5. Memory: RSS of one broker (Redis store)",
        ["idle (after its first token)", "peak during load", "after load", "growth"],
    )
    section.rows.append(
        [
            f"{mib(idle)} MiB",
            f"{mib(max(samples))} MiB",
            f"{mib(after)} MiB",
            f"{mib(after - idle)} MiB",
        ]
    )
    half = samples[len(samples) // 2]
    section.notes.append(
        f"Load: wrk {plan.connections} connections on warm `GET /token` for {loaded:.0f} s "
        f"({requests:,} requests), RSS sampled every {plan.chunk_seconds:g} s; RSS at half "
        f"time {mib(half)} MiB, at the end {mib(samples[-1])} MiB. {loaded / 60:.1f} minutes "
        "keep `make bench` under 10 minutes on 2 cores; `make soak` watches RSS for 10 minutes "
        "under mixed load."
    )
    return section
