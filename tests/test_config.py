"""Loading the configuration: TOML file, TOKEN_BROKER_* overrides, and the messages users see."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.auth.callers import hash_api_key
from app.config import CONFIG_ENV_VAR, Settings, load_settings
from app.errors import ConfigError
from tests.tomlfile import write_toml

SECRET = "cfg-secret-Zq81-never-print-me"
API_KEY = "tbk_config_test_key_never_print_me_0001"
BASE_CONFIG: dict[str, Any] = {
    "server": {"port": 8080},
    "clients": {
        "checkout": {
            "token_url": "https://auth.example.com/auth/realms/Paysera/protocol/openid-connect/token",
            "api_base_url": "https://api.example.com",
            "client_id": "checkout-id",
            "client_secret": SECRET,
        }
    },
    "callers": {"orders": {"api_key_sha256": hash_api_key(API_KEY), "clients": ["checkout"]}},
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep the developer's own TOKEN_BROKER_* variables out of these tests."""
    for name in list(os.environ):
        if name.startswith("TOKEN_BROKER_"):
            monkeypatch.delenv(name)
    yield


def base() -> dict[str, Any]:
    """A fresh copy of the good configuration."""
    return copy.deepcopy(BASE_CONFIG)


def problem_text(tmp_path: Path, config: dict[str, Any]) -> ConfigError:
    """Load `config` from a TOML file and return the ConfigError it must cause."""
    path = write_toml(tmp_path / "broker.toml", config)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value


def assert_names_key(error: ConfigError, key_path: str, fragment: str) -> None:
    """The message has a line starting with `key_path` that contains `fragment`."""
    lines = [line.strip() for line in str(error).splitlines()]
    matching = [line for line in lines if line.startswith(key_path)]
    assert matching, f"no line starts with {key_path!r} in:\n{error}"
    assert any(fragment in line for line in matching), f"{fragment!r} not in {matching}"


# -- table of bad files ---------------------------------------------------------------------

Mutate = Callable[[dict[str, Any], Path], None]


@dataclass(frozen=True)
class BadCase:
    """One bad configuration: how to break the good one, what the user must read."""

    name: str
    mutate: Mutate
    key_path: str
    fragment: str
    hidden: tuple[str, ...] = field(default=())  # values that must not appear in the message


def _client(config: dict[str, Any]) -> dict[str, Any]:
    return config["clients"]["checkout"]  # type: ignore[no-any-return]


def _caller(config: dict[str, Any]) -> dict[str, Any]:
    return config["callers"]["orders"]  # type: ignore[no-any-return]


def _secret_file(tmp_path: Path, content: str) -> str:
    path = tmp_path / "secret"
    path.write_text(content, encoding="utf-8")
    return str(path)


def _rename_client(config: dict[str, Any], new: str) -> None:
    config["clients"][new] = config["clients"].pop("checkout")


