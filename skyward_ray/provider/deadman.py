"""The dead-man switch of a worker: destroy my own instance when my head has been unreachable for too long.

Started by the default worker start commands: ``python -m skyward_ray.provider.deadman --head $RAY_HEAD_IP:6379``.
A dead head must not leave workers billing forever; the worker destroys itself with the instance-scoped key Vast
gives every container (``CONTAINER_API_KEY``), so the account key is never on a worker."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from skyward_ray.provider.overlay_ip import container_env

log = logging.getLogger("skyward_ray.deadman")

INSTANCE_TIMEOUT_ENV = "SKYWARD_INSTANCE_TIMEOUT"
API_URL_ENV = "SKYWARD_VAST_URL"
PIDFILE = Path("/tmp/skyward-deadman.pid")
MODULE = "skyward_ray.provider.deadman"


def reachable(address: tuple[str, int], timeout_s: float = 5.0) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--head {text!r}: use HOST:PORT, e.g. 10.8.0.1:6379")
    return host, int(port)


def watch(
    probe: Callable[[], bool],
    timeout_s: float,
    on_expiry: Callable[[], bool],
    *,
    interval_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Probe until ``timeout_s`` passes without one success, then call ``on_expiry`` (retried until it returns
    True). Returns True when it fired, False when stopped."""
    last_ok = clock()
    while not should_stop():
        if probe():
            last_ok = clock()
        elif clock() - last_ok >= timeout_s:
            log.error("head unreachable for %.0f s: destroying this instance", clock() - last_ok)
            while not should_stop():
                if on_expiry():
                    return True
                sleep(interval_s)
            return False
        sleep(interval_s)
    return False


def destroy_self(api_url: str, instance_id: int, instance_key: str) -> bool:
    """``DELETE /instances/{me}/`` with the instance-scoped key; True once it is done or already gone."""
    from skyward_ray.vast.client import VastClient
    from skyward_ray.vast.errors import VastError

    try:
        with VastClient(api_key=instance_key, base_url=api_url, retry_deadline_s=30) as client:
            client.destroy_instance(instance_id)
        return True
    except VastError as exc:
        log.error("self-destroy failed (retrying): %s", exc)
        return False


def is_deadman(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether process ``pid`` runs this module (``python -m skyward_ray.provider.deadman`` or this file), read from
    its ``/proc/<pid>/cmdline``. False when it is gone or unreadable: never signal what we cannot identify."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    args = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
    for index, arg in enumerate(args):
        if arg == "-m" and args[index + 1 : index + 2] == [MODULE]:
            return True
        if arg == f"-m{MODULE}" or arg.endswith("/skyward_ray/provider/deadman.py"):
            return True
    return False


def _replace_previous(pidfile: Path) -> None:
    """End the previous watch recorded in ``pidfile`` (only if that PID is still one), then record ours."""
    with contextlib.suppress(OSError, ValueError):
        previous = int(pidfile.read_text().strip())
        if previous != os.getpid() and previous > 0:
            if is_deadman(previous):
                os.kill(previous, signal.SIGTERM)
            else:
                log.info("pidfile %s names PID %d, which is not a dead-man watch (any more): left alone", pidfile,
                         previous)
    with contextlib.suppress(OSError):
        pidfile.write_text(f"{os.getpid()}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyward_ray.provider.deadman", description=__doc__.split("\n")[0])
    parser.add_argument("--head", required=True, help="the head's GCS address, HOST:PORT")
    parser.add_argument("--timeout", type=float, default=None, help=f"seconds (default ${INSTANCE_TIMEOUT_ENV})")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between probes (10)")
    parser.add_argument("--pidfile", type=Path, default=PIDFILE, help=f"where the running copy's PID is ({PIDFILE})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s deadman %(levelname)s %(message)s")

    timeout = args.timeout if args.timeout is not None else float(container_env(INSTANCE_TIMEOUT_ENV) or 0)
    instance_id = container_env("CONTAINER_ID")
    instance_key = container_env("CONTAINER_API_KEY")
    api_url = container_env(API_URL_ENV)
    if timeout <= 0:
        log.info("instance_timeout is 0: the dead-man switch is off")
        return 0
    if not (instance_id and instance_id.isdigit() and instance_key and api_url):
        log.error("CONTAINER_ID, CONTAINER_API_KEY or %s missing: cannot self-destroy, switch off", API_URL_ENV)
        return 1
    head = parse_address(args.head)
    _replace_previous(args.pidfile)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    log.info("watching head %s:%d; self-destroy after %.0f s without it", *head, timeout)
    fired = watch(lambda: reachable(head), timeout, lambda: destroy_self(api_url, int(instance_id), instance_key),
                  interval_s=args.interval, should_stop=lambda: stopping)
    return 0 if fired or stopping else 1


if __name__ == "__main__":
    sys.exit(main())
