"""Ray's SSH command runner for Vast nodes, whose sshd sits behind a mapped port (direct or through Vast's proxy) or
at port 22 of the overlay address: it pins the first endpoint that accepts a TCP connection and drives Ray's own SSH
machinery with that port. It also finds a node on the overlay and reads its overlay address at the first contact."""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import selectors
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

# Which instance answers at an address, and its addresses: Vast's CONTAINER_ID (in the login environment, else in the
# container's PID 1 environment, which SSH sessions do not always inherit), then the local addresses.
_PID1_CONTAINER_ID = "$(tr '\\0' '\\n' < /proc/1/environ 2>/dev/null | sed -n 's/^CONTAINER_ID=//p')"
IDENTIFY = f'echo SKYWARD-ID "${{CONTAINER_ID:-{_PID1_CONTAINER_ID}}}"; {LOCAL_ADDRESSES}'
_IDENTITY_LINE = re.compile(r"^SKYWARD-ID (\d+)\s*$", re.M)
OVERLAY_SSH_PORT = 22  # overlay members reach each other on every port; a container's sshd listens on 22
SCAN_TIMEOUT_S = 1.0  # a LAN answers in milliseconds; absent addresses are given up after this
SCAN_EVERY_S = 2.0  # a runner looks on the overlay at most this often while its node has not answered
IDENTIFY_TIMEOUT_S = 20  # one SSH login and two small commands


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

    def overlay_search(self, node_id: str) -> list[str]:
        """Overlay addresses where the node may answer, when its address is unknown and this process is on its
        overlay (every address of the subnet no known node holds); empty otherwise."""
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


