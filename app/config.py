"""Settings: one object, built once from a TOML file with ``TOKEN_BROKER_*`` environment overrides.

Every model forbids unknown keys, so a typo stops start-up instead of being ignored. Problems are
reported with their key path (``clients.checkout.token_url``) and never with the offending value,
which could be a secret.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from json import JSONDecodeError
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from app.errors import ConfigError
from app.store.sealing import KeyringError, parse_keyring
from app.store.topology import SENTINEL_SCHEMES, check_cluster_url, parse_sentinel_url

CONFIG_ENV_VAR = "TOKEN_BROKER_CONFIG"
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_IDENTITY_PREFIXES = ("CN=", "URI:", "DNS:")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and for literal addresses in 127.0.0.0/8 or ::1."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _upstream_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an absolute https:// URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("plain http:// is refused for non-loopback hosts; use https://")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials in the URL")
    return value.rstrip("/") if parts.path not in ("", "/") else value


def _public_url(value: str) -> str:
    _upstream_url(value)  # https (http only on loopback), a host, no credentials
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be an origin (scheme://host[:port]) without path, query or fragment")
    return f"{parts.scheme}://{parts.netloc}"


def _sha256_hex(value: str) -> str:
    value = value.strip().lower()
    if not _SHA256_HEX.match(value):
        raise ValueError("must be 64 hex characters (the SHA-256 of the API key)")
    return value


def _identity(value: str) -> str:
    if not value.startswith(_IDENTITY_PREFIXES) or value in _IDENTITY_PREFIXES:
        raise ValueError("must look like 'CN=name', 'URI:spiffe://...' or 'DNS:host'")
    return value


UpstreamUrl = Annotated[str, AfterValidator(_upstream_url)]
PublicUrl = Annotated[str, AfterValidator(_public_url)]
Sha256Hex = Annotated[str, AfterValidator(_sha256_hex)]
MtlsIdentity = Annotated[str, AfterValidator(_identity)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]
Seconds = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    """`[server]`: listeners, TLS and logging."""

    host: str = "127.0.0.1"
    port: Port = 8080
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_client_cert_required: bool = True
    ops_port: Port | None = None
    xfcc_trusted_proxies: list[IPvAnyNetwork] = []
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    limit_concurrency: Annotated[int, Field(ge=1)] | None = None
    # Idle HTTP keep-alive on every listener. Load balancers and mesh sidecars pool connections
    # and reuse them after up to their own idle timeout (60 s on most): closing first races
    # their reuse and the caller gets a reset, so this must be longer than theirs.
    keep_alive_seconds: PositiveSeconds = 75.0
    # Request limits, enforced before a request reaches the app (app.transport.limits, whose
    # defaults are the same). The floors leave room for the broker's own requests.
    max_target_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024  # path + query: else 414
    max_header_bytes: Annotated[int, Field(ge=4096)] = 64 * 1024  # all header fields: else 431
    max_headers: Annotated[int, Field(ge=16)] = 200  # header fields: else 431
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024  # API bodies: else 413
    health_details: bool = True  # false: /health leaves out per-client detail and error texts
    # The broker's origin as callers reach it (behind a load balancer or ingress that terminates
    # TLS): the RFC 8414 issuer. Unset: taken from each request's scheme and Host.
    public_url: PublicUrl | None = None

    @model_validator(mode="after")
    def _tls_pairs(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file (HTTPS)")
        if self.ops_port is not None and self.ops_port == self.port:
            raise ValueError("ops_port must differ from port")
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether the main listener serves HTTPS."""
        return self.tls_cert_file is not None


