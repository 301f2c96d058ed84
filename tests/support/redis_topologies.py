"""Real Redis Sentinel and Redis Cluster setups on loopback for failover drills.

Every process gets a free port and its own directory (a replica writes dump.rdb during a full
sync even with `--save ""`). Cluster bus ports are passed explicitly: port + 10000 overflows for
high ephemeral ports.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.redis import RedisServer, redis_server_binary
from tests.support.servers import free_port

PASSWORD = "sentinel-drill-pw"  # test-only: data nodes and sentinels require it
SERVICE = "drill"
FAST_SYNC = ("--repl-diskless-sync-delay", "0")  # a replica's first sync starts at once, not 5 s on


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` every 20 ms; return the seconds it took, or fail naming `what`."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def client(port: int, password: str | None = None) -> redis.Redis:
    """A short-timeout synchronous client for one process."""
    return redis.Redis(
        host="127.0.0.1", port=port, password=password, socket_timeout=1, decode_responses=True
    )


@dataclass
class AuthRedisServer(RedisServer):
    """A redis-server that requires a password (readiness is checked with AUTH)."""

    password: str = PASSWORD

    def answers(self) -> bool:
        """Whether the server answers an authenticated PING right now."""
        try:
            with client(self.port, self.password) as conn:
                return bool(conn.ping())
        except (redis.RedisError, OSError):
            return False


@dataclass
class SentinelProcess:
    """One `redis-server --sentinel` with its own config file (Sentinel rewrites it)."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tb-sent-")))
    process: subprocess.Popen[bytes] | None = None

    def start(self, primary_port: int, down_after_ms: int, failover_timeout_ms: int) -> None:
        """Write the config and start monitoring the primary (quorum 2)."""
        config = self.directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.directory}",
                    f"logfile {self.directory / 'sentinel.log'}",
                    f"requirepass {PASSWORD}",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
                    f"sentinel auth-pass {SERVICE} {PASSWORD}",
                    f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
                    f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {SERVICE} 1",
                    "",
                ]
            )
        )
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def conn(self) -> redis.Redis:
        """A client for this sentinel."""
        return client(self.port, PASSWORD)

    def stop(self) -> None:
        """Stop the sentinel and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class SentinelSetup:
    """1 primary, 1 replica, 3 sentinels (quorum 2), all requiring PASSWORD."""

    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    primary: AuthRedisServer = field(default_factory=AuthRedisServer)
    replica: AuthRedisServer = field(default_factory=AuthRedisServer)
    sentinels: list[SentinelProcess] = field(
        default_factory=lambda: [SentinelProcess() for _ in range(3)]
    )

    @property
    def url(self) -> str:
        """The broker's `store.redis_url` for this setup."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}/0"

    def start(self) -> SentinelSetup:
        """Start everything; return once the sentinels agree and the replica is in sync."""
        auth = ("--requirepass", PASSWORD, "--masterauth", PASSWORD, *FAST_SYNC)
        self.primary.extra_args = auth
        self.primary.start()
        self.replica.extra_args = (*auth, "--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start(self.primary.port, self.down_after_ms, self.failover_timeout_ms)
        wait_for(self._ready, 20, "sentinels to see each other and the replica")
        return self

    def _ready(self) -> bool:
        with client(self.replica.port, PASSWORD) as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            with sentinel.conn() as conn:
                state = conn.sentinel_master(SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
        return True

    def primary_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        with self.sentinels[0].conn() as conn:
            address = conn.sentinel_get_master_addr_by_name(SERVICE)
        return int(address[1])

    def wait_for_primary(self, port: int, timeout: float = 20) -> float:
        """Seconds until every sentinel names `port` as the primary."""

        def switched() -> bool:
            for sentinel in self.sentinels:
                with sentinel.conn() as conn:
                    if int(conn.sentinel_get_master_addr_by_name(SERVICE)[1]) != port:
                        return False
            return True

        return wait_for(switched, timeout, f"the sentinels to promote 127.0.0.1:{port}")

    def cleanup(self) -> None:
        """Stop every process and remove their directories."""
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.cleanup()
        self.primary.cleanup()


@dataclass
class ClusterSetup:
    """A Redis Cluster of `primaries` primaries with `replicas` replicas each, on loopback."""

    primaries: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed URL (the first node)."""
        return self.nodes[0].url

    def start(self) -> ClusterSetup:
        """Start the nodes, create the cluster and wait until every replica is in sync."""
        for _ in range(self.primaries * (1 + self.replicas)):
            node = RedisServer()
            node.extra_args = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.directory / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(free_port()),
                *FAST_SYNC,
            )  # fmt: skip
            self.nodes.append(node.start())
        subprocess.run(
            [
                _redis_cli(),
                "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        wait_for(self._ready, 30, "the cluster to be ok with every replica in sync")
        return self

    def _ready(self) -> bool:
        for node in self.nodes:
            with client(node.port) as conn:
                if not _cluster_ok(conn):
                    return False
                replication = conn.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
        return True

    def owner_of(self, key: str) -> RedisServer:
        """The node that serves `key`'s slot as primary, as the first live node sees it."""
        live = next(node for node in self.nodes if node.answers())
        with client(live.port) as conn:
            slot = int(conn.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in conn.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(primary[1])
                    return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no node serves {key!r}")

    def wait_for_owner_change(self, key: str, old: RedisServer, timeout: float = 20) -> float:
        """Seconds until a node other than `old` serves `key` and the cluster is ok again."""

        def moved() -> bool:
            if self.owner_of(key) is old:
                return False
            for node in self.nodes:
                if node is not old and node.answers():
                    with client(node.port) as conn:
                        if not _cluster_ok(conn):
                            return False
            return True

        return wait_for(moved, timeout, f"a replica to take over {key!r}")

    def cleanup(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.cleanup()


def _cluster_ok(conn: redis.Redis) -> bool:
    return "cluster_state:ok" in str(conn.execute_command("CLUSTER", "INFO"))


def _redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is not installed (Debian: apt-get install -y redis-tools)")
    return binary
