"""`store.encryption_keys_file`: `new-encryption-key`, and check-config/load_settings on it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from app.config import load_settings
from app.errors import ConfigError
from app.store.sealing import parse_keyring
from tests.conftest import EMULATOR_ID, EMULATOR_SECRET
from tests.support.processes import clean_env, run_cli
from tests.tomlfile import write_toml

MATERIAL = base64.b64encode(bytes(range(100, 132))).decode()
OTHER = base64.b64encode(bytes(range(1, 33))).decode()


def good_config() -> dict[str, Any]:
    """A valid configuration with one client and no caller."""
    client = {
        "token_url": "https://auth.example.com/token",
        "api_base_url": "https://auth.example.com",
        "client_id": EMULATOR_ID,
        "client_secret": EMULATOR_SECRET,
    }
    return {"clients": {"checkout": client}}


def config_with_keyring(tmp_path: Path, keyring_text: str | None) -> Path:
    """A good Redis config whose keyring file holds `keyring_text` (None: no such file)."""
    keys = tmp_path / "keys"
    if keyring_text is not None:
        keys.write_text(keyring_text)
    config: dict[str, Any] = good_config()
    config["store"] = {"redis_url": "redis://127.0.0.1:6379/0", "encryption_keys_file": str(keys)}
    return write_toml(tmp_path / "broker.toml", config)


def test_new_encryption_key_prints_a_usable_fresh_line() -> None:
    """Each run prints comment lines and one NAME:BASE64 line the keyring parser accepts, with
    a different key every time."""
    first, second = run_cli("new-encryption-key"), run_cli("new-encryption-key", "--name", "k2")
    assert first.returncode == 0 and second.returncode == 0
    lines = [line for line in first.stdout.splitlines() if not line.startswith("#")]
    (key,) = parse_keyring(first.stdout)
    (named,) = parse_keyring(second.stdout)
    assert len(lines) == 1 and len(key.material) == 32
    assert named.name == "k2" and named.material != key.material


def test_new_encryption_key_refuses_a_bad_name() -> None:
    """A reserved or malformed name is refused with exit 1 and nothing on stdout."""
    result = run_cli("new-encryption-key", "--name", "derived")
    assert result.returncode == 1 and result.stdout == "" and "--name" in result.stderr


def test_check_config_names_the_keyring_keys_but_never_shows_one(tmp_path: Path) -> None:
    """A good keyring is accepted; the summary names its keys and the encrypting one, and does
    not print key material."""
    path = config_with_keyring(tmp_path, f"# comment\nnew:{MATERIAL}\nold:{OTHER}\n")
    result = run_cli("check-config", "--config", str(path), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "keyring [new, old], encrypting with new" in result.stdout
    assert EMULATOR_SECRET not in result.stdout
    assert MATERIAL not in result.stdout + result.stderr
    assert OTHER not in result.stdout + result.stderr


def test_check_config_without_a_keyring_says_keys_are_derived(tmp_path: Path) -> None:
    """With Redis and no keyring, the summary says each client's key is derived."""
    config = good_config()
    config["store"] = {"redis_url": "redis://127.0.0.1:6379/0"}
    path = write_toml(tmp_path / "broker.toml", config)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0
    assert "keys derived from each client's credentials" in result.stdout


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "cannot read"),
        ("", "no key"),
        (f"good:{MATERIAL}\nbroken\n", "line 2: expected NAME:BASE64"),
        (f"short:{base64.b64encode(bytes(16)).decode()}\n", "line 1: the key must be 32 bytes"),
        (f"a:{MATERIAL}\na:{OTHER}\n", "line 2: key name 'a' already used on line 1"),
    ],
)
def test_a_bad_keyring_is_refused_naming_key_path_and_line(
    tmp_path: Path, text: str | None, fragment: str
) -> None:
    """load_settings refuses the file with `store.encryption_keys_file` and the problem; the
    CLI exits 1 without printing a key."""
    path = config_with_keyring(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert any(
        key == "store.encryption_keys_file" and fragment in message
        for key, message in caught.value.problems
    ), caught.value.problems
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert "store.encryption_keys_file" in result.stderr
    assert MATERIAL not in result.stderr and OTHER not in result.stderr
