"""Static checks of the Dockerfile: no Docker engine runs here, so what the image does is read
from the file, and its install commands are pinned to the ones .ci/wheel-smoke.sh executes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
SMOKE = REPO / ".ci" / "wheel-smoke.sh"
VALUES = REPO / "helm" / "paysera-token-broker" / "values.yaml"
UID = 10001

Instruction = tuple[str, str]


def _instructions(text: str) -> list[Instruction]:
    """(KEYWORD, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    pairs = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    """The Dockerfile's instructions."""
    return _instructions(DOCKERFILE.read_text())


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _args(instructions: list[Instruction], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def _install_block(text: str) -> str:
    """The commands between the `# >>> install` and `# <<< install` markers, normalised."""
    match = re.search(r"# >>> install[^\n]*\n(.*?)\n\s*# <<< install", text, re.S)
    assert match, "install markers missing"
    body = match.group(1).replace("\\\n", " ")
    body = re.sub(r"^\s*RUN\s", "", body)
    return " ".join(body.split())


def test_base_image_is_an_exact_slim_python_311(instructions: list[Instruction]) -> None:
    """Both stages use one pinned python:3.11.X slim image, never a floating tag."""
    (default,) = [
        a.split("=", 1)[1] for a in _args(instructions, "ARG") if a.startswith("PYTHON_IMAGE=")
    ]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", default)
    froms = _args(instructions, "FROM")
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_runtime_stage_only_copies_the_built_venv(instructions: list[Instruction]) -> None:
    """Multi-stage: the runtime stage takes the venv from the build stage and nothing else."""
    _, runtime = _stages(instructions)
    copies = [args for kw, args in runtime if kw == "COPY"]
    assert copies == ["--from=build /opt/token-broker /opt/token-broker"]
    assert not [args for kw, args in runtime if kw == "ADD"]


def test_dependencies_come_from_the_lock_file_with_hashes() -> None:
    """The install exports uv.lock (frozen, no dev), checks hashes, resolves nothing itself."""
    block = _install_block(DOCKERFILE.read_text())
    assert re.search(
        r"uv export( --quiet)? --frozen --no-dev --no-editable --no-emit-project", block
    )
    assert "--require-hashes --no-deps" in block
    assert block.count("--compile-bytecode") == 2
    assert 'python -m venv --without-pip "$VENV"' in block
    copies = _args(_instructions(DOCKERFILE.read_text()), "COPY")
    assert "pyproject.toml uv.lock README.md ./" in copies


def test_install_commands_are_the_ones_ci_runs() -> None:
    """The Dockerfile's install block is word for word the one .ci/wheel-smoke.sh executes."""
    assert _install_block(DOCKERFILE.read_text()) == _install_block(SMOKE.read_text())


def test_uv_is_the_version_the_makefile_pins(instructions: list[Instruction]) -> None:
    """The image builds with the same uv the Makefile installs."""
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M)
    assert pinned
    assert f"UV_VERSION={pinned.group(1)}" in _args(instructions, "ARG")


def test_runs_as_the_fixed_non_root_uid_the_chart_expects(instructions: list[Instruction]) -> None:
    """USER is numeric 10001:10001 (runAsNonRoot can verify it) and matches the chart."""
    _, runtime = _stages(instructions)
    users = [args for kw, args in runtime if kw == "USER"]
    assert users == [f"{UID}:{UID}"]
    values = yaml.safe_load(VALUES.read_text())
    assert values["podSecurityContext"]["runAsUser"] == UID
    assert values["containerSecurityContext"]["runAsUser"] == UID
    run = " ".join(args for kw, args in runtime if kw == "RUN")
    assert f"--uid {UID}" in run
    assert f"--gid {UID}" in run


def test_starts_token_broker_serve_in_exec_form(instructions: list[Instruction]) -> None:
    """ENTRYPOINT and CMD are JSON arrays: token-broker is PID 1 and gets SIGTERM directly."""
    (entrypoint,) = _args(instructions, "ENTRYPOINT")
    (cmd,) = _args(instructions, "CMD")
    assert json.loads(entrypoint) == ["/opt/token-broker/bin/token-broker"]
    assert json.loads(cmd) == ["serve", "--config", "/etc/token-broker/config.toml"]
    assert _args(instructions, "STOPSIGNAL") == ["SIGTERM"]


def test_runtime_environment_suits_a_read_only_root(instructions: list[Instruction]) -> None:
    """No bytecode writes at run time (compiled at build), the venv first on PATH."""
    _, runtime = _stages(instructions)
    env = " ".join(args for kw, args in runtime if kw == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/token-broker/bin:$PATH" in env
    run = " ".join(args for kw, args in runtime if kw == "RUN")
    assert "python -m compileall" in run


def test_dockerignore_admits_only_the_build_inputs() -> None:
    """The build context is the lock file, project metadata and app/, nothing else."""
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == {"pyproject.toml", "uv.lock", "README.md", "app"}
