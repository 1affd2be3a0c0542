"""Quiet by default: without a TTY, Ray's CLI logger would print every ssh command of ``ray up`` in full."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray.autoscaler._private.cli_logger import cli_logger

from skyward_ray.provider.command_runner import quiet_without_tty


@pytest.fixture
def logger_state() -> Iterator[None]:
    saved = (cli_logger.pretty, cli_logger._verbosity, cli_logger._verbosity_overriden)
    try:
        yield
    finally:
        cli_logger.pretty, cli_logger._verbosity, cli_logger._verbosity_overriden = saved


def test_without_a_tty_ray_is_as_quiet_as_on_a_terminal(logger_state: None) -> None:
    cli_logger.pretty, cli_logger._verbosity, cli_logger._verbosity_overriden = False, 0, False
    assert cli_logger.verbosity == 999  # Ray's own default without a TTY: every "Running `ssh ...`" line
    quiet_without_tty()
    assert cli_logger.verbosity == 0


def test_an_explicit_verbose_flag_still_wins(logger_state: None) -> None:
    cli_logger.pretty = False
    cli_logger.configure(verbosity=2)  # what `ray up -vv` does
    quiet_without_tty()
    assert cli_logger.verbosity == 2
