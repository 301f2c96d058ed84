"""The layering of app/: the core imports no adapter or framework, and packages form no cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import app

APP = Path(app.__file__).parent
CORE_PACKAGES = ("tokens", "budget")
FORBIDDEN = (
    "redis",
    "httpx",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic_settings",
    "app.config",
    "app.store",
    "app.api",
    "opentelemetry",
)
CORE_MAY_USE = ("app", "app.errors", "app.clock", "app.tokens", "app.budget")

# -- (a) what importing the core loads -----------------------------------------------------------

_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def core_modules() -> list[str]:
    """Every module of the core packages, by dotted name."""
    return sorted(
        module_name(path) for package in CORE_PACKAGES for path in (APP / package).glob("*.py")
    )


def modules_loaded_by(names: list[str]) -> set[str]:
    """The modules a fresh interpreter has loaded after importing `names`."""
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, *names],
        cwd=APP.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(probe.stdout))


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether module `name` is one of `prefixes` or inside one of them."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_importing_the_core_loads_no_adapter_framework_or_settings() -> None:
    """Importing every module of app/tokens and app/budget loads none of redis, httpx, the web
    framework, the settings, the store adapters or the API, and no app module outside the core,
    app.errors and app.clock."""
    names = core_modules()
    assert "app.tokens.service" in names
    assert "app.budget.service" in names
    loaded = modules_loaded_by(names)
    assert sorted(name for name in loaded if within(name, FORBIDDEN)) == []
    app_modules = {name for name in loaded if within(name, ("app",))}
    assert sorted(name for name in app_modules if not within(name, CORE_MAY_USE)) == []


def test_the_import_probe_sees_an_adapter_load_what_it_imports() -> None:
    """The probe itself reports forbidden modules: importing an adapter loads app.store."""
    loaded = modules_loaded_by(["app.store.memory"])
    assert "app.store.memory" in loaded
    assert within("app.store.memory", FORBIDDEN)


# -- (b) package-level import cycles -------------------------------------------------------------


def module_name(path: Path, root: Path = APP) -> str:
    """`app/tokens/l1.py` -> `app.tokens.l1`; `app/tokens/__init__.py` -> `app.tokens`."""
    parts = path.with_suffix("").relative_to(root.parent).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The package a module belongs to: its first two components (`app.tokens`, `app.main`)."""
    return ".".join(module.split(".")[:2])


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the nodes inside `if TYPE_CHECKING:` bodies (their `else` runs, so it counts)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def imported_modules(path: Path, root: Path) -> Iterator[str]:
    """The dotted names a module imports at run time (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_only(tree)
    here = module_name(path, root)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield base
            # `from app import errors` imports the module app.errors
            yield from (f"{base}.{alias.name}" for alias in node.names)


def package_graph(root: Path) -> dict[str, set[str]]:
    """Edges between the packages of `root` (a top-level package directory)."""
    top = root.name
    known = {module_name(path, root) for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        source = package_of(module_name(path, root))
        targets = graph.setdefault(source, set())
        for name in imported_modules(path, root):
            if within(name, (top,)) and name in known:
                target = package_of(name)
                if target != source:
                    targets.add(target)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The packages `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of packages that import one another, directly or through others."""
    reach = {node: reachable(graph, node) for node in graph}
    groups = {
        tuple(sorted(other for other in reach[node] if node in reach.get(other, ())))
        for node in graph
        if node in reach[node]
    }
    return sorted(list(group) for group in groups)


def test_no_package_level_import_cycle_in_app() -> None:
    """No two packages of app/ import each other, directly or through others (imports under
    `if TYPE_CHECKING:` aside)."""
    graph = package_graph(APP)
    assert "app.store" in graph.get("app.main", set())  # the graph sees real imports
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_planted_cycle_and_ignores_type_checking(tmp_path: Path) -> None:
    """In a throw-away package, a runtime cycle (also via relative imports) is reported, one
    closed only under TYPE_CHECKING is not."""
    files = {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "from pkg.b import thing\n",
        "pkg/b/__init__.py": "thing = 1\n",
        "pkg/b/inner.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg.a import x\nelse:\n    pass\n"
        ),
        "pkg/c/__init__.py": "from ..d import mod\n",
        "pkg/d/__init__.py": "",
        "pkg/d/mod.py": "import pkg.e.deep\n",
        "pkg/e/__init__.py": "",
        "pkg/e/deep.py": "from pkg import c\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cycles(package_graph(tmp_path / "pkg")) == [["pkg.c", "pkg.d", "pkg.e"]]