BAD_CASES = [
    BadCase(
        "missing secret",
        lambda c, _: _client(c).pop("client_secret"),
        "clients.checkout",
        "client_secret or client_secret_file is required",
    ),
    BadCase(
        "secret and secret file",
        lambda c, t: _client(c).update(client_secret_file=_secret_file(t, "other")),
        "clients.checkout",
        "not both",
    ),
    BadCase(
        "secret file missing",
        lambda c, t: (
            _client(c).pop("client_secret"),
            _client(c).update(client_secret_file=str(t / "absent")),
        ),
        "clients.checkout.client_secret_file",
        "cannot read",
    ),
    BadCase(
        "secret file is a directory",
        lambda c, t: (
            _client(c).pop("client_secret"),
            _client(c).update(client_secret_file=str(t)),
        ),
        "clients.checkout.client_secret_file",
        "cannot read",
    ),
    BadCase(
        "secret file empty",
        lambda c, t: (
            _client(c).pop("client_secret"),
            _client(c).update(client_secret_file=_secret_file(t, " \n\n")),
        ),
        "clients.checkout.client_secret_file",
        "empty",
    ),
    BadCase(
        "secret of the wrong type",
        lambda c, _: _client(c).update(client_secret=918273645546372819),
        "clients.checkout.client_secret",
        "string",
        hidden=("918273645546372819",),
    ),
    BadCase(
        "unknown top-level table",
        lambda c, _: c.update(logging={"level": "debug"}),
        "logging",
        "not permitted",
    ),
    BadCase(
        "unknown server key",
        lambda c, _: c["server"].update(prot=8081),
        "server.prot",
        "not permitted",
    ),
    BadCase(
        "unknown client key",
        lambda c, _: _client(c).update(refresh_bufer_seconds=10),
        "clients.checkout.refresh_bufer_seconds",
        "not permitted",
    ),
    BadCase(
        "unknown caller key",
        lambda c, _: _caller(c).update(client="checkout"),
        "callers.orders.client",
        "not permitted",
    ),
    BadCase(
        "plain http token_url",
        lambda c, _: _client(c).update(token_url="http://auth.example.com/token"),
        "clients.checkout.token_url",
        "plain http",
    ),
    BadCase(
        "plain http to a private address",
        lambda c, _: _client(c).update(token_url="http://10.0.0.1/token"),
        "clients.checkout.token_url",
        "plain http",
    ),
    BadCase(
        "plain http api_base_url",
        lambda c, _: _client(c).update(api_base_url="http://api.example.com"),
        "clients.checkout.api_base_url",
        "plain http",
    ),
    BadCase(
        "not an http url",
        lambda c, _: _client(c).update(token_url="ftp://auth.example.com/token"),
        "clients.checkout.token_url",
        "https://",
    ),
    BadCase(
        "credentials inside the url",
        lambda c, _: _client(c).update(token_url=f"https://id:{SECRET}@auth.example.com/token"),
        "clients.checkout.token_url",
        "credentials",
    ),
    BadCase(
        "negative refresh buffer",
        lambda c, _: _client(c).update(refresh_buffer_seconds=-1),
        "clients.checkout.refresh_buffer_seconds",
        "greater than or equal to 0",
    ),
    BadCase(
        "negative forced refresh interval",
        lambda c, _: _client(c).update(min_forced_refresh_interval_seconds=-0.5),
        "clients.checkout.min_forced_refresh_interval_seconds",
        "greater than or equal to 1",
    ),
    BadCase(
        "no forced refresh floor",
        lambda c, _: _client(c).update(min_forced_refresh_interval_seconds=0),
        "clients.checkout.min_forced_refresh_interval_seconds",
        "greater than or equal to 1",
    ),
    BadCase(
        "forced refresh floor under a second",
        lambda c, _: _client(c).update(min_forced_refresh_interval_seconds=0.5),
        "clients.checkout.min_forced_refresh_interval_seconds",
        "greater than or equal to 1",
    ),
    BadCase(
        "zero upstream timeout",
        lambda c, _: _client(c).update(timeout_seconds=0),
        "clients.checkout.timeout_seconds",
        "greater than 0",
    ),
    BadCase(
        "zero keep-alive",
        lambda c, _: c["server"].update(keep_alive_seconds=0),
        "server.keep_alive_seconds",
        "greater than 0",
    ),
    BadCase(
        "request target limit too small for the broker's own paths",
        lambda c, _: c["server"].update(max_target_bytes=100),
        "server.max_target_bytes",
        "greater than or equal to 1024",
    ),
    BadCase(
        "header bytes limit too small",
        lambda c, _: c["server"].update(max_header_bytes=1000),
        "server.max_header_bytes",
        "greater than or equal to 4096",
    ),
    BadCase(
        "header count limit too small",
        lambda c, _: c["server"].update(max_headers=3),
        "server.max_headers",
        "greater than or equal to 16",
    ),
    BadCase(
        "API body limit too small",
        lambda c, _: c["server"].update(max_body_bytes=10),
        "server.max_body_bytes",
        "greater than or equal to 1024",
    ),
    BadCase(
        "no Redis connection allowed",
        lambda c, _: c.update(store={"max_connections": 0}),
        "store.max_connections",
        "greater than or equal to 1",
    ),
    BadCase(
        "no wait for a Redis connection",
        lambda c, _: c.update(store={"pool_timeout_seconds": 0}),
        "store.pool_timeout_seconds",
        "greater than 0",
    ),
    BadCase(
        "no time to connect to Redis",
        lambda c, _: c.update(store={"connect_timeout_seconds": 0}),
        "store.connect_timeout_seconds",
        "greater than 0",
    ),
    BadCase(
        "TLS options on a plain Sentinel URL",
        lambda c, _: c.update(
            store={"redis_url": f"redis+sentinel://:{SECRET}@s1/m?ssl_ca_certs=/ca.pem"}
        ),
        "store.redis_url",
        "rediss+sentinel",
        hidden=(SECRET,),
    ),
    BadCase(
        "port 0",
        lambda c, _: c["server"].update(port=0),
        "server.port",
        "greater than or equal to 1",
    ),
    BadCase(
        "port above 65535",
        lambda c, _: c["server"].update(port=70000),
        "server.port",
        "less than or equal to 65535",
    ),
    BadCase(
        "port not a number",
        lambda c, _: c["server"].update(port="eighty"),
        "server.port",
        "integer",
    ),
    BadCase(
        "budget limit 0",
        lambda c, _: c.update(budget={"limit": 0}),
        "budget.limit",
        "greater than or equal to 1",
    ),
    BadCase(
        "budget window 0",
        lambda c, _: c.update(budget={"window_seconds": 0}),
        "budget.window_seconds",
        "greater than 0",
    ),
    BadCase(
        "unknown log level",
        lambda c, _: c["server"].update(log_level="verbose"),
        "server.log_level",
        "debug",
    ),
    BadCase(
        "unknown client_auth",
        lambda c, _: _client(c).update(client_auth="digest"),
        "clients.checkout.client_auth",
        "basic",
    ),
    BadCase(
        "capitalised client name",
        lambda c, _: _rename_client(c, "Checkout"),
        "clients.Checkout",
        "pattern",
    ),
    BadCase(
        "client name with a hyphen",
        lambda c, _: _rename_client(c, "check-out"),
        "clients.check-out",
        "pattern",
    ),
    BadCase(
        "caller name starting with a digit",
        lambda c, _: c["callers"].update({"1abc": c["callers"].pop("orders")}),
        "callers.1abc",
        "pattern",
    ),
    BadCase(
        "caller naming an unknown client",
        lambda c, _: _caller(c).update(clients=["checkout", "nope"]),
        "callers.orders.clients[1]",
        "unknown client 'nope'",
    ),
    BadCase(
        "caller with no clients",
        lambda c, _: _caller(c).update(clients=[]),
        "callers.orders.clients",
        "at least 1",
    ),
    BadCase(
        "api_key_sha256 not hex",
        lambda c, _: _caller(c).update(api_key_sha256="zz" * 32),
        "callers.orders.api_key_sha256",
        "64 hex characters",
    ),
    BadCase(
        "raw API key pasted as api_key_sha256",
        lambda c, _: _caller(c).update(api_key_sha256=API_KEY),
        "callers.orders.api_key_sha256",
        "64 hex characters",
    ),
    BadCase(
        "two callers with one key",
        lambda c, _: c["callers"].update(billing=dict(_caller(c))),
        "callers.billing.api_key_sha256",
        "same key as callers.orders",
    ),
    BadCase(
        "caller without any credential",
        lambda c, _: _caller(c).pop("api_key_sha256"),
        "callers.orders",
        "needs api_key_sha256 or mtls_identities",
    ),
    BadCase(
        "bad mtls identity",
        lambda c, _: _caller(c).update(mtls_identities=["URI:spiffe://corp/orders", "orders"]),
        "callers.orders.mtls_identities.1",
        "CN=name",
    ),
    BadCase(
        "no clients table",
        lambda c, _: c.pop("clients"),
        "clients",
        "Field required",
    ),
    BadCase(
        "empty clients table",
        lambda c, _: c.update(clients={}),
        "clients",
        "at least one [clients.NAME] table is required",
    ),
    BadCase(
        "redis url of another scheme, with a password",
        lambda c, _: c.update(store={"redis_url": "http://:hunter2-redis-pw@127.0.0.1:6379/0"}),
        "store",
        "redis_url scheme",
        hidden=("hunter2-redis-pw",),
    ),
    BadCase(
        "tls certificate without key",
        lambda c, t: c["server"].update(tls_cert_file=_secret_file(t, "cert")),
        "server",
        "tls_cert_file and tls_key_file",
    ),
    BadCase(
        "public url with a path",
        lambda c, _: c["server"].update(public_url="https://tb.example/broker"),
        "server.public_url",
        "must be an origin",
    ),
    BadCase(
        "public url over plain http to another host",
        lambda c, _: c["server"].update(public_url="http://tb.example"),
        "server.public_url",
        "plain http:// is refused",
    ),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[case.name for case in BAD_CASES])
