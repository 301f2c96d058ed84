"""The emulator's settings: defaults, EMULATOR_* variables, flags."""

from __future__ import annotations

import argparse

import pytest

from app.emulator import EmulatorSettings, add_emulator_arguments, settings_from_args


def test_from_env_reads_every_variable() -> None:
    """EMULATOR_* variables set every setting; empty ones fall back to the defaults."""
    settings = EmulatorSettings.from_env(
        {
            "EMULATOR_CLIENTS": "a:one, b:two:with:colons",
            "EMULATOR_TOKEN_LIFETIME": "90.5",
            "EMULATOR_TOKEN_LATENCY": "0.25",
            "EMULATOR_FAILURE_MODE": "hang",
            "EMULATOR_RATE_LIMIT": "7",
            "EMULATOR_RATE_WINDOW": "",
        }
    )
    assert settings.clients == {"a": "one", "b": "two:with:colons"}
    assert (settings.token_lifetime, settings.token_latency) == (90.5, 0.25)
    assert (settings.failure_mode, settings.rate_limit, settings.rate_window) == ("hang", 7, 60.0)
    assert EmulatorSettings.from_env({}) == EmulatorSettings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EMULATOR_CLIENTS", "just-a-s3cret"),
        ("EMULATOR_CLIENTS", "a:s3cret,b:"),
        ("EMULATOR_TOKEN_LIFETIME", "0"),
        ("EMULATOR_TOKEN_LATENCY", "-1"),
        ("EMULATOR_FAILURE_MODE", "explode"),
        ("EMULATOR_RATE_LIMIT", "2.5"),
        ("EMULATOR_RATE_WINDOW", "nan"),
    ],
)
def test_from_env_error_names_the_variable(variable: str, value: str) -> None:
    """An invalid EMULATOR_* value raises ValueError naming the variable, never the secret."""
    with pytest.raises(ValueError, match=variable) as caught:
        EmulatorSettings.from_env({variable: value})
    assert "s3cret" not in str(caught.value)


def test_settings_repr_hides_secrets() -> None:
    """The settings' repr, which may end up in a log, shows no client secret."""
    assert "demo-secret" not in repr(EmulatorSettings())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="token-broker emulator")
    add_emulator_arguments(parser)
    return parser


def test_flags_override_env_which_overrides_defaults() -> None:
    """settings_from_args takes flags first, then EMULATOR_* variables, then the defaults."""
    args = _parser().parse_args(["--token-lifetime", "5", "--failure-mode", "html"])
    env = {"EMULATOR_TOKEN_LIFETIME": "100", "EMULATOR_RATE_LIMIT": "7"}
    settings = settings_from_args(args, env)
    assert (settings.token_lifetime, settings.failure_mode) == (5.0, "html")
    assert settings.rate_limit == 7
    assert (settings.rate_window, settings.clients) == (60.0, {"demo-client": "demo-secret"})


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--token-lifetime", "-3"], "--token-lifetime"), (["--clients", "s3cret"], "--clients")],
)
def test_bad_flag_is_a_usage_error_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid flag value exits with a usage error that names the flag and hides secrets."""
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert flag in err
    assert "s3cret" not in err
