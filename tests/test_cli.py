"""The `token-broker` command line as real subprocesses: check-config, new-api-key, demo, serve."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import IO, Any

import httpx
import pytest

from app.auth.callers import hash_api_key
from app.cli import main
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET, Emulator
from tests.support.processes import TOKEN_BROKER, clean_env, run_cli
from tests.support.servers import free_port
from tests.tomlfile import write_toml

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "cli-secret-value-never-printed-4411"


def good_config(token_url: str = "https://auth.example.com/token") -> dict[str, Any]:
    """A valid configuration with one client and one caller."""
    return {
        "clients": {
            "checkout": {
                "token_url": token_url,
                "api_base_url": token_url.split("/auth/")[0],
                "client_id": "checkout-id",
                "client_secret": SECRET,
            }
        },
        "callers": {
            "orders": {"api_key_sha256": hash_api_key(API_KEYS["orders"]), "clients": ["checkout"]}
        },
    }


# -- one-shot commands ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every one-shot command of this module, run once and in parallel (start-up is slow)."""
    tmp = tmp_path_factory.mktemp("cli")
    good = str(write_toml(tmp / "good.toml", good_config()))
    bad = good_config()
    checkout = bad["clients"]["checkout"]
    checkout["token_url"] = f"http://checkout-id:{SECRET}@auth.example.com/token"
    checkout["refresh_buffer_seconds"] = -5
    checkout["min_forced_refresh_interval_seconds"] = 0.5  # below the 1 s floor
    checkout["tpyo"] = True
    bad["server"] = {"port": 0}
    bad["callers"]["orders"]["api_key_sha256"] = API_KEYS["orders"]  # the key, not its hash
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "good": (["check-config", "--config", good], clean_env()),
        "bad": (["check-config", "--config", str(write_toml(tmp / "bad.toml", bad))], clean_env()),
        "new key": (["new-api-key"], clean_env()),
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {
            name: pool.submit(run_cli, *args, env=env) for name, (args, env) in commands.items()
        }
        return {name: future.result() for name, future in futures.items()}