def test_bad_file_is_refused_naming_the_key_path(case: BadCase, tmp_path: Path) -> None:
    """A bad configuration file is refused with its key path and without any secret."""
    config = base()
    case.mutate(config, tmp_path)
    error = problem_text(tmp_path, config)
    assert_names_key(error, case.key_path, case.fragment)
    text = str(error) + repr(error.problems)
    for hidden in (SECRET, API_KEY, *case.hidden):
        assert hidden not in text


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Several problems in one file are all listed, each with its own key path."""
    config = base()
    config["server"]["port"] = 0
    _client(config)["token_url"] = "http://auth.example.com/token"
    _client(config)["typo"] = 1
    error = problem_text(tmp_path, config)
    paths = {path for path, _ in error.problems}
    assert {"server.port", "clients.checkout.token_url", "clients.checkout.typo"} <= paths


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    """A file that is not TOML is refused with a message naming the file."""
    path = tmp_path / "broken.toml"
    path.write_text(f'[clients.checkout\nclient_secret = "{SECRET}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "not valid TOML" in str(info.value)
    assert str(path) in str(info.value)
    assert SECRET not in str(info.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A config path that does not exist is refused with a clear message."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


# -- loopback http is allowed ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8081/auth/realms/Paysera/protocol/openid-connect/token",
        "http://127.0.0.2/token",
        "http://localhost:8081/token",
        "http://[::1]:8081/token",
    ],
)
def test_plain_http_to_loopback_is_allowed(url: str, tmp_path: Path) -> None:
    """Plain http:// is accepted when the upstream host is a loopback address."""
    config = base()
    _client(config).update(token_url=url, api_base_url=url.rsplit("/", 1)[0])
    settings = load_settings(write_toml(tmp_path / "ok.toml", config))
    assert settings.clients["checkout"].token_url == url


