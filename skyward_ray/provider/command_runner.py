"""An SSH command runner for Vast's mapped SSH ports.

Ray's ``SSHCommandRunner`` always connects to port 22 of ``internal_ip``/``external_ip``, and ``auth`` has no port
key. A Vast instance's sshd is reached at a *mapped* port: directly at ``public_ipaddr`` + the host port of
``22/tcp``, or through Vast's proxy at ``ssh_host:ssh_port``; and from inside the cluster at the overlay address,
port 22 (overlay members reach each other on every port). This runner tries those endpoints in order and pins the
first that accepts a TCP connection, then drives Ray's own machinery with ``-o Port=<port>``:

* ``_get_node_ip`` (a private hook of Ray 2.60; pinned by ``ray==2.60.*`` and covered by tests) returns the chosen host;
* the ``initialization_commands`` path, which builds a fresh ``SSHOptions`` from the override key and so would lose
  ``Port`` and ``ControlPath``, is routed through the runner's own options (same key: Ray passes
  ``auth.ssh_private_key``);
* ``remote_shell_command_str`` carries ``-p <port>``.

Vast documents no API field for an instance's overlay address. When the provider does not know it, the runner reads
the node's addresses over its first connection (from ``/proc/net/fib_trie``, which every Linux has) and hands them
to the provider, which keeps the one in the overlay's subnet in the node's label.

Ray copies file mounts with rsync before it runs a single setup command, and many images lack rsync, so the first
rsync of a runner makes sure the node has it (installing it with the image's package manager when it does not).

Endpoints come from the provider's snapshot (no API call per SSH command). Until one answers, every attempt
re-reads them, because Ray retries ``uptime`` while a node boots and the right endpoint may only then appear.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ray.autoscaler._private.cli_logger import cli_logger
from ray.autoscaler._private.command_runner import SSHCommandRunner

Endpoint = tuple[str, int]
log = logging.getLogger(__name__)

# How often a booting node's address is looked at. Ray waits AUTOSCALER_NODE_SSH_INTERVAL_S (5 s) between looks; the
# address comes from the provider's snapshot (at most one list call per cache_ttl_s however often it is read), so a
# short poll costs no API calls and a node that is up after 2 s does not wait 5.
IP_POLL_S = 1.0

# Runs before the first rsync: nothing when rsync is there, else the image's package manager installs it.
ENSURE_RSYNC = (
    "command -v rsync >/dev/null 2>&1 || { "
    "(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync) >/dev/null 2>&1 || "
    "apk add --no-cache rsync >/dev/null 2>&1 || yum install -y -q rsync >/dev/null 2>&1 || "
    "dnf install -y -q rsync >/dev/null 2>&1; command -v rsync >/dev/null 2>&1 || "
    "{ echo 'rsync is missing on this node and could not be installed' >&2; exit 1; }; }"
)


# The node's local IPv4 addresses, from the kernel (no iproute2 or python needed on the image).
LOCAL_ADDRESSES = "awk '/32 host LOCAL/ {print last} {last=$2}' /proc/net/fib_trie | sort -u"
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


class EndpointSource(Protocol):
    def ssh_endpoints(self, node_id: str, use_internal_ip: bool) -> list[Endpoint]:
        """Candidate SSH endpoints of a node, best first (empty while unknown)."""
        ...

    def unknown_overlay_subnet(self, node_id: str) -> str | None:
        """The node's overlay subnet while its overlay address is unknown, else None."""
        ...

    def learn_node_addresses(self, node_id: str, addresses: list[str]) -> str | None:
        """Addresses read on the node; the source keeps the one in the overlay subnet."""
        ...


# RFC 5737 documentation networks: never routed, so never worth a connection attempt (the emulator's records-only
# instances carry such addresses, and nothing may be sent towards them).
_DOCUMENTATION_NETS = tuple(ipaddress.ip_network(net) for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))


def is_documentation_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in _DOCUMENTATION_NETS)


def tcp_accepts(endpoint: Endpoint, timeout_s: float = 3.0) -> bool:
    """Whether something accepts TCP connections at ``endpoint`` (sshd up, port mapped, route present)."""
    if is_documentation_address(endpoint[0]):
        return False
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            return True
    except OSError:
        return False


def quiet_without_tty() -> None:
    """Without a TTY, Ray's CLI logger runs at verbosity 999 unless ``-v`` was given: ``ray up | tee log`` or CI
    output then shows every ssh command in full. Keep the terminal's default (0) there too; ``-v`` still wins."""
    if not cli_logger.pretty and not getattr(cli_logger, "_verbosity_overriden", True):
        cli_logger.configure(verbosity=0)


