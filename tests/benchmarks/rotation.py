"""3. Latency during rotation: p99 in the seconds around a token refresh vs steady p99.

One broker, tokens that live a few seconds, so the background refresh replaces the token
several times during one continuous wrk run. wrk records every request's completion time and
latency (one connection per thread, see `run_wrk_samples`); a thread polls the emulator's
token request counter meanwhile, which dates each refresh. Requests that completed within
`around` seconds of a refresh are "around a refresh"; those more than `2 * around` seconds
from every refresh are "steady".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.benchmarks import deployment
from tests.benchmarks.report import Section, median, percentile
from tests.benchmarks.wrk import Sample, run_wrk_samples
from tests.support import processes
from tests.support.processes import ServerProcess


@dataclass(frozen=True)
class RotationPlan:
    """Token lifetime, load and run length."""

    lifetime: float = 8.0
    upstream_latency: float = 0.05
    connections: int = 16
    seconds: float = 36.0
    around: float = 1.0
    poll_interval: float = 0.05

    @property
    def buffer(self) -> float:
        """The guide's 300 s buffer, scaled to the compressed lifetime."""
        return self.lifetime * 300 / 3600


def watch_refreshes(
    upstream: ServerProcess, interval: float, stop: threading.Event, seen: list[float]
) -> None:
    """Note the time whenever the emulator's token request counter goes up."""
    with httpx.Client(timeout=5) as http:
        last = None
        while not stop.is_set():
            count = http.get(f"{upstream.url}/_emulator/stats").json()["token_requests"]
            if last is not None and count > last:
                seen.append(time.time())
            last = count
            time.sleep(interval)


def windows(
    samples: list[Sample], refreshes: list[float], around: float
) -> tuple[list[list[float]], list[list[float]]]:
    """Latencies in each window of `around` seconds either side of a refresh, and in each
    steady window (2 x `around` long, more than 2 x `around` from every refresh)."""
    near: list[list[float]] = [[] for _ in refreshes]
    steady: dict[int, list[float]] = {}
    width = 2 * around
    for sample in samples:
        distances = [abs(sample.at - r) for r in refreshes]
        closest = min(range(len(refreshes)), key=distances.__getitem__, default=None)
        if closest is not None and distances[closest] <= around:
            near[closest].append(sample.seconds)
        elif closest is None or distances[closest] > width:
            steady.setdefault(int(sample.at // width), []).append(sample.seconds)
    return [w for w in near if w], [w for w in steady.values() if len(w) > 100]


def measure(plan: RotationPlan, redis_url: str, directory: Path, prefix: str) -> Section:
    """Load one broker through several refreshes; compare p99 around them with steady p99."""
    with processes.emulator(
        directory,
        deployment.CLIENTS,
        "emulator-rotation",
        lifetime=plan.lifetime,
        latency=plan.upstream_latency,
    ) as upstream:
        config = deployment.broker_config(upstream, redis_url, prefix, refresh_buffer=plan.buffer)
        with deployment.brokers(config, directory) as (broker,):
            url = f"{broker.url}/token?client=checkout"
            httpx.get(url, headers=deployment.HEADERS, timeout=10).raise_for_status()
            refreshes: list[float] = []
            stop = threading.Event()
            watcher = threading.Thread(
                target=watch_refreshes, args=(upstream, plan.poll_interval, stop, refreshes)
            )
            watcher.start()
            try:
                samples = run_wrk_samples(
                    url,
                    connections=plan.connections,
                    seconds=plan.seconds,
                    headers=deployment.HEADERS,
                )
            finally:
                stop.set()
                watcher.join()
    bad = [s for s in samples if s.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests during rotation were not 200: {bad[:3]}")
    # The first second opens wrk's connections and the last half second closes them: not
    # what a refresh does to latency, so neither is counted.
    start, end = samples[0].at + 1.0, samples[-1].at - 0.5
    samples = [s for s in samples if start <= s.at <= end]
    refreshes = [r for r in refreshes if start - plan.around <= r <= end + plan.around]
    near_windows, steady_windows = windows(samples, refreshes, plan.around)
    section = Section(
        "3. Latency during token rotation (one broker, Redis)",
        ["requests", "windows", "count", "p50 ms", "p99 ms", "median of window p99s ms"],
    )
    figures = {}
    for name, groups in (
        ("steady", steady_windows),
        (f"within {plan.around:g} s of a refresh", near_windows),
    ):
        pooled = [value for group in groups for value in group]
        figures[name] = (percentile(pooled, 99), median([percentile(g, 99) for g in groups]))
        section.rows.append(
            [
                name,
                str(len(groups)),
                f"{len(pooled):,}",
                f"{percentile(pooled, 50) * 1000:.2f}",
                f"{figures[name][0] * 1000:.2f}",
                f"{figures[name][1] * 1000:.2f}",
            ]
        )
    (steady_pooled, steady_median), (near_pooled, near_median) = figures.values()
    section.rows.append(
        [
            "ratio around / steady",
            "",
            "",
            "",
            f"**{near_pooled / steady_pooled:.2f}**",
            f"**{near_median / steady_median:.2f}**",
        ]
    )
    section.notes.append(
        f"Tokens live {plan.lifetime:g} s (buffer {plan.buffer:.2g} s, upstream latency "
        f"{plan.upstream_latency * 1000:g} ms): {len(refreshes)} refreshes during one "
        f"{plan.seconds:g} s wrk run, {plan.connections} connections (one per wrk thread), "
        "every request timed; steady windows are 2 s long and more than 2 s from any "
        "refresh. The median of per-window p99s is less swayed by a burst of load from "
        "other work on the machine than the pooled p99. Target: ratio <= 1.2."
    )
    return section
