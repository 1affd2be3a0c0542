"""The console turns a SkywardError into one line on stderr with exit 2, and never shows a traceback for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from skyward_ray import cli
from skyward_ray.errors import ConfigError


def test_user_error_is_one_line_without_traceback(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def explode(_args: object) -> int:
        raise ConfigError("geolocation='MARS' is not a region; allowed: US, EU, ...")

    parser = cli.build_parser()
    args = parser.parse_args(["demo"])
    monkeypatch.setattr(cli, "build_parser", lambda: _FixedParser(args, explode))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "skyward-ray: error: geolocation='MARS' is not a region; allowed: US, EU, ..."
    assert "Traceback" not in err


class _FixedParser:
    def __init__(self, args: object, func: object) -> None:
        self._args = args
        self._func = func

    def parse_args(self, _argv: object) -> object:
        self._args.func = self._func  # type: ignore[attr-defined]
        return self._args


def test_console_lists_every_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "skyward_ray.cli", "--help"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    for name in ("emulator", "offers", "validate", "demo"):
        assert name in out


def test_unknown_flag_is_an_argparse_error_not_a_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "skyward_ray.cli", "demo", "--no-such-flag"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--no-such-flag" in proc.stderr
