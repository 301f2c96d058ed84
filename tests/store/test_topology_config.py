"""`store.redis_url` for Sentinel and `store.cluster`: parsed, and refused with the key path."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from app.config import StoreSettings
from app.store.topology import parse_sentinel_url

PASSWORD = "s3cr3t-redis-pw"


def test_sentinel_url_parts() -> None:
    """Hosts, ports (26379 by default), service, database and credentials are read."""
    url = f"redis+sentinel://:{PASSWORD}@s1:26380,s2,[::1]:26381/mymaster/2"
    parts = parse_sentinel_url(url)
    assert parts.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (parts.service_name, parts.db, parts.username, parts.password) == (
        "mymaster",
        2,
        None,
        PASSWORD,
    )
    assert not parts.sentinel_password_given


def test_sentinel_password_option() -> None:
    """`?sentinel_password=` sets the sentinels' own password; empty means none."""
    parts = parse_sentinel_url("redis+sentinel://u:p@s1:1/m?sentinel_password=")
    assert (parts.username, parts.password) == ("u", "p")
    assert parts.sentinel_password_given and parts.sentinel_password is None


def test_plain_sentinel_url_asks_for_no_tls() -> None:
    """redis+sentinel:// talks plain TCP to sentinels and data nodes, as before."""
    parts = parse_sentinel_url(f"redis+sentinel://:{PASSWORD}@s1/m")
    assert (parts.tls, parts.tls_options) == (False, {})


def test_rediss_sentinel_url_asks_for_tls_with_its_options() -> None:
    """rediss+sentinel:// asks for TLS everywhere; ssl_* options become redis-py's keywords,
    ssl_check_hostname a boolean; sentinel_password still works beside them."""
    url = (
        f"rediss+sentinel://:{PASSWORD}@s1:26380,s2/mymaster/1?ssl_ca_certs=/etc/tb/ca.pem"
        "&ssl_certfile=/etc/tb/client.pem&ssl_keyfile=/etc/tb/client.key"
        "&ssl_check_hostname=false&sentinel_password="
    )
    parts = parse_sentinel_url(url)
    assert parts.tls
    assert parts.tls_options == {
        "ssl_ca_certs": "/etc/tb/ca.pem",
        "ssl_certfile": "/etc/tb/client.pem",
        "ssl_keyfile": "/etc/tb/client.key",
        "ssl_check_hostname": False,
    }
    assert (parts.sentinels, parts.service_name, parts.db) == (
        (("s1", 26380), ("s2", 26379)),
        "mymaster",
        1,
    )
    assert parts.sentinel_password_given and parts.sentinel_password is None
    assert parse_sentinel_url("rediss+sentinel://s1/m").tls_options == {}


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis+sentinel://s1/m?ssl_ca_certs=/ca.pem", "need rediss+sentinel"),
        ("rediss+sentinel://s1/m?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss+sentinel://s1/m?ssl_check_hostname=no", "true or false"),
        ("rediss+sentinel://s1/m?ssl_ca_certs=", "file path"),
        ("rediss+sentinel://s1/m?ssl_ca_certs=/a&ssl_ca_certs=/b", "each once"),
        ("rediss+sentinel://s1/m?ssl_cert_reqs=none", "query options"),
    ],
)
def test_bad_sentinel_tls_options_are_refused(url: str, fragment: str) -> None:
    """TLS options without TLS, a key without its certificate, a non-boolean hostname check,
    an empty path, a repeated or an unknown option are refused, naming the problem."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_sentinel_url(url)


@pytest.mark.parametrize(
    ("store", "key", "fragment"),
    [
        ({"redis_url": f"redis+sentinel://:{PASSWORD}@s1:26379"}, "redis_url", "service_name"),
        ({"redis_url": f"redis+sentinel://:{PASSWORD}@s1:99999/m"}, "redis_url", "port"),
        ({"redis_url": f"redis+sentinel://:{PASSWORD}@:1/m"}, "redis_url", "host"),
        ({"redis_url": f"redis+sentinel://:{PASSWORD}@s1/m/x"}, "redis_url", "database"),
        ({"redis_url": f"redis+sentinel://:{PASSWORD}@s1/m?ssl=1"}, "redis_url", "query option"),
        ({"redis_url": f"redis://:{PASSWORD}@/0"}, "redis_url", "needs a host"),
        ({"cluster": True}, "cluster", "needs redis_url"),
        ({"cluster": True, "redis_url": f"redis+sentinel://:{PASSWORD}@s/m"}, "cluster", "seed"),
        ({"cluster": True, "redis_url": f"redis://:{PASSWORD}@h:1/3"}, "cluster", "database 0"),
        ({"cluster": True, "redis_url": "unix:///run/redis.sock"}, "cluster", "seed"),
    ],
)
def test_bad_store_urls_are_refused_with_key_path(
    store: dict[str, object], key: str, fragment: str
) -> None:
    """A malformed URL is refused naming the key, never echoing the URL or its password."""
    with pytest.raises(ValidationError) as info:
        StoreSettings.model_validate(store)
    errors = info.value.errors(include_input=False)
    assert [error["loc"] for error in errors] == [(key,)]
    assert fragment in errors[0]["msg"]
    assert PASSWORD not in str(errors)


@pytest.mark.parametrize(
    "store",
    [
        {"redis_url": "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0"},
        {"redis_url": "rediss+sentinel://:pw@s1,s2/mymaster/0?ssl_ca_certs=/etc/tb/ca.pem"},
        {"redis_url": "redis://seed:7000/0", "cluster": True},
        {"redis_url": "rediss://seed:7000", "cluster": True},
        {"redis_url": "unix:///run/redis.sock"},
    ],
)
def test_good_store_urls_are_accepted(store: dict[str, object]) -> None:
    """The documented URL forms validate."""
    StoreSettings.model_validate(store)
