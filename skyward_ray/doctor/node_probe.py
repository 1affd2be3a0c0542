"""What a rented node says about itself (hostname, IPv4 interfaces, whether ``CONTAINER_API_KEY`` is set, never its
value) as one ``DOCTOR-JSON {...}`` line; standard library only, since it is piped to the node's Python over SSH
before anything else is known to work there. ``--peer-addr``: does a peer answer on 22; ``--scope``/``--peer-id``:
the instance key must be refused account-wide and for other instances; ``--destroy-self``: it destroys its own.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request

MARK = "DOCTOR-JSON "
API_URL_ENV = "SKYWARD_VAST_URL"
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def container_env(name: str) -> str | None:
    """This session's variable, else the container's PID 1's (Vast's ``-e`` env lives there)."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        with open("/proc/1/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace") or None
    return None


def interfaces() -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24])
                netmask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24])
            except OSError:
                continue
            prefix = sum(bin(int(part)).count("1") for part in netmask.split("."))
            found.append({"name": name, "address": address, "prefix": prefix})
    return found


def call(api: str, method: str, path: str, key: str) -> int | str:
    """The HTTP status of one call with the instance key (or the failure's kind)."""
    data = None if method == "GET" else b"{}"
    request = urllib.request.Request(api.rstrip("/") + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except Exception as exc:  # any failure is an observation here
        return type(exc).__name__


def tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer-addr")
    parser.add_argument("--peer-id", type=int)
    parser.add_argument("--scope", action="store_true")
    parser.add_argument("--destroy-self", action="store_true")
    parser.add_argument("--api")
    args = parser.parse_args(argv)
    key = container_env("CONTAINER_API_KEY")
    own = container_env("CONTAINER_ID")
    api = args.api or container_env(API_URL_ENV)
    out: dict[str, object] = {
        "hostname": socket.gethostname(),
        "interfaces": interfaces(),
        "container_id": own,
        "container_api_key_present": bool(key),
        "vast_port_vars": sorted(k for k in os.environ if k.startswith(("VAST_TCP_PORT_", "VAST_UDP_PORT_"))),
        "api_url_known": bool(api),
    }
    if args.peer_addr:
        out["peer_tcp_22"] = tcp_open(args.peer_addr, 22)
    if args.scope and key and api:
        out["scope_account_call"] = call(api, "GET", "/api/v0/users/current/", key)
        if args.peer_id:
            out["scope_destroy_peer"] = call(api, "DELETE", f"/api/v0/instances/{args.peer_id}/", key)
    if args.destroy_self and key and api and own:
        # Detached and a moment later: destroying the instance ends this SSH session.
        code = (f"import time,urllib.request as u;time.sleep(1);u.urlopen(u.Request({api.rstrip('/')!r}+"
                f"'/api/v0/instances/{own}/',data=b'{{}}',method='DELETE',headers={{'Authorization':'Bearer '+"
                "__import__('os').environ['K'],'Content-Type':'application/json'}),timeout=15)")
        subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "K": key}, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out["destroy_self_sent"] = True
    print(MARK + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
