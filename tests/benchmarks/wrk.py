"""Drive an HTTP endpoint with wrk and read its figures back as numbers.

wrk is C and multi-threaded, so the load generator is not the bottleneck a Python client
would be. A small Lua `done()` hook prints the summary as one JSON line.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_DONE_SCRIPT = """
wrk.method = os.getenv("WRK_METHOD") or "GET"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRKJSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    socket_errors: int
    non2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def clean(self) -> bool:
        """Every request answered 2xx, no socket errors."""
        return self.socket_errors == 0 and self.non2xx == 0


def wrk_binary() -> str:
    """Path of wrk; a clear error when it is missing."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is required for the benchmarks: apt-get install -y wrk")
    return binary


@functools.cache
def _script() -> Path:
    """The Lua hook, written once per run next to the results (`.bench/` is git-ignored)."""
    path = Path(".bench/wrk-summary.lua")
    path.parent.mkdir(exist_ok=True)
    path.write_text(_DONE_SCRIPT)
    return path


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 2,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> WrkResult:
    """Run wrk against `url` (`method`, no body) and return its summary."""
    args = [wrk_binary(), f"-t{min(threads, connections)}", f"-c{connections}"]
    args += [f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(_script())]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    env = os.environ | {"WRK_METHOD": method}
    done = subprocess.run([*args, url], capture_output=True, text=True, check=False, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line.removeprefix("WRKJSON "))
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                socket_errors=data["socket_errors"],
                non2xx=data["non2xx"],
                p50_ms=data["p50_us"] / 1000,
                p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no summary (exit {done.returncode}):\n{done.stdout}{done.stderr}")


_SAMPLES_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(0, ts)  -- CLOCK_REALTIME: compared with the harness's time.time()
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) samples = {} end
local sent = 0
function request()
  sent = now()
  return wrk.format()
end
function response(status, headers, body)
  local t = now()
  samples[#samples + 1] = string.format("%.6f %.6f %d", t, t - sent, status)
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for _, line in ipairs(thread:get("samples")) do io.write("S ", line, "\\n") end
  end
end
"""


@dataclass(frozen=True)
class Sample:
    """One request: when its response completed (unix seconds), its latency, its status."""

    at: float
    seconds: float
    status: int


def run_wrk_samples(
    url: str, *, connections: int, seconds: float, headers: dict[str, str] | None = None
) -> list[Sample]:
    """Run wrk with one connection per thread and return every request's timing.

    One connection per thread makes `request()` and `response()` strictly alternate, so the
    time between them is that request's latency.
    """
    path = Path(".bench/wrk-samples.lua")
    path.parent.mkdir(exist_ok=True)
    path.write_text(_SAMPLES_SCRIPT)
    args = [wrk_binary(), f"-t{connections}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    args += ["--timeout", "5s", "-s", str(path)]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run([*args, url], capture_output=True, text=True, check=False)
    samples = []
    for line in done.stdout.splitlines():
        if line.startswith("S "):
            at, latency, status = line[2:].split()
            samples.append(Sample(float(at), float(latency), int(status)))
    if not samples:
        raise RuntimeError(f"wrk gave no samples (exit {done.returncode}):\n{done.stderr}")
    return samples
