"""``skyward-ray emulator serve|clean``: the local Vast marketplace.

``serve`` prints ONE JSON line ``{"url", "api_key", "admin_url", "rate_limits"}`` on stdout once it listens (scripts
wait for it), then serves until SIGINT or SIGTERM and shuts down cleanly (every emulated instance destroyed, the runtime
closed). ``--rate-limits documented|off|x<scale>`` switches Vast's documented rate limits.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from skyward_ray.emulator.faults import DEFAULT_RATE_LIMITS, parse_rate_limits
from skyward_ray.emulator.scenarios import SCENARIOS
from skyward_ray.errors import SkywardError

_RUNTIMES = ("none", "netns")
_Number = TypeVar("_Number", int, float)


def _in_range(text: str, cast: Callable[[str], _Number], low: _Number, high: _Number, *, not_a: str,
              allowed: str) -> _Number:
    """``text`` as a number from ``low`` to ``high``, else an argparse error naming the value."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {not_a}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {allowed}")
    return value


def _port(text: str) -> int:
    allowed = "0 (a free port) to 65535"
    return _in_range(text, int, 0, 65535, not_a=f"an integer; allowed: {allowed}", allowed=allowed)


def _seconds(text: str) -> float:
    return _in_range(text, float, 0.0, 3600.0, not_a="a number of seconds", allowed="0 to 3600 seconds")


def _rate_limits(text: str) -> str:
    try:
        parse_rate_limits(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("rate_limits: ")) from None
    return text.strip().lower()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("emulator", help="run the local Vast.ai marketplace emulator",
                                   description="A local, wire-compatible Vast.ai marketplace (no account needed).")
    commands = parser.add_subparsers(dest="emulator_command", required=True)
    serve = commands.add_parser("serve", help="serve the Vast API until SIGINT/SIGTERM",
                                description="Serve the Vast REST API; prints one JSON line with url and api_key.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0, help="port to listen on; 0 picks a free one (default)")
    serve.add_argument("--seed", type=int, default=0, help="market generator seed (default 0)")
    serve.add_argument("--scenario", choices=SCENARIOS, default="default", help="market to generate")
    serve.add_argument("--api-key", default=None, help="the renter's API key (default: a random one, printed)")
    serve.add_argument("--boot-delay", type=_seconds, default=3.0,
                       help="seconds from rental to running (default 3)")
    serve.add_argument("--runtime", choices=_RUNTIMES, default="none",
                       help="none: instances are records; netns: namespaces with sshd (Linux, root)")
    serve.add_argument("--admin-key", default=None, help="require 'Bearer KEY' on /_emulator/ (default: open)")
    serve.add_argument("--rate-limits", type=_rate_limits, default=DEFAULT_RATE_LIMITS, metavar="MODE",
                       help="Vast's documented rate limits: documented (per endpoint and key+address intervals, the "
                            "create penalty, 10 searches a minute per address, 429s without Retry-After), off, or "
                            f"x<scale> to scale every interval and window, e.g. x0.1 (default {DEFAULT_RATE_LIMITS})")
    serve.add_argument("--no-overlays", action="store_true",
                       help="answer every /api/v0/overlay/ call as an account without overlay networks would (403)")
    serve.set_defaults(func=serve_command)
    clean = commands.add_parser("clean", help="remove namespaces, bridges and files a netns emulator left behind")
    clean.set_defaults(func=clean_command)


def _make_runtime(name: str) -> Any:
    if name == "none":
        return None
    from skyward_ray.emulator.netns import NetnsRuntime  # only --runtime netns needs it

    try:
        return NetnsRuntime()
    except SkywardError:
        raise
    except (OSError, RuntimeError) as exc:
        raise SkywardError(f"--runtime netns: cannot set up the namespace runtime: {exc}") from None


def serve_command(args: argparse.Namespace) -> int:
    from skyward_ray.emulator.server import EmulatorServer

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = _make_runtime(args.runtime)
    try:
        server = EmulatorServer(scenario=args.scenario, seed=args.seed, api_key=args.api_key,
                                boot_delay_s=args.boot_delay, runtime=runtime, host=args.host, port=args.port,
                                admin_key=args.admin_key, rate_limits=args.rate_limits,
                                overlays_available=False if args.no_overlays else None)
    except ValueError as exc:
        if runtime is not None:
            runtime.close()
        raise SkywardError(str(exc)) from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as exc:
            raise SkywardError(f"--host/--port: cannot listen on {args.host}:{args.port}: "
                               f"{exc.strerror or exc}") from None
        print(json.dumps(server.ready_line()), flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def clean_command(args: argparse.Namespace) -> int:
    from skyward_ray.emulator.netns import clean_leftovers

    removed = clean_leftovers()
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} leftover(s) removed")
    return 0
