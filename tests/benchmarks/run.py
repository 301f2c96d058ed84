"""Run the benchmark sections in order and write `.bench/results.md` (also printed).

Every process is real and on loopback: one private redis-server on a free port (never the
shared 6379), emulators as the upstream, brokers as `token-broker serve` processes, the bare
FastAPI baseline under uvicorn. `--quick` shortens every section for a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.benchmarks import (
    budget,
    deployment,
    encryption,
    fairness,
    fleet,
    memory,
    rotation,
    throughput,
)
from tests.benchmarks.report import Section
from tests.support import processes
from tests.support.redis import RedisServer

RESULTS = Path(".bench/results.md")
SECTIONS = ("throughput", "fleet", "rotation", "budget", "memory", "encryption")


def warm_body(broker_url: str) -> bytes:
    """The broker's answer to `GET /token` (also fills its L1)."""
    response = httpx.get(
        f"{broker_url}/token?client=checkout", headers=deployment.HEADERS, timeout=10
    )
    return response.raise_for_status().content


def prefix(name: str) -> str:
    """A fresh Redis key prefix, so sections never see each other's keys."""
    return f"{name}{uuid.uuid4().hex[:6]}"


def run_throughput(redis: RedisServer, work: Path, plan: throughput.ThroughputPlan) -> Section:
    """Section 1: the broker at info and at warning log level, and the bare endpoint."""
    with processes.emulator(work, deployment.CLIENTS) as upstream:
        config = deployment.broker_config(upstream, redis.url, prefix("tp"))
        quiet_config = deployment.broker_config(upstream, redis.url, prefix("tq"))
        quiet_config["server"]["log_level"] = "warning"
        with (
            deployment.brokers(config, work) as (broker,),
            deployment.brokers(quiet_config, work) as (quiet,),
        ):
            body = warm_body(broker.url)
            warm_body(quiet.url)
            with processes.bare_endpoint(work, body, deployment.API_KEY) as bare:
                targets = throughput.Targets(broker.url, quiet.url, bare.url)
                section, _ = throughput.measure(targets, plan)
    return section


def machine() -> str:
    """CPU count and model, for the header."""
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def plans(quick: bool) -> dict[str, Callable[[RedisServer, Path], Section]]:
    """Each section as a function of the Redis server and a scratch directory."""
    tp = throughput.ThroughputPlan(rounds=1, seconds=2) if quick else throughput.ThroughputPlan()
    fl = fleet.FleetPlan(seconds=12) if quick else fleet.FleetPlan()
    ro = rotation.RotationPlan(seconds=20) if quick else rotation.RotationPlan()
    bu = budget.BudgetPlan(seconds=8, latency_seconds=1) if quick else budget.BudgetPlan()
    fa = (
        fairness.FairnessPlan(fairness_seconds=15, outage_seconds=6, throughput_rounds=1)
        if quick
        else fairness.FairnessPlan()
    )
    me = memory.MemoryPlan(load_seconds=20) if quick else memory.MemoryPlan()
    en = (
        encryption.EncryptionPlan(warm_seconds=1, cold_fetches=20, store_round_trips=100)
        if quick
        else encryption.EncryptionPlan()
    )
    return {
        "throughput": lambda redis, work: run_throughput(redis, work, tp),
        "fleet": lambda redis, work: fleet.measure(fl, redis.url, work, prefix("fl")),
        "rotation": lambda redis, work: rotation.measure(ro, redis.url, work, prefix("ro")),
        "budget": lambda redis, work: budget.measure(bu, redis.url, work, prefix("bu"), fa),
        "memory": lambda redis, work: memory.measure(me, redis.url, work, prefix("me")),
        "encryption": lambda redis, work: encryption.measure(en, redis.url, work, prefix("en")),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections, print the tables and write them to .bench/results.md."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    args = parser.parse_args(argv)
    started = time.monotonic()
    sections: list[Section] = []
    timings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp, RedisServer() as redis:
        for name, run in plans(args.quick).items():
            if name in args.only:
                began = time.monotonic()
                sys.stderr.write(f"bench: {name}...\n")
                sections.append(run(redis, Path(tmp)))
                timings.append(f"{name} {time.monotonic() - began:.0f} s")
    elapsed = time.monotonic() - started
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"## Benchmark results ({now}, {machine()})\n\n"
    text += "\n".join(section.markdown() for section in sections)
    text += f"\n`make bench` took {elapsed:.0f} s ({', '.join(timings)}).\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    sys.stdout.write(text)
    return 0
