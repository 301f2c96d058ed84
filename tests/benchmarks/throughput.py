"""1. Warm `GET /token` on one broker (with Redis) vs the bare FastAPI endpoint, under wrk.

The servers run side by side and are measured alternately (broker, quiet broker, bare, broker,
...), so that noise from other work on the machine hits all of them; each gets the best of its
rounds. The broker runs twice: at the default `log_level = "info"`, where every token request
writes two log lines (`http.request` and `token.issued`), and at `"warning"`, which writes none
and so matches the bare endpoint's `access_log=False`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.benchmarks.deployment import HEADERS
from tests.benchmarks.report import Section
from tests.benchmarks.wrk import WrkResult, run_wrk


@dataclass(frozen=True)
class ThroughputPlan:
    """Concurrency levels and how long each run lasts."""

    connections: tuple[int, ...] = (16, 64, 256)
    rounds: int = 3
    seconds: float = 4.0
    threads: int = 2


@dataclass(frozen=True)
class Targets:
    """Base URLs of the three servers."""

    broker: str
    quiet_broker: str
    bare: str

    def urls(self) -> dict[str, str]:
        """Name -> URL of `GET /token`."""
        return {
            "broker": f"{self.broker}/token?client=checkout",
            "quiet": f"{self.quiet_broker}/token?client=checkout",
            "bare": f"{self.bare}/token",
        }


def best(results: list[WrkResult]) -> WrkResult:
    """The round with the highest throughput (the least disturbed by other work)."""
    return max(results, key=lambda r: r.rps)


def _figures(result: WrkResult) -> list[str]:
    return [f"{result.rps:,.0f}", f"{result.p50_ms:.2f} / {result.p99_ms:.2f}"]


def measure(targets: Targets, plan: ThroughputPlan) -> tuple[Section, dict[int, float]]:
    """The section, and the broker/bare throughput ratio (info logging) per level."""
    urls = targets.urls()
    for url in urls.values():  # warm all: connections, L1, the interpreter's caches
        run_wrk(url, connections=16, seconds=1, threads=plan.threads, headers=HEADERS)
    section = Section(
        "1. Warm `GET /token`: one broker (Redis store) vs a bare FastAPI endpoint",
        [
            "connections",
            "broker req/s",
            "p50 / p99 ms",
            "broker, no request log, req/s",
            "p50 / p99 ms",
            "bare FastAPI req/s",
            "p50 / p99 ms",
            "ratio broker/bare",
            "ratio no-log broker/bare",
        ],
    )
    ratios = {}
    for connections in plan.connections:
        runs: dict[str, list[WrkResult]] = {name: [] for name in urls}
        for _ in range(plan.rounds):
            for name, url in urls.items():
                result = run_wrk(
                    url,
                    connections=connections,
                    seconds=plan.seconds,
                    threads=plan.threads,
                    headers=HEADERS,
                )
                if not result.clean:
                    raise RuntimeError(f"{name} at {connections} connections: errors {result}")
                runs[name].append(result)
        broker, quiet, bare = best(runs["broker"]), best(runs["quiet"]), best(runs["bare"])
        ratios[connections] = broker.rps / bare.rps
        section.rows.append(
            [
                str(connections),
                *_figures(broker),
                *_figures(quiet),
                *_figures(bare),
                f"**{broker.rps / bare.rps:.2f}**",
                f"**{quiet.rps / bare.rps:.2f}**",
            ]
        )
    section.notes.append(
        f"wrk on the same machine, {plan.threads} threads, {plan.rounds} alternating rounds of "
        f"{plan.seconds:g} s per server and level, best round of each; every response was 200. "
        "All three run uvicorn with the broker's settings (uvloop, httptools, no access log); "
        "the brokers as `token-broker serve` runs them, where the HTTP protocol answers a warm "
        'request itself (`app.transport.quick`). *broker*: default `log_level = "info"`, two '
        "JSON log lines per request (`http.request`, `token.issued`) written to a file by the "
        'log writer thread; *no request log*: `log_level = "warning"`, the broker\'s '
        "equivalent of the bare endpoint's `access_log=False`. Target: ratio broker/bare >= 2.0."
    )
    return section, ratios
