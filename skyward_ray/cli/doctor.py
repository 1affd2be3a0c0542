"""``skyward-ray doctor``: does this Vast account, key and marketplace behave as ``ray up`` assumes? Free checks
first (no rental); ``--rent`` rents one cheap instance for a few minutes, ``--overlay`` two on one physical cluster
joined by an overlay, and destroys everything it rented whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from skyward_ray.doctor.free import ClusterShape, FreeChecks, default_shape, find_default_config, key_source
from skyward_ray.doctor.rent import DOCTOR_DISK_GB, MIN_DISK_GB, Rental, RentSettings
from skyward_ray.doctor.report import EXIT_INTERRUPTED, Report, Status
from skyward_ray.doctor.wire import WireLog
from skyward_ray.errors import ConfigError
from skyward_ray.placement.filters import DEFAULT_SEARCH_LIMIT
from skyward_ray.provider.bootstrap import DEFAULT_SSH_KEY
from skyward_ray.provider.config import validate_cluster_config
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import resolve_api_key
from skyward_ray.vast.errors import CredentialsError

DEFAULT_MAX_DPH = 0.50
DEFAULT_SEARCH = min(64, DEFAULT_SEARCH_LIMIT)
# Vast documents no limit for the unpaged GET /api/v0/instances/, so the client does not pace it; the doctor lists it
# and then the provider's first refresh lists it again at once. The paged list it replaced allows one call per second:
# keep that pace, so the doctor's own calls never draw a 429 from a server that limits both alike.
UNPAGED_LIST_PACE = {"GET /api/v0/instances/": 1.0}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the Vast account, key and market against what ray up assumes (free; --rent costs cents)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--config", type=Path, help="cluster YAML (default: the first cluster_configs/vast*.yaml "
                        "here, else a 1 x RTX 4090 request, spot if available)")
    parser.add_argument("--rent", action="store_true", help="also rent one cheap on-demand instance and check it")
    parser.add_argument("--overlay", action="store_true",
                        help="rent two instances on one physical cluster with an overlay and check they reach "
                        "each other (implies --rent)")
    parser.add_argument("--yes", action="store_true", help="rent without asking")
    parser.add_argument("--max-dph", type=float, default=DEFAULT_MAX_DPH, metavar="USD",
                        help=f"highest $/h per rented instance (default {DEFAULT_MAX_DPH:.2f})")
    parser.add_argument("--disk-gb", type=int, default=DOCTOR_DISK_GB, metavar="GB",
                        help=f"disk of each rented instance (default {DOCTOR_DISK_GB}; a large docker_image may need "
                        "more)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON (no secrets)")
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the JSON report to FILE")
    parser.add_argument("--ssh-key", metavar="PATH", help="private key for the rented node (default: the config's "
                        f"auth.ssh_private_key, else {DEFAULT_SSH_KEY})")
    parser.add_argument("--limit", type=int, default=DEFAULT_SEARCH, help=f"offers per search (default "
                        f"{DEFAULT_SEARCH})")
    parser.add_argument("--loading-timeout", type=float, default=900.0, metavar="S",
                        help="seconds for a rental to reach running (default 900)")
    parser.add_argument("--ssh-timeout", type=float, default=600.0, metavar="S",
                        help="seconds for SSH to answer once running (default 600)")
    parser.add_argument("--overlay-timeout", type=float, default=120.0, metavar="S",
                        help="seconds for a new overlay to be listed with its subnet (default 120)")
    parser.add_argument("--api-deadline", type=float, default=60.0, metavar="S",
                        help="seconds one API call may spend on retries (default 60)")
    parser.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("max_dph", "loading_timeout", "ssh_timeout", "overlay_timeout", "api_deadline"):
        value = getattr(args, name)
        if not value > 0 or value != value:
            raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not allowed (use a number > 0)")
    if args.ssh_key is not None and not Path(args.ssh_key).expanduser().is_file():
        raise ConfigError(f"--ssh-key: {args.ssh_key!r} is not allowed (no such file; use a private key such as "
                          "~/.ssh/id_ed25519)")
    if args.disk_gb < MIN_DISK_GB:
        raise ConfigError(f"--disk-gb: {args.disk_gb!r} is not allowed (use {MIN_DISK_GB} or more, Vast's minimum)")
    if not 1 <= args.limit <= 1000:
        raise ConfigError(f"--limit: {args.limit!r} is not allowed (use 1 to 1000)")


def load_shape(path: Path | None) -> ClusterShape:
    """The cluster a config describes (validated as ray up validates it), or the default request."""
    if path is None:
        path = find_default_config()
        if path is None:
            return default_shape()
    if not path.is_file():
        raise ConfigError(f"--config: {str(path)!r} is not allowed (no such file; use a cluster YAML such as "
                          "cluster_configs/vast.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config: {str(path)!r} is not allowed (not readable YAML: "
                          f"{' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {str(path)!r} is not allowed (a cluster YAML is a mapping)")
    provider, shapes = validate_cluster_config(data)
    head_type = str(data["head_node_type"])
    auth = data.get("auth") if isinstance(data.get("auth"), dict) else {}
    return ClusterShape(str(path), provider.placement, provider, dict(data.get("provider") or {}), head_type, shapes,
                        dict(auth))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the run the way Ctrl-C does, so the same cleanup runs."""
    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous: Any = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        print(f"{question}\nnot asked: stdin is not a terminal (pass --yes to rent)", file=sys.stderr)
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    """Exit 0: ready (warnings allowed); 1: something ``ray up`` needs is wrong; 2: bad input, nothing rented; 130:
    interrupted, after destroying what was rented."""
    _check_args(args)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # Ray's per-command timers would split the rows
    shape = load_shape(args.config)
    source = key_source()
    try:
        api_key = resolve_api_key(None)
    except CredentialsError as exc:
        raise CredentialsError(f"no Vast API key: {exc}; nothing was checked or rented") from None
    quiet = args.json and args.report is None
    report = Report(out=sys.stderr if quiet else sys.stdout, secrets=[api_key])
    report.meta.update(config=shape.source, cluster=shape.describe())
    wire = WireLog(on_secret=report.add_secret)
    base_url = shape.provider.api_url if shape.provider is not None else None
    try:
        with _sigterm_interrupts(), VastClient(api_key=api_key, base_url=base_url, transport=wire,
                                               retry_deadline_s=args.api_deadline,
                                               min_interval_s=UNPAGED_LIST_PACE) as client:
            report.meta["api_url"] = client.base_url
            free = FreeChecks(report, client, wire, shape, search_limit=args.limit,
                              ssh_public_key=_public_key(shape, args.ssh_key), key_from=source or "the key files")
            try:
                result = free.run()
            except KeyboardInterrupt:
                report.interrupted = True
                result = None
            if (args.rent or args.overlay) and result is not None and not report.interrupted:
                if not result.key_ok:
                    report.add("rent", "an accepted key", "not tried: the key was not accepted", Status.SKIP)
                elif args.overlay and result.overlays_ok is False:
                    report.add("overlay: rent", "overlays available", "not tried: Vast refused the overlay list",
                               Status.FAIL)
                else:
                    settings = RentSettings(
                        max_dph=args.max_dph, overlay=args.overlay, yes=args.yes,
                        loading_timeout_s=args.loading_timeout, ssh_timeout_s=args.ssh_timeout,
                        overlay_timeout_s=args.overlay_timeout, ssh_private_key=args.ssh_key,
                        search_limit=args.limit, ask=_ask, disk_gb=args.disk_gb,
                    )
                    Rental(report, client, wire, shape, result, settings).run()
    except KeyboardInterrupt:
        report.interrupted = True
    _finish(report, args, quiet)
    return report.exit_code if not report.interrupted else EXIT_INTERRUPTED


def _public_key(shape: ClusterShape, ssh_key: str | None) -> str | None:
    """The public half of the key ray up would use, when it exists already (the free checks create nothing)."""
    private = Path(ssh_key or shape.auth.get("ssh_private_key") or DEFAULT_SSH_KEY).expanduser()
    public = Path(shape.auth.get("ssh_public_key") or f"{private}.pub").expanduser()
    try:
        return public.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _finish(report: Report, args: argparse.Namespace, quiet: bool) -> None:
    verdict = report.verdict()
    if args.report is not None:
        with args.report.open("w", encoding="utf-8") as handle:
            report.write_json(handle)
    if args.json and args.report is None:
        print(verdict, file=sys.stderr)
        report.write_json(sys.stdout)
    else:
        print(verdict)
    if report.destroyed:
        destroyed = ", ".join(str(i) for i in sorted(set(report.destroyed)))
        print(f"destroyed: {destroyed}", file=sys.stderr if quiet else sys.stdout)
