"""Which Redis topology `store.redis_url` names, parsed without importing redis.

    redis://[[user]:password@]host:port/db               one server (also rediss://, unix://)
    redis+sentinel://[[user]:password@]h1:p1,h2:p2/service_name/db[?sentinel_password=...]
                                                         Sentinel: the current primary of
                                                         `service_name`, followed across failovers
    redis://seed:port with store.cluster = true          Redis Cluster, discovered from one seed

The credentials in a Sentinel URL authenticate to the data nodes and, unless
`sentinel_password` says otherwise (empty: none), to the sentinels too, as bitnami's chart
(`auth.sentinel = true`) configures them. Messages never repeat the URL: it may hold a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """The parts of a `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None  # None: the same credentials as the data nodes
    sentinel_password_given: bool = False


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Split a Sentinel URL; ValueError (without the URL) when it is malformed."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(credentials)
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise ValueError("a Sentinel URL needs /service_name or /service_name/db after the hosts")
    db = _db(path[1]) if len(path) == 2 else 0
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"sentinel_password"}
    if unknown or len(query.get("sentinel_password", [])) > 1:
        raise ValueError("the only query option of a Sentinel URL is one sentinel_password")
    given = "sentinel_password" in query
    sentinel_password = query["sentinel_password"][0] if given else None
    return SentinelUrl(
        sentinels, unquote(path[0]), db, username, password, sentinel_password or None, given
    )


def check_cluster_url(url: str) -> None:
    """A Cluster seed URL: redis:// or rediss:// to one host, database 0 (Cluster has no other)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("cluster = true needs a redis:// or rediss:// seed URL")
    if not parts.hostname:
        raise ValueError("cluster = true needs a seed host in redis_url")
    path = parts.path.strip("/")
    if path and _db(path) != 0:
        raise ValueError("Redis Cluster has only database 0")


def _credentials(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    if not colon:  # redis-py's convention: a lone userinfo is the password
        return None, unquote(user)
    return unquote(user) or None, unquote(password)


def _host_port(item: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError("every Sentinel address needs a host (host:port,host:port)")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("a Sentinel port must be a number from 1 to 65535")
    return host, int(port_text)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError("the database must be a number")
    return int(text)