class VastSSHCommandRunner(SSHCommandRunner):
    """``SSHCommandRunner`` that targets the first reachable of a node's SSH endpoints, with its port."""

    def __init__(
        self,
        *,
        endpoints: EndpointSource,
        probe: Callable[[Endpoint], bool] = tcp_accepts,
        **common_args: Any,
    ) -> None:
        quiet_without_tty()
        super().__init__(**common_args)
        self._endpoints = endpoints
        self._probe = probe
        self._endpoint: Endpoint | None = None
        self._has_rsync = False
        self._overlay_checked = False

    # --- endpoint choice -------------------------------------------------------------------------------------------

    def _candidates(self) -> Sequence[Endpoint]:
        return self._endpoints.ssh_endpoints(self.node_id, self.use_internal_ip)

    def _choose_endpoint(self) -> Endpoint | None:
        """The first candidate that answers; if none does yet, the first one (unpinned, so it is tried again)."""
        if self._endpoint is not None:
            return self._endpoint
        candidates = list(self._candidates())
        if not candidates:
            return None
        for endpoint in candidates:
            if self._probe(endpoint):
                self._endpoint = endpoint
                return endpoint
        return candidates[0]

    def _learn_overlay_address(self) -> None:
        """When the API does not show the node's overlay address, read it on the node once (first connection)."""
        if self._overlay_checked:
            return
        self._overlay_checked = True
        if not self._endpoints.unknown_overlay_subnet(self.node_id):
            return
        try:
            output = self.run(LOCAL_ADDRESSES, with_output=True, run_env="host")
        except Exception as exc:  # Ray raises click/ProcessRunner errors; this is only a lookup
            log.warning("reading the addresses of node %s failed: %s", self.node_id, exc)
            return
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        self._endpoints.learn_node_addresses(self.node_id, _IPV4.findall(text))

    @property
    def endpoint(self) -> Endpoint | None:
        """The pinned endpoint, once one answered."""
        return self._endpoint

    def _wait_for_ip(self, deadline: float) -> str | None:  # Ray's loop, with a shorter poll (see IP_POLL_S)
        ip = self._get_node_ip()
        if ip is not None:
            return ip
        cli_logger.print("Waiting for the node's SSH endpoint (polling every {} s)", IP_POLL_S)
        while time.time() < deadline and not self.provider.is_terminated(self.node_id):
            time.sleep(IP_POLL_S)
            ip = self._get_node_ip()
            if ip is not None:
                cli_logger.labeled_value("Received", ip)
                return ip
        return None

    def _get_node_ip(self) -> str | None:  # Ray's hook: the SSH target host
        endpoint = self._choose_endpoint()
        if endpoint is None:
            return None
        self.ssh_options.arg_dict["Port"] = endpoint[1]
        return endpoint[0]

    def _get_ssh_target(self) -> str:
        if self._endpoint is None:
            # Not pinned yet: forget the host Ray cached, so this attempt looks at the endpoints again.
            self.ssh_ip = None
        target = super()._get_ssh_target()
        if self._endpoint is not None and not self._overlay_checked:
            self._learn_overlay_address()
        return target

    # --- Ray's entry points that would otherwise lose the port -----------------------------------------------------

    def run(self, cmd: str | None = None, **kwargs: Any) -> Any:
        # Ray passes auth.ssh_private_key as the override for initialization_commands; that is our key already,
        # and the fresh SSHOptions it would build has no Port. Keep ours.
        kwargs["ssh_options_override_ssh_key"] = ""
        return super().run(cmd, **kwargs)

    def run_rsync_up(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        self._ensure_rsync()
        super().run_rsync_up(source, target, options)

    def run_rsync_down(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        self._ensure_rsync()
        super().run_rsync_down(source, target, options)

    def _ensure_rsync(self) -> None:
        if not self._has_rsync:
            self.run(ENSURE_RSYNC, run_env="host")
            self._has_rsync = True

    def remote_shell_command_str(self) -> str:
        target = self._get_ssh_target()
        port = self.ssh_options.arg_dict.get("Port", 22)
        key = f"-i {self.ssh_private_key} " if self.ssh_private_key else ""
        return f"ssh -o IdentitiesOnly=yes {key}-p {port} {self.ssh_user}@{target}\n"
