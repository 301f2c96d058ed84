"""The Redis adapter's Lua scripts, registered once, and its translation of Redis failures.

Every redis-py exception is translated into `StoreUnavailable` here (`translated`), so the core
only ever sees its own store error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from app.errors import StoreUnavailable
from app.store.redis_topology import CLIENT_ERRORS, AnyRedis

SCRIPT_NAMES = (
    "load",
    "save",
    "discard",
    "reject",
    "time",
    "acquire",
    "release",
    "budget_ask",
    "budget_leave",
    "budget_cooldown",
    "budget_usage",
    "heartbeat",
    "instances",
)


def lua(name: str) -> str:
    """The text of `app/store/lua/<name>.lua`."""
    return resources.files("app.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


@asynccontextmanager
async def translated(operation: str) -> AsyncIterator[None]:
    """Turn any Redis or socket failure into StoreUnavailable (the core's only store error)."""
    try:
        yield
    except CLIENT_ERRORS as exc:
        raise StoreUnavailable(
            f"store unavailable during {operation}: {type(exc).__name__}"
        ) from exc


class RedisScripts:
    """The scripts of `SCRIPT_NAMES`, registered on one client; a failed call is translated."""

    def __init__(self, redis: AnyRedis) -> None:
        self._scripts = {name: redis.register_script(lua(name)) for name in SCRIPT_NAMES}

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script `name` on `keys` with `args`."""
        async with translated(name):
            return await self._scripts[name](keys=keys, args=args)
