"""Write small configuration dicts as TOML files (the stdlib reads TOML but does not write it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(key: str) -> str:
    return key if key.isidentifier() else json.dumps(key)


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if path and (scalars or not tables):
        lines.append(f"[{'.'.join(_key(part) for part in path)}]")
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
    for key, sub in tables.items():
        _table(lines, (*path, key), sub)


def dump_toml(data: Mapping[str, Any]) -> str:
    """`data` (nested dicts of str/int/float/bool/list) as TOML text."""
    lines: list[str] = []
    _table(lines, (), data)
    return "\n".join(lines) + "\n"


def write_toml(path: Path, data: Mapping[str, Any]) -> Path:
    """Write `data` to `path` as TOML and return `path`."""
    path.write_text(dump_toml(data), encoding="utf-8")
    return path
