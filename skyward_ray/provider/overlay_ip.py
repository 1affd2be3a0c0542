"""Print this node's overlay address and interface, so Ray and NCCL/Gloo run on the overlay.

Run on a node by the default start commands (``python -m skyward_ray.provider.overlay_ip --export``). The subnet comes
from ``--subnet`` or ``SKYWARD_OVERLAY_SUBNET``; without one nothing is printed, and with one but no address inside it
after ``--wait`` seconds it exits 1 (Ray on the wrong address would split the cluster). Standard library only."""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import shlex
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

SUBNET_ENV = "SKYWARD_OVERLAY_SUBNET"
NODE_IP_ENV = "SKYWARD_NODE_IP"
IFNAME_ENV = "SKYWARD_NET_IFNAME"
# Collective libraries pick their interface from these; set for the raylet, so every worker process inherits them.
SOCKET_IFNAME_ENVS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def container_env(name: str, *, proc_environ: str = "/proc/1/environ") -> str | None:
    """An environment variable of this session, else of the container's PID 1 (Vast's ``-e`` env lives there)."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        with open(proc_environ, "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace") or None
    return None


def interface_addresses() -> list[tuple[str, ipaddress.IPv4Interface]]:
    """Every IPv4 address of this host as ``(interface, address/prefix)``, read with ioctls (no ``ip`` binary)."""
    found: list[tuple[str, ipaddress.IPv4Interface]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24])
                netmask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24])
            except OSError:
                continue  # no IPv4 address on this interface
            found.append((name, ipaddress.IPv4Interface(f"{address}/{netmask}")))
    return found


def find_overlay_address(
    subnet: str, addresses: Sequence[tuple[str, ipaddress.IPv4Interface]]
) -> tuple[str, str] | None:
    """``(address, interface)`` of the first address inside ``subnet``."""
    network = ipaddress.ip_network(subnet, strict=False)
    for name, iface in addresses:
        if iface.ip in network:
            return str(iface.ip), name
    return None


def wait_for_overlay_address(
    subnet: str,
    wait_s: float,
    *,
    read: Callable[[], list[tuple[str, ipaddress.IPv4Interface]]] = interface_addresses,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll_s: float = 0.5,
) -> tuple[str, str] | None:
    """Poll until an address in ``subnet`` shows up (the overlay interface may come up after the container)."""
    deadline = clock() + wait_s
    while True:
        found = find_overlay_address(subnet, read())
        if found or clock() >= deadline:
            return found
        sleep(poll_s)


def export_lines(address: str, interface: str, environ: dict[str, str] | None = None) -> list[str]:
    """Shell lines for ``eval``; an interface the user already chose for NCCL/Gloo is kept."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    lines = [f"export {NODE_IP_ENV}={shlex.quote(address)}", f"export {IFNAME_ENV}={shlex.quote(interface)}"]
    for name in SOCKET_IFNAME_ENVS:
        if not environ.get(name):
            lines.append(f"export {name}={shlex.quote(interface)}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyward_ray.provider.overlay_ip",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--subnet", help=f"the overlay's internal_subnet (default: ${SUBNET_ENV})")
    parser.add_argument("--export", action="store_true", help="print shell export lines for eval")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the overlay address (60)")
    args = parser.parse_args(argv)

    subnet = args.subnet or container_env(SUBNET_ENV)
    if not subnet:
        return 0  # not on an overlay: Ray chooses its own address
    try:
        ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        print(f"overlay_ip: {SUBNET_ENV}={subnet!r} is not an IPv4 network (expected e.g. 10.8.0.0/24)",
              file=sys.stderr)
        return 2
    found = wait_for_overlay_address(subnet, max(args.wait, 0.0))
    if found is None:
        seen = ", ".join(f"{name}={iface}" for name, iface in interface_addresses()) or "none"
        print(f"overlay_ip: no interface has an address in the overlay subnet {subnet} after {args.wait:g} s "
              f"(addresses: {seen})", file=sys.stderr)
        return 1
    address, interface = found
    print("\n".join(export_lines(address, interface)) if args.export else f"{address} {interface}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
