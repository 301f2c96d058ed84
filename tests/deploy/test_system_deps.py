""".ci/system-deps.sh, which `make test` and .ci/run share: install what is missing, or say how.

Each test runs the real script with a PATH of its own: stand-in executables for the programs it
looks for (it only checks that they exist), and for `id` and `apt-get`, so the root branch can be
exercised without installing anything on this machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "system-deps.sh"
BASH = "/bin/bash"


def stub(directory: Path, name: str, body: str = "exit 0") -> None:
    """An executable shell script `name` in `directory`."""
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script with PATH = `path` only."""
    return subprocess.run(
        [BASH, str(SCRIPT), *args],
        env={"PATH": str(path), "LANG": "C"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def machine(tmp_path: Path, *present: str, uid: int = 1000) -> Path:
    """A bin directory holding `present` programs and an `id` answering `uid`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in present:
        stub(bin_dir, name)
    stub(bin_dir, "id", f"echo {uid}")
    return bin_dir


def test_missing_chromium_is_one_line_with_the_install_command(tmp_path: Path) -> None:
    """Without chromium (and not root) it prints one line naming it and the apt-get command."""
    bin_dir = machine(tmp_path, "redis-server", "npm")
    result = run(bin_dir)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        "missing: chromium (needed by make test); install with: sudo apt-get install -y chromium"
    ]


def test_every_missing_program_is_named_on_the_same_line(tmp_path: Path) -> None:
    """Several missing programs still make one line, with one command installing them all."""
    result = run(machine(tmp_path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.endswith("sudo apt-get install -y redis-server chromium npm")


def test_nothing_missing_is_silent_success(tmp_path: Path) -> None:
    """With every program present it exits 0 and prints nothing; chromium-browser counts too."""
    result = run(machine(tmp_path, "redis-server", "chromium-browser", "npm"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_root_installs_the_missing_packages_with_apt_get(tmp_path: Path) -> None:
    """As root with apt-get it runs apt-get update and install for exactly what is missing."""
    bin_dir = machine(tmp_path, "redis-server", uid=0)
    calls = tmp_path / "apt-get.calls"
    # The stand-in apt-get records its arguments and "installs" by creating the programs.
    stub(
        bin_dir,
        "apt-get",
        f'echo "$*" >> {calls}\n'
        f'case "$*" in *install*) for p in chromium npm; do '
        f'printf "#!/bin/sh\\n" > {bin_dir}/$p; /bin/chmod 755 {bin_dir}/$p; done;; esac',
    )
    result = run(bin_dir)
    assert result.returncode == 0, result.stderr
    assert "installing chromium npm" in result.stdout
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq chromium npm"]


def test_root_whose_install_fails_still_says_what_is_missing(tmp_path: Path) -> None:
    """If apt-get ran but the program is still absent, the one line still names it."""
    bin_dir = machine(tmp_path, "redis-server", "npm", uid=0)
    stub(bin_dir, "apt-get")  # succeeds, installs nothing
    result = run(bin_dir)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("missing: chromium ")


def test_check_mode_never_installs(tmp_path: Path) -> None:
    """`--check` as root with apt-get present only reports."""
    bin_dir = machine(tmp_path, "redis-server", "npm", uid=0)
    calls = tmp_path / "apt-get.calls"
    stub(bin_dir, "apt-get", f'echo "$*" >> {calls}')
    result = run(bin_dir, "--check")
    assert result.returncode == 1
    assert not calls.exists()
    assert "chromium" in result.stderr


PROMTOOL_SCRIPT = SCRIPT.parent / "promtool.sh"


def run_promtool_script(path: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    """.ci/promtool.sh with PATH = `path` only."""
    return subprocess.run(
        [BASH, str(PROMTOOL_SCRIPT), "2.42.0+ds-5+deb12u1", str(dest)],
        env={"PATH": str(path), "LANG": "C"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_promtool_on_path_is_used_as_it_is(tmp_path: Path) -> None:
    """A promtool already on PATH is kept: nothing is downloaded, nothing written."""
    bin_dir = machine(tmp_path, "promtool")
    dest = tmp_path / "tools" / "promtool"
    result = run_promtool_script(bin_dir, dest)
    assert result.returncode == 0
    assert result.stdout == f"promtool: using {bin_dir / 'promtool'}\n"
    assert not dest.exists()


def test_promtool_without_debian_tools_says_so_in_one_line(tmp_path: Path) -> None:
    """Without promtool and without apt-get/dpkg the script fails with one line saying why."""
    result = run_promtool_script(machine(tmp_path), tmp_path / "promtool")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "promtool is missing" in line and "apt-get" in line
