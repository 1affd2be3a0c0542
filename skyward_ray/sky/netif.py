"""Find the network interface that carries a given IPv4 address on this machine (stdlib only, Linux).

NCCL and Gloo must be told the interface or they may pick the docker bridge or the public NIC instead of the overlay.
CUDA base images often lack ``ip``, so this reads the kernel directly: each interface's primary address by ioctl,
then the connected routes in ``/proc/net/route`` for secondary addresses.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

_SIOCGIFADDR = 0x8915
_ROUTE_TABLE = Path("/proc/net/route")


def _primary_ipv4(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(raw[20:24])


def _interfaces() -> list[str]:
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def _route_interface(ip: ipaddress.IPv4Address, table: str) -> str | None:
    """The interface of the most specific connected route (gateway 0) containing ``ip``."""
    best: tuple[int, str] | None = None
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, dest_hex, gateway_hex, mask_hex = fields[0], fields[1], fields[2], fields[7]
        if int(gateway_hex, 16) != 0:
            continue
        # The kernel prints these as 32-bit numbers in host byte order.
        dest = ipaddress.IPv4Address(struct.pack("=I", int(dest_hex, 16)))
        mask = ipaddress.IPv4Address(struct.pack("=I", int(mask_hex, 16)))
        prefix = bin(int(mask)).count("1")
        if prefix == 0:
            continue
        if ipaddress.IPv4Address(int(ip) & int(mask)) == dest and (best is None or prefix > best[0]):
            best = (prefix, iface)
    return best[1] if best else None


def interface_for_ip(ip: str) -> str | None:
    """The name of the interface holding ``ip`` here (``lo`` for 127.0.0.0/8), or ``None`` if none does."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return None
    names = _interfaces()
    if address.is_loopback:
        return next((n for n in names if _primary_ipv4(n) == "127.0.0.1"), "lo")
    for name in names:
        if _primary_ipv4(name) == ip:
            return name
    try:
        return _route_interface(address, _ROUTE_TABLE.read_text())
    except OSError:
        return None