class StoreSettings(_Strict):
    """`[store]`: where tokens, locks and the budget live (see `app.store.topology`)."""

    redis_url: SecretStr | None = None  # may embed a password
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "tb"
    cluster: bool = False
    # Connections for commands, per instance (the change feed's subscription is one more); at
    # the bound a command waits up to pool_timeout_seconds, then fails as the store being
    # unavailable (counted, logged). See app.store.redis_pool.
    max_connections: Annotated[int, Field(ge=1)] = 64
    pool_timeout_seconds: PositiveSeconds = 1.0
    connect_timeout_seconds: PositiveSeconds = 1.0  # TCP (and TLS) connect, to Redis or Sentinel
    socket_timeout_seconds: PositiveSeconds = 1.0  # one command's answer
    # Keyring for the tokens cached in Redis (app/store/sealing.py); absent: per-client keys
    # derived from each client's credentials.
    encryption_keys_file: Path | None = None

    @field_validator("redis_url")
    @classmethod
    def _url_shape(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None:
            return None
        text = url.get_secret_value()
        scheme = urlsplit(text).scheme
        allowed = ("redis", "rediss", *SENTINEL_SCHEMES, "unix")
        if scheme not in allowed:
            raise ValueError(f"redis_url scheme must be one of {', '.join(allowed)}")
        if scheme in SENTINEL_SCHEMES:
            parse_sentinel_url(text)
        elif scheme != "unix" and not urlsplit(text).hostname:
            raise ValueError("redis_url needs a host")
        return url

    @field_validator("cluster")
    @classmethod
    def _cluster_seed(cls, cluster: bool, info: ValidationInfo) -> bool:
        if not cluster or "redis_url" not in info.data:
            return cluster  # a bad redis_url is reported on its own
        url: SecretStr | None = info.data["redis_url"]
        if url is None:
            raise ValueError("cluster = true needs redis_url (a seed node of the cluster)")
        check_cluster_url(url.get_secret_value())
        return cluster


class BudgetSettings(_Strict):
    """`[budget]`: the one fleet-wide upstream request budget."""

    limit: Annotated[int, Field(ge=1)] = 50
    window_seconds: PositiveSeconds = 60.0
    max_wait_seconds: Seconds = 30.0
    safety_margin_seconds: Seconds = 1.0
    count_token_requests: bool = False
    # local_share: while Redis is unreachable each instance grants limit // (the fleet size it
    # last saw) per window (app/budget/outage.py); fail_closed: 503 store_unavailable instead
    on_store_unavailable: Literal["fail_closed", "local_share"] = "local_share"
    expected_instances: Annotated[int, Field(ge=1)] = 3  # the fleet size before one was seen
    token_reserve: Annotated[int, Field(ge=0)] = 2  # with count_token_requests: kept for tokens


class ProxySettings(_Strict):
    """`[proxy]`: `/proxy/{client}/{path}` calls to the upstream API."""

    budget_wait_seconds: Seconds = 10.0  # how long a proxied call may wait for a permit
    timeout_seconds: PositiveSeconds = 30.0  # upstream read/write timeout
    connect_timeout_seconds: PositiveSeconds = 5.0
    max_body_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024


class ClientSettings(_Strict):
    """`[clients.NAME]`: one upstream OAuth client (one Paysera project)."""

    token_url: UpstreamUrl = (
        "https://api.paysera.com/auth/realms/Paysera/protocol/openid-connect/token"
    )
    api_base_url: UpstreamUrl = "https://api.paysera.com"
    client_id: Annotated[str, Field(min_length=1)]
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    client_auth: Literal["form", "basic"] = "form"
    refresh_buffer_seconds: Seconds = 300.0
    # A floor must exist: with none, callers reporting tokens could make the broker ask the
    # upstream in a tight loop (and rejected credentials would be retried as fast).
    min_forced_refresh_interval_seconds: Annotated[float, Field(ge=1)] = 10.0
    timeout_seconds: PositiveSeconds = 10.0

    @model_validator(mode="after")
    def _one_secret_source(self) -> Self:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("set client_secret or client_secret_file, not both")
        if self.client_secret is None and self.client_secret_file is None:
            raise ValueError("client_secret or client_secret_file is required")
        return self

    def secret(self) -> SecretStr:
        """The client secret, read from `client_secret_file` when that is how it is given."""
        if self.client_secret is not None:
            return self.client_secret
        assert self.client_secret_file is not None  # guaranteed by _one_secret_source
        return SecretStr(self.client_secret_file.read_text(encoding="utf-8").strip())


class CallerSettings(_Strict):
    """`[callers.NAME]`: one internal caller and the clients it may use."""

    api_key_sha256: Sha256Hex | None = None
    mtls_identities: list[MtlsIdentity] = []
    clients: Annotated[list[Name], Field(min_length=1)]
    budget_weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0

    @model_validator(mode="after")
    def _has_credential(self) -> Self:
        if self.api_key_sha256 is None and not self.mtls_identities:
            raise ValueError("needs api_key_sha256 or mtls_identities (or both)")
        return self


def _collector_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL of an OTLP collector")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials in the URL")
    return value


class TracingSettings(_Strict):
    """`[tracing]`: OpenTelemetry traces over OTLP; off while `otlp_endpoint` is unset."""

    otlp_endpoint: Annotated[str, AfterValidator(_collector_url)] | None = None
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    service_name: Annotated[str, Field(min_length=1, max_length=255)] = "paysera-token-broker"
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0  # of traces started here

    @property
    def enabled(self) -> bool:
        """Whether traces are recorded and exported."""
        return self.otlp_endpoint is not None