def tcp_scan(endpoints: Sequence[Endpoint], timeout_s: float = SCAN_TIMEOUT_S) -> list[Endpoint]:
    """The endpoints that accept a TCP connection within ``timeout_s``, all tried at once (in input order)."""
    selector = selectors.DefaultSelector()
    accepted: set[Endpoint] = set()
    try:
        for endpoint in endpoints:
            if is_documentation_address(endpoint[0]):
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(endpoint)
            if code == 0:
                accepted.add(endpoint)
                sock.close()
            elif code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                selector.register(sock, selectors.EVENT_WRITE, endpoint)
            else:
                sock.close()
        deadline = time.monotonic() + timeout_s
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                selector.unregister(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    accepted.add(key.data)
                sock.close()
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()
    return [endpoint for endpoint in endpoints if endpoint in accepted]


def parse_identity(output: str) -> tuple[str, list[str]] | None:
    """``(instance id, addresses)`` from the output of :data:`IDENTIFY`, or None when the node did not say."""
    match = _IDENTITY_LINE.search(output)
    if match is None:
        return None
    rest = output[: match.start()] + output[match.end() :]
    return match.group(1), _IPV4.findall(rest)


def quiet_without_tty() -> None:
    """Without a TTY, Ray's CLI logger runs at verbosity 999 unless ``-v`` was given: ``ray up | tee log`` or CI
    output then shows every ssh command in full. Keep the terminal's default (0) there too; ``-v`` still wins."""
    if not cli_logger.pretty and not getattr(cli_logger, "_verbosity_overriden", True):
        cli_logger.configure(verbosity=0)


class VastSSHCommandRunner(SSHCommandRunner):
    """``SSHCommandRunner`` that targets the first reachable of a node's SSH endpoints, with its port.

    Ray's runner always connects to port 22 and ``auth`` has no port key, so this one returns the chosen host from
    ``_get_node_ip`` (a private hook of Ray 2.60, pinned by ``ray==2.60.*`` and covered by tests), routes the
    ``initialization_commands`` path (which would rebuild ``SSHOptions`` without ``Port`` and ``ControlPath``)
    through its own options, and gives ``remote_shell_command_str`` a ``-p <port>``.

    Vast serves no overlay address, so the node's is read at the first contact: from the laptop over the public
    endpoint (``/proc/net/fib_trie``); from the head (``use_internal_ip``), where a worker's public ports may be
    unreachable, by trying port 22 on every free address of the overlay subnet at once and asking each that answers
    which instance it is (``$CONTAINER_ID``). No fixed wait: the node is reached as soon as its sshd answers.

    Endpoints come from the provider's snapshot (no API call per SSH command) and are re-read at every attempt until
    one answers, since Ray retries ``uptime`` while a node boots. The first rsync makes sure the node has rsync."""

    def __init__(
        self,
        *,
        endpoints: EndpointSource,
        probe: Callable[[Endpoint], bool] = tcp_accepts,
        scan: Callable[[Sequence[Endpoint]], list[Endpoint]] = tcp_scan,
        clock: Callable[[], float] = time.monotonic,
        **common_args: Any,
    ) -> None:
        quiet_without_tty()
        super().__init__(**common_args)
        self._endpoints = endpoints
        self._probe = probe
        self._scan = scan
        self._clock = clock
        self._endpoint: Endpoint | None = None
        self._has_rsync = False
        self._overlay_checked = False
        self._last_scan: float | None = None

    # --- endpoint choice -------------------------------------------------------------------------------------------

    def _candidates(self) -> Sequence[Endpoint]:
        return self._endpoints.ssh_endpoints(self.node_id, self.use_internal_ip)

    def _choose_endpoint(self) -> Endpoint | None:
        """The first candidate that answers; if none does yet, the first one (unpinned, so it is tried again).

        From the head to a node whose overlay address nobody knows yet, the node is looked for on the overlay
        first; while it is not found there and no other endpoint answers, None (Ray's wait polls again)."""
        if self._endpoint is not None:
            return self._endpoint
        candidates = list(self._candidates())
        searching = False
        if self.use_internal_ip:
            targets = self._endpoints.overlay_search(self.node_id)
            if targets:
                searching = True
                found = self._find_on_overlay(targets)
                if found is not None:
                    self._endpoint = (found, OVERLAY_SSH_PORT)
                    self._overlay_checked = True  # the identification read its addresses already
                    return self._endpoint
                candidates = list(self._candidates())  # the search may have taught the provider the address
        for endpoint in candidates:
            if self._probe(endpoint):
                self._endpoint = endpoint
                return endpoint
        if searching or not candidates:
            return None
        return candidates[0]

    def _find_on_overlay(self, targets: Sequence[str]) -> str | None:
        """Look for this node on the overlay (at most every ``SCAN_EVERY_S``): the address where it answers, or None.

        Every node that answers is identified and reported to the provider, so one search also places the other
        nodes booting at the same time."""
        now = self._clock()
        if self._last_scan is not None and now - self._last_scan < SCAN_EVERY_S:
            return None
        self._last_scan = now
        answering = self._scan([(address, OVERLAY_SSH_PORT) for address in targets])
        for address, _ in answering:
            identity = self._identify(address)
            if identity is None:
                continue
            instance_id, addresses = identity
            self._endpoints.learn_node_addresses(instance_id, addresses)
            if instance_id == self.node_id:
                log.info("node %s answers on the overlay at %s", self.node_id, address)
                return address
        return None

    def _identify(self, address: str) -> tuple[str, list[str]] | None:
        """Which instance answers SSH at ``address`` on the overlay, and its addresses (None if it does not say)."""
        options = ["-o", f"Port={OVERLAY_SSH_PORT}", "-o", "BatchMode=yes"]
        options += self.ssh_options.to_ssh_options_list(timeout=5)
        cmd = ["ssh", *options, f"{self.ssh_user}@{address}", IDENTIFY]
        try:
            output = self.process_runner.check_output(cmd, stderr=self.process_runner.DEVNULL,
                                                      timeout=IDENTIFY_TIMEOUT_S)
        except Exception as exc:  # not up yet, not our key yet, or not a node of ours: looked at again later
            log.debug("identifying the node at %s failed: %s", address, exc)
            return None
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        return parse_identity(text)

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
        if cmd is None and kwargs.get("port_forward"):
            return self._forward_only(**kwargs)
        return super().run(cmd, **kwargs)

    def _forward_only(self, **kwargs: Any) -> Any:
        """``ray dashboard``: a port forward and no command. Outside Ray's shared SSH connection, so the forward
        ends with the command: on the shared one (ControlPersist) it would outlive Ctrl-C in a background ssh."""
        saved = dict(self.ssh_options.arg_dict)
        self.ssh_options.arg_dict.update(ControlMaster="no", ControlPath="none")
        self.ssh_options.arg_dict.pop("ControlPersist", None)
        try:
            return super().run(None, **kwargs)
        finally:
            self.ssh_options.arg_dict.clear()
            self.ssh_options.arg_dict.update(saved)

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
