"""`token-broker`: serve, check-config, new-api-key, new-encryption-key, emulator, demo."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from app.auth.callers import hash_api_key, new_api_key
from app.config import CONFIG_ENV_VAR, ServerSettings, Settings, load_settings
from app.errors import ConfigError


def _config_path(args: argparse.Namespace) -> Path | None:
    return Path(args.config) if args.config else None


def _load(args: argparse.Namespace) -> Settings:
    settings = load_settings(_config_path(args))
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:  # validated like the file's values (port range, ops_port != port)
        try:
            server = ServerSettings.model_validate(settings.server.model_dump() | overrides)
        except ValidationError as exc:
            raise ConfigError(
                [(f"server.{'.'.join(map(str, e['loc']))}", e["msg"]) for e in exc.errors()]
            ) from None
        settings = settings.model_copy(update={"server": server})
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the broker."""
    from app.main import create_app
    from app.observability.logs import configure_logging
    from app.transport.server import run

    settings = _load(args)
    configure_logging(settings.server.log_level)
    run(settings, create_app(settings))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration; print each problem with its key path."""
    settings = load_settings(_config_path(args))
    store = "redis" if settings.store.redis_url is not None else "memory (one instance only)"
    print(  # noqa: T201 - CLI output
        f"ok: {len(settings.clients)} client(s), {len(settings.callers)} caller(s), store {store}"
        f"; {_tokens_at_rest(settings)}"
    )
    return 0


def _tokens_at_rest(settings: Settings) -> str:
    """How cached tokens are kept, naming keys but never showing one."""
    if settings.store.redis_url is None:
        return "tokens at rest: in this process's memory only"
    from app.store.sealing import parse_keyring

    path = settings.store.encryption_keys_file
    if path is None:
        return "tokens at rest: AES-256-GCM, keys derived from each client's credentials"
    keys = parse_keyring(path.read_text(encoding="utf-8"))  # validated by load_settings
    names = ", ".join(key.name for key in keys)
    return f"tokens at rest: AES-256-GCM, keyring [{names}], encrypting with {keys[0].name}"


def cmd_new_encryption_key(args: argparse.Namespace) -> int:
    """Print a fresh keyring line for `store.encryption_keys_file`."""
    from app.store.sealing import new_key_line

    name = args.name or f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(2)}"
    try:
        line = new_key_line(name)
    except ValueError as exc:
        print(f"token-broker: --name: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    print("# A new key for store.encryption_keys_file (NAME:BASE64, 256 bits). Put the line")  # noqa: T201
    print("# first to encrypt with it; keep the older lines, which still decrypt, until every")  # noqa: T201
    print("# instance runs with the new first key and one token lifetime (1 h) has passed.")  # noqa: T201
    print(line)  # noqa: T201
    return 0


def cmd_new_api_key(_args: argparse.Namespace) -> int:
    """Print a fresh API key and the config line holding its hash."""
    key = new_api_key()
    print(f"API key (give it to the caller; it is not stored anywhere): {key}")  # noqa: T201
    print("Config line for the caller's [callers.NAME] table:")  # noqa: T201
    print(f'api_key_sha256 = "{hash_api_key(key)}"')  # noqa: T201
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    """Run the Paysera emulator."""
    from app.emulator import serve_emulator, settings_from_args

    serve_emulator(settings_from_args(args), args.host, args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the emulator and a broker on the in-memory store; print a working curl line."""
    from app.demo import PortUnavailable, run_demo

    try:
        run_demo(host=args.host, port=args.port, emulator_port=args.emulator_port)
    except PortUnavailable as exc:
        print(f"token-broker demo: {exc}", file=sys.stderr)  # noqa: T201 - one line, no traceback
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from app.emulator import add_emulator_arguments

    parser = argparse.ArgumentParser(prog="token-broker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument("--config", help=f"TOML file (default: ${CONFIG_ENV_VAR})")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("--config", help=f"TOML file (default: ${CONFIG_ENV_VAR})")
    check.set_defaults(func=cmd_check_config)

    key = commands.add_parser("new-api-key", help="mint an API key and its config line")
    key.set_defaults(func=cmd_new_api_key)

    enc = commands.add_parser(
        "new-encryption-key", help="mint a key line for store.encryption_keys_file"
    )
    enc.add_argument("--name", help="the key's name (default: k<date>-<random>)")
    enc.set_defaults(func=cmd_new_encryption_key)

    emulator = commands.add_parser("emulator", help="run the local Paysera API stand-in")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8081)
    add_emulator_arguments(emulator)
    emulator.set_defaults(func=cmd_emulator)

    demo = commands.add_parser("demo", help="emulator + broker, ready for curl (make run)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--emulator-port", type=int, default=8081)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `token-broker` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"token-broker: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return code
