"""The ``skyward-ray`` console.

Each subcommand lives in its own module with a ``register(subparsers)`` function; this module only wires them and
turns :class:`~skyward_ray.errors.SkywardError` into one line on stderr and exit code 2, with no traceback. Ctrl-C
(after whatever cleanup the command does on its way out) is one line and exit code 130, the shell's 128 + SIGINT.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from skyward_ray.errors import SkywardError

# Subcommand modules, in help order. Each defines ``register(subparsers) -> None`` and sets ``func`` on its parser.
_COMMAND_MODULES = (
    "skyward_ray.cli.emulator",
    "skyward_ray.cli.offers",
    "skyward_ray.cli.status",
    "skyward_ray.cli.validate",
    "skyward_ray.cli.demo",
    "skyward_ray.cli.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skyward-ray", description="Ray clusters on Vast.ai, and a local Vast emulator."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            return int(args.func(args) or 0)
        except SkywardError as exc:
            print(f"skyward-ray: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"skyward-ray: interrupted (exit {EXIT_INTERRUPTED})", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
