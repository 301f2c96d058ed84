"""Which Redis topology `store.redis_url` names, parsed without importing redis.

    redis://[[user]:password@]host:port/db               one server (also rediss://, unix://)
    redis+sentinel://[[user]:password@]h1:p1,h2:p2/service_name/db[?sentinel_password=...]
                                                         Sentinel: the current primary of
                                                         `service_name`, followed across failovers
    rediss+sentinel://...[?ssl_ca_certs=PATH&...]        the same over TLS, to the sentinels and
                                                         to the data nodes
    redis://seed:port with store.cluster = true          Redis Cluster, discovered from one seed

The credentials in a Sentinel URL authenticate to the data nodes and, unless
`sentinel_password` says otherwise (empty: none), to the sentinels too, as bitnami's chart
(`auth.sentinel = true`) configures them. With `rediss+sentinel://` every connection, to a
sentinel or a data node, is TLS (bitnami's `tls.enabled` secures both); the query options
`ssl_ca_certs` (a CA bundle, else the system's), `ssl_certfile` / `ssl_keyfile` (a client
certificate, for `tls-auth-clients yes`) and `ssl_check_hostname` (`true`, the default, or
`false` when the certificates do not name the addresses Sentinel announces) apply to both, with
the names and meaning they have in a `rediss://` URL. Messages never repeat the URL: it may hold
a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_TLS_SCHEME = "rediss+sentinel"
SENTINEL_SCHEMES = (SENTINEL_SCHEME, SENTINEL_TLS_SCHEME)
DEFAULT_SENTINEL_PORT = 26379
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
QUERY_OPTIONS = ("sentinel_password", *TLS_OPTIONS)


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
    tls: bool = False  # rediss+sentinel://: TLS to the sentinels and to the data nodes
    tls_options: dict[str, str | bool] = field(default_factory=dict)  # redis-py's ssl_* kwargs


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Split a Sentinel URL; ValueError (without the URL) when it is malformed."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(
            f"a Sentinel URL starts with {SENTINEL_SCHEME}:// or {SENTINEL_TLS_SCHEME}://"
        )
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(credentials)
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise ValueError("a Sentinel URL needs /service_name or /service_name/db after the hosts")
    db = _db(path[1]) if len(path) == 2 else 0
    query = _query(parts.query)
    tls = parts.scheme == SENTINEL_TLS_SCHEME
    given = "sentinel_password" in query
    sentinel_password = query.pop("sentinel_password", None)
    return SentinelUrl(
        sentinels,
        unquote(path[0]),
        db,
        username,
        password,
        sentinel_password or None,
        given,
        tls,
        _tls_options(query, tls),
    )


def _query(text: str) -> dict[str, str]:
    """The query options, each given once and known."""
    query = parse_qs(text, keep_blank_values=True)
    if set(query) - set(QUERY_OPTIONS) or any(len(values) > 1 for values in query.values()):
        raise ValueError(
            f"the query options of a Sentinel URL are {', '.join(QUERY_OPTIONS)}, each once"
        )
    return {name: values[0] for name, values in query.items()}


def _tls_options(query: dict[str, str], tls: bool) -> dict[str, str | bool]:
    """redis-py's ssl_* keyword arguments from the ssl_* query options."""
    if query and not tls:
        raise ValueError(f"the ssl_* query options need {SENTINEL_TLS_SCHEME}:// (TLS)")
    if "ssl_keyfile" in query and "ssl_certfile" not in query:
        raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
    options: dict[str, str | bool] = {}
    for name, value in query.items():
        if name == "ssl_check_hostname":
            if value not in ("true", "false"):
                raise ValueError("ssl_check_hostname is true or false")
            options[name] = value == "true"
        elif not value:
            raise ValueError(f"{name} needs a file path")
        else:
            options[name] = value
    return options


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