# -- environment overrides -------------------------------------------------------------------


def test_env_overrides_win_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TOKEN_BROKER_* variables (with __ nesting) override the file's values."""
    path = write_toml(tmp_path / "broker.toml", base())
    monkeypatch.setenv("TOKEN_BROKER_SERVER__PORT", "9191")
    monkeypatch.setenv("TOKEN_BROKER_CLIENTS__CHECKOUT__CLIENT_SECRET", "from-the-environment")
    monkeypatch.setenv("TOKEN_BROKER_CLIENTS__CHECKOUT__REFRESH_BUFFER_SECONDS", "42")
    monkeypatch.setenv("TOKEN_BROKER_STORE__KEY_PREFIX", "envprefix")
    settings = load_settings(path)
    assert settings.server.port == 9191
    checkout = settings.clients["checkout"]
    assert checkout.secret().get_secret_value() == "from-the-environment"
    assert checkout.refresh_buffer_seconds == 42
    assert checkout.client_id == "checkout-id"  # untouched file values stay
    assert settings.store.key_prefix == "envprefix"


def test_typo_in_nested_env_override_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt nested TOKEN_BROKER_ variable stops start-up with its key path."""
    path = write_toml(tmp_path / "broker.toml", base())
    monkeypatch.setenv("TOKEN_BROKER_CLIENTS__CHECKOUT__TYPO", "1")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_names_key(info.value, "clients.checkout.typo", "not permitted")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "key"),
    [("TOKEN_BROKER_SERVR__PORT", "servr"), ("TOKEN_BROKER_LOG_LEVEL", "log_level")],
)
def test_typo_in_top_level_env_override_is_refused(
    variable: str, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TOKEN_BROKER_ variable naming no top-level section is refused, not ignored."""
    path = write_toml(tmp_path / "broker.toml", base())
    monkeypatch.setenv(variable, "9191")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value).lower()