class Settings(BaseSettings):
    """The whole configuration; environment variables override the file's values."""

    model_config = SettingsConfigDict(
        env_prefix="TOKEN_BROKER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    budget: BudgetSettings = BudgetSettings()
    proxy: ProxySettings = ProxySettings()
    clients: dict[Name, ClientSettings]
    callers: dict[Name, CallerSettings] = {}
    tracing: TracingSettings = TracingSettings()

    @classmethod
    def settings_customise_sources(  # the signature is pydantic-settings'
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first (it wins), then the file's values passed as init arguments."""
        return (env_settings, init_settings)

    @field_validator("clients")
    @classmethod
    def _some_client(cls, clients: dict[str, ClientSettings]) -> dict[str, ClientSettings]:
        if not clients:
            raise ValueError("at least one [clients.NAME] table is required")
        return clients

    def reference_problems(self) -> list[tuple[str, str]]:
        """Problems that span sections: callers naming unknown clients, shared API keys."""
        problems = [
            (f"callers.{caller}.clients[{i}]", f"unknown client {client!r}")
            for caller, spec in self.callers.items()
            for i, client in enumerate(spec.clients)
            if client not in self.clients
        ]
        return problems + _duplicate_api_keys(self.callers)


def _duplicate_api_keys(callers: Mapping[str, CallerSettings]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    problems = []
    for name, spec in callers.items():
        if spec.api_key_sha256 is None:
            continue
        if spec.api_key_sha256 in seen:
            other = seen[spec.api_key_sha256]
            problems.append((f"callers.{name}.api_key_sha256", f"same key as callers.{other}"))
        seen[spec.api_key_sha256] = name
    return problems


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Key path and message of each error; the input value is left out (it may be a secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append((path, message))
    return problems


def _unparsable_env(exc: SettingsError) -> tuple[str, str]:
    """Key path and message for pydantic-settings' parse error (it names the field only)."""
    field = re.search(r'field "([^"]+)"', str(exc))
    section = field.group(1) if field else ""
    prefix = f"{CONFIG_ENV_VAR.removesuffix('CONFIG')}{section.upper()}__"
    cause = exc.__cause__  # only the position is quoted: the value may be a secret
    where = f" ({cause.msg} at column {cause.colno})" if isinstance(cause, JSONDecodeError) else ""
    return section, f"a {prefix}* variable is not valid JSON (lists and tables are){where}"


def _stray_env_vars(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """TOKEN_BROKER_ variables that name no configuration section (pydantic ignores them)."""
    prefix = Settings.model_config.get("env_prefix", "")
    sections = set(Settings.model_fields)
    problems = []
    for variable in sorted(environ):
        if not variable.upper().startswith(prefix) or variable.upper() == CONFIG_ENV_VAR:
            continue
        section = variable[len(prefix) :].split("__", 1)[0].lower()
        if section not in sections:
            problems.append((section, f"{variable} does not name a configuration key (a typo?)"))
    return problems


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([("", f"config file not found: {path}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"{path} is not valid TOML: {exc}")]) from None


def _secret_file_problem(key: str, path: Path) -> tuple[str, str] | None:
    try:
        if not path.read_text(encoding="utf-8").strip():
            return (key, "the file is empty")
    except OSError as exc:
        return (key, f"cannot read {path}: {exc.strerror}")
    return None


def _check_keyring(store: StoreSettings) -> list[tuple[str, str]]:
    """Problems of the keyring file, by line; never a key."""
    path = store.encryption_keys_file
    if path is None:
        return []
    key = "store.encryption_keys_file"
    try:
        parse_keyring(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [(key, f"cannot read {path}: {exc.strerror}")]
    except UnicodeDecodeError:
        return [(key, f"{path} is not UTF-8 text")]
    except KeyringError as exc:
        return [(key, problem) for problem in exc.problems]
    return []


def _tls_file_problems(files: Mapping[str, object]) -> list[tuple[str, str]]:
    return [
        (f"server.{key}", f"cannot read {path}")
        for key, path in files.items()
        if path is not None and not os.access(str(path), os.R_OK)
    ]


def _check_files(settings: Settings) -> list[tuple[str, str]]:
    """Secret and TLS files that cannot be read (or are empty)."""
    secrets = [
        _secret_file_problem(f"clients.{name}.client_secret_file", client.client_secret_file)
        for name, client in settings.clients.items()
        if client.client_secret_file is not None
    ]
    server = settings.server
    tls = {
        "tls_cert_file": server.tls_cert_file,
        "tls_key_file": server.tls_key_file,
        "tls_client_ca_file": server.tls_client_ca_file,
    }
    return [problem for problem in secrets if problem] + _tls_file_problems(tls)


_SECRET_FILE = "client_secret_file"


def _check_raw_files(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The file checks of `_check_files` on the file's own values, for a configuration that did
    not validate: one run of check-config then reports these problems too."""
    clients = data.get("clients")
    secrets = [
        _secret_file_problem(f"clients.{name}.client_secret_file", Path(client[_SECRET_FILE]))
        for name, client in (clients.items() if isinstance(clients, dict) else ())
        if isinstance(client, dict) and isinstance(client.get(_SECRET_FILE), str)
    ]
    server = data.get("server")
    tls = {
        key: value
        for key, value in (server.items() if isinstance(server, dict) else ())
        if key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file") and isinstance(value, str)
    }
    return [problem for problem in secrets if problem] + _tls_file_problems(tls)


def load_settings(path: Path | str | None = None) -> Settings:
    """Build the settings from `path` (or $TOKEN_BROKER_CONFIG) and the environment.

    Raises ConfigError listing every problem with its key path.
    """
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or None
    data = _read_toml(Path(path)) if path is not None else {}
    problems = _stray_env_vars(os.environ)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(problems + _problems(exc) + _check_raw_files(data)) from None
    except SettingsError as exc:  # an environment value that is not JSON where JSON is needed
        raise ConfigError([*problems, _unparsable_env(exc)]) from None
    problems += (
        settings.reference_problems() + _check_files(settings) + _check_keyring(settings.store)
    )
    if problems:
        raise ConfigError(problems)
    return settings