def test_check_config_accepts_a_good_file(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    """check-config on a valid file exits 0 with a summary and no secret."""
    result = runs["good"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 client(s), 1 caller(s)")
    assert SECRET not in result.stdout + result.stderr


def test_check_config_lists_every_problem_without_secrets(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    """check-config on a bad file exits 1 and prints each problem's key path, never a secret."""
    result = runs["bad"]
    assert result.returncode == 1
    for key_path in (
        "clients.checkout.token_url",
        "clients.checkout.refresh_buffer_seconds",
        "clients.checkout.min_forced_refresh_interval_seconds",
        "clients.checkout.tpyo",
        "server.port",
        "callers.orders.api_key_sha256",
    ):
        assert re.search(rf"^\s*{re.escape(key_path)}: ", result.stderr, re.MULTILINE), key_path
    output = result.stdout + result.stderr
    assert SECRET not in output
    assert API_KEYS["orders"] not in output
    assert "Traceback" not in output


# In-process from here: the same `main()` the console script calls, without paying its start-up.


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No TOKEN_BROKER_* variables from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("TOKEN_BROKER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_check_config_reads_token_broker_config(
    cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without --config, check-config validates the file named by TOKEN_BROKER_CONFIG."""
    cli_env.setenv("TOKEN_BROKER_CONFIG", str(write_toml(tmp_path / "env.toml", good_config())))
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_check_config_on_a_missing_file_fails_cleanly(
    cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A --config path that does not exist is a one-line error and exit code 1."""
    assert main(["check-config", "--config", str(tmp_path / "absent.toml")]) == 1
    assert "config file not found" in capsys.readouterr().err


def test_check_config_reports_problems_of_every_stage_in_one_run(
    cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A misspelt variable, a bad token_url, a missing secret file and a missing TLS file are
    all reported by one check-config run (it used to stop at the first failing stage)."""
    config = good_config("http://auth.example.com/auth/token")
    checkout = config["clients"]["checkout"]
    del checkout["client_secret"]
    checkout["client_secret_file"] = str(tmp_path / "absent-secret")
    config["server"] = {"tls_cert_file": str(tmp_path / "absent.pem"), "tls_key_file": "x.pem"}
    cli_env.setenv("TOKEN_BROKER_SERVR__PORT", "9000")
    assert main(["check-config", "--config", str(write_toml(tmp_path / "c.toml", config))]) == 1
    err = capsys.readouterr().err
    assert "TOKEN_BROKER_SERVR__PORT" in err
    for key_path in (
        "servr",
        "clients.checkout.token_url",
        "clients.checkout.client_secret_file",
        "server.tls_cert_file",
    ):
        assert re.search(rf"^\s*{re.escape(key_path)}\b", err, re.MULTILINE), (key_path, err)


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_without_any_config_the_cli_says_what_is_missing(
    cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """With neither --config nor TOKEN_BROKER_CONFIG, the command exits 1 naming `clients`."""
    assert main([command]) == 1
    assert re.search(r"^\s*clients: Field required", capsys.readouterr().err, re.MULTILINE)


def test_serve_refuses_a_bad_config(
    cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`serve` with a bad file exits 1 naming the key path, before starting, without secrets."""
    config = good_config("http://auth.example.com/auth/token")
    assert main(["serve", "--config", str(write_toml(tmp_path / "bad.toml", config))]) == 1
    captured = capsys.readouterr()
    assert "clients.checkout.token_url" in captured.err
    assert SECRET not in captured.out + captured.err


@pytest.mark.parametrize("port", ["0", "70000"])
def test_serve_validates_the_port_flag(
    port: str, cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`serve --port` is checked like server.port in the file: exit 1 naming the key."""
    path = write_toml(tmp_path / "good.toml", good_config())
    assert main(["serve", "--config", str(path), "--port", port]) == 1
    assert re.search(r"^\s*server\.port: ", capsys.readouterr().err, re.MULTILINE)


def test_new_api_key_prints_a_key_and_its_hash_line(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    """new-api-key prints a fresh key and the api_key_sha256 line that matches it."""
    result = runs["new key"]
    assert result.returncode == 0
    key = re.search(r"(tbk_[A-Za-z0-9_-]{43,})", result.stdout)
    line = re.search(r'^api_key_sha256 = "([0-9a-f]{64})"$', result.stdout, re.MULTILINE)
    assert key is not None and line is not None, result.stdout
    assert hashlib.sha256(key.group(1).encode()).hexdigest() == line.group(1)


# -- demo (make run) -----------------------------------------------------------------------------


def lines_of(stream: IO[str]) -> tuple[Queue[str], threading.Thread]:
    """A queue fed with `stream`'s lines by a daemon thread (so reads can time out)."""
    queue: Queue[str] = Queue()

    def pump() -> None:
        for line in stream:
            queue.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return queue, thread


def wait_for_line(queue: Queue[str], pattern: str, timeout: float) -> str:
    """The first line matching `pattern` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            line = queue.get(timeout=max(0.01, deadline - time.monotonic()))
        except Empty:
            raise AssertionError(f"no line matching {pattern!r} in {seen}") from None
        seen.append(line)
        if re.search(pattern, line):
            return line.strip()


def wait_until_live(base: str, timeout: float = 15) -> None:
    """Poll base/health/live until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{base} did not come up")
        time.sleep(0.05)


def stop(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    """Send `sig` and return the exit code (killing the process if it ignores the signal)."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("the process did not stop on its signal") from None


def test_make_run_starts_the_demo() -> None:
    """`make run` runs `token-broker demo` with PORT and EMULATOR_PORT, proven end to end
    below (the demo itself, and `make run PORT=... EMULATOR_PORT=...`)."""
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None
    assert re.search(
        r"token-broker demo --port \$\(PORT\) --emulator-port \$\(EMULATOR_PORT\)",
        recipe.group(1),
    )


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def make_run(*variables: str, **popen: Any) -> subprocess.Popen[str]:
    """`make -s run VARIABLES...` in the repository, in a session of its own (Ctrl-C = SIGINT
    to the whole group, as a terminal sends it)."""
    # Without the calling make's variables (`make test`): a nested make would say `make[1]:`.
    env = {k: v for k, v in clean_env().items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.Popen(
        ["make", "-s", "--no-print-directory", "run", *variables],
        cwd=REPO_ROOT,
        text=True,
        env=env,
        start_new_session=True,
        **popen,
    )


def test_make_run_with_the_broker_port_taken_says_so_in_one_line() -> None:
    """`make run` whose broker port is taken prints one line naming the port and how to pick
    others, exits non-zero, and prints no traceback (the emulator's port stays free)."""
    emulator_port = free_port()
    with taken_port() as port:
        process = make_run(
            f"PORT={port}",
            f"EMULATOR_PORT={emulator_port}",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = process.communicate(timeout=60)
    ours = [
        line for line in output.splitlines() if line and not re.match(r"make(\[\d+\])?: ", line)
    ]
    assert process.returncode != 0
    assert len(ours) == 1, output
    assert f"port {port} (the broker) is already in use" in ours[0]
    assert "make run PORT=18080 EMULATOR_PORT=18081" in ours[0]
    assert "Traceback" not in output
    with socket.create_server(("127.0.0.1", emulator_port)):
        pass  # nothing was left listening on the other port


def test_demo_with_the_emulator_port_taken_says_so_in_one_line() -> None:
    """`token-broker demo` whose emulator port is taken prints one line naming it and exits 1,
    without starting the broker."""
    port = free_port()
    with taken_port() as emulator_port:
        result = run_cli("demo", "--port", str(port), "--emulator-port", str(emulator_port))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("token-broker demo: ")
    assert f"port {emulator_port} (the emulator) is already in use" in lines[0]
    assert "make run PORT=18080 EMULATOR_PORT=18081" in lines[0]
    with socket.create_server(("127.0.0.1", port)):
        pass  # the broker never started


def test_make_run_listens_on_port_and_emulator_port() -> None:
    """`make run PORT=... EMULATOR_PORT=...` serves the broker and the emulator on those ports
    and its curl line names the broker's."""
    port, emulator_port = free_port(), free_port()
    process = make_run(
        f"PORT={port}",
        f"EMULATOR_PORT={emulator_port}",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    lines, reader = lines_of(process.stdout)
    try:
        curl = wait_for_line(lines, r"^\s*curl ", timeout=60)
        wait_until_live(f"http://127.0.0.1:{port}")
        stats = httpx.get(f"http://127.0.0.1:{emulator_port}/_emulator/stats", timeout=5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
        process.stdout.close()
    assert f"'http://127.0.0.1:{port}/token?client=checkout'" in curl
    assert stats.status_code == 200


@dataclass
class Demo:
    """A running `token-broker demo` process, the curl line it printed and its log file."""

    process: subprocess.Popen[str]
    curl: str
    log: Path
    exit_code: int | None = None

    def stop(self) -> int:
        """Ctrl-C the demo (once) and return its exit code."""
        if self.exit_code is None:
            self.exit_code = stop(self.process, signal.SIGINT)
        return self.exit_code


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`token-broker demo` on free ports, as `make run` starts it, once the broker answers."""
    port, emulator_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [TOKEN_BROKER, "demo", "--port", str(port), "--emulator-port", str(emulator_port)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=clean_env(),
        )
        running = Demo(process, "", log)
        assert process.stdout is not None
        lines, reader = lines_of(process.stdout)
        try:
            running.curl = wait_for_line(lines, r"^\s*curl ", timeout=20)
            # Printed once both servers accept connections: the broker must answer right away.
            wait_until_live(f"http://127.0.0.1:{port}")
            yield running
        finally:
            running.stop()
            reader.join(timeout=5)  # EOF once the process has exited
            process.stdout.close()


def test_demo_prints_a_curl_line_that_returns_a_token(demo: Demo) -> None:
    """The curl line `token-broker demo` prints, run exactly as printed, returns a token JSON."""
    assert "X-API-Key: tbk_" in demo.curl
    result = subprocess.run(
        ["bash", "-c", demo.curl], capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["token_type"] == "Bearer"
    assert body["access_token"]
    assert 3500 < body["expires_in"] <= 3600
    assert body["access_token"] not in demo.log.read_text(encoding="utf-8")


def test_demo_stops_cleanly_on_ctrl_c(demo: Demo) -> None:
    """Ctrl-C stops the demo's emulator and broker gracefully, without a traceback."""
    code = demo.stop()
    log = demo.log.read_text(encoding="utf-8")
    assert code == 0
    assert "event=server.stopped" in log  # the broker drained and closed its services
    assert log.count("Application shutdown complete") == 1  # the emulator's lifespan ended
    assert "Traceback" not in log, log[log.index("Traceback") :]


# -- serve ---------------------------------------------------------------------------------------


async def test_serve_runs_the_broker_against_the_emulator(
    emulator: Emulator, tmp_path: Path
) -> None:
    """`token-broker serve --config FILE` answers /health/live and hands out tokens."""
    config = good_config(emulator.token_url)
    config["clients"]["checkout"].update(client_id=EMULATOR_ID, client_secret=EMULATOR_SECRET)
    port = free_port()
    config["server"] = {"port": port, "log_level": "debug"}
    path = write_toml(tmp_path / "serve.toml", config)
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [TOKEN_BROKER, "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            deadline = time.monotonic() + 15
            while True:
                try:
                    live = await http.get("/health/live")
                    break
                except httpx.TransportError:
                    assert process.poll() is None, (tmp_path / "serve.log").read_text()
                    assert time.monotonic() < deadline, "serve did not come up"
                    await asyncio.sleep(0.05)
            assert live.status_code == 200
            response = await http.get("/token", headers={"X-API-Key": API_KEYS["orders"]})
            assert response.status_code == 200, response.text
            token = response.json()["access_token"]
            assert (await emulator.stats())["token_requests"] == 1
            refused = await http.get("/token", headers={"X-API-Key": "tbk_wrong"})
            assert refused.status_code == 401
    finally:
        code = await asyncio.to_thread(stop, process, signal.SIGTERM)
        log.close()
    output = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert code in (0, -signal.SIGTERM), output  # plain uvicorn re-raises the signal it handled
    assert "Shutting down" in output
    assert "Traceback" not in output
    assert "token.issued" in output  # debug logging reached the file
    for secret in (token, EMULATOR_SECRET, API_KEYS["orders"]):
        assert secret not in output