def test_bad_env_value_names_the_key_and_hides_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value from the environment is reported with its key path, never its value."""
    path = write_toml(tmp_path / "broker.toml", base())
    monkeypatch.setenv("TOKEN_BROKER_CLIENTS__CHECKOUT__TOKEN_URL", f"http://id:{SECRET}@evil/")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_names_key(info.value, "clients.checkout.token_url", "")
    assert SECRET not in str(info.value)


def test_config_path_comes_from_token_broker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a path argument the file named by TOKEN_BROKER_CONFIG is loaded."""
    config = base()
    config["server"]["port"] = 8765
    monkeypatch.setenv(CONFIG_ENV_VAR, str(write_toml(tmp_path / "from-env.toml", config)))
    assert load_settings().server.port == 8765


def test_without_any_path_the_missing_clients_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no file and no TOKEN_BROKER_CONFIG, start-up stops asking for clients."""
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert_names_key(info.value, "clients", "Field required")


def test_client_secret_file_is_read(tmp_path: Path) -> None:
    """client_secret_file is read and stripped of its trailing newline."""
    config = base()
    _client(config).pop("client_secret")
    _client(config)["client_secret_file"] = _secret_file(tmp_path, SECRET + "\n")
    settings = load_settings(write_toml(tmp_path / "broker.toml", config))
    assert settings.clients["checkout"].secret().get_secret_value() == SECRET


def test_secret_is_not_in_settings_repr(tmp_path: Path) -> None:
    """The loaded settings never show the client secret in their repr."""
    settings = load_settings(write_toml(tmp_path / "broker.toml", base()))
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())


def test_contract_defaults(tmp_path: Path) -> None:
    """Keys left out take the contract's defaults."""
    settings = load_settings(write_toml(tmp_path / "broker.toml", base()))
    assert isinstance(settings, Settings)
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.server.log_level == "info"
    assert settings.server.tls_client_cert_required is True
    assert settings.server.keep_alive_seconds == 75
    assert settings.store.redis_url is None
    assert (settings.store.key_prefix, settings.store.cluster) == ("tb", False)
    store = settings.store
    assert (store.max_connections, store.pool_timeout_seconds) == (64, 1.0)
    assert (store.connect_timeout_seconds, store.socket_timeout_seconds) == (1.0, 1.0)
    budget = settings.budget
    assert (budget.limit, budget.window_seconds, budget.max_wait_seconds) == (50, 60, 30)
    assert (budget.safety_margin_seconds, budget.count_token_requests) == (1.0, False)
    checkout = settings.clients["checkout"]
    assert checkout.refresh_buffer_seconds == 300
    assert checkout.min_forced_refresh_interval_seconds == 10


def test_forced_refresh_floor_of_one_second_is_accepted(tmp_path: Path) -> None:
    """min_forced_refresh_interval_seconds = 1, the lowest floor allowed, loads."""
    config = base()
    _client(config)["min_forced_refresh_interval_seconds"] = 1
    checkout = load_settings(write_toml(tmp_path / "broker.toml", config)).clients["checkout"]
    assert checkout.min_forced_refresh_interval_seconds == 1


def test_default_upstream_urls_are_paysera(tmp_path: Path) -> None:
    """A client without URLs uses Paysera's production token endpoint and API."""
    config = base()
    _client(config).pop("token_url")
    _client(config).pop("api_base_url")
    checkout = load_settings(write_toml(tmp_path / "broker.toml", config)).clients["checkout"]
    assert checkout.token_url == (
        "https://api.paysera.com/auth/realms/Paysera/protocol/openid-connect/token"
    )
    assert checkout.api_base_url == "https://api.paysera.com"


def test_env_value_that_is_not_json_names_the_section_and_hides_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list override that is not JSON is a ConfigError naming the section, not a traceback."""
    path = write_toml(tmp_path / "broker.toml", base())
    monkeypatch.setenv("TOKEN_BROKER_SERVER__XFCC_TRUSTED_PROXIES", f"[{SECRET}")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_names_key(info.value, "server", "not valid JSON")
    assert SECRET not in str(info.value)
