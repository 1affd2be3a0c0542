"""The marketplace: state and rules, no HTTP (moto style).

One re-entrant lock guards every record; one :class:`~skyward_ray.emulator.clock.Clock` drives every time rule.
Methods take a :class:`Caller` and a parsed body and return the wire body as a dict, or raise :class:`MarketError`
carrying the HTTP status and Vast's error body. Runtime calls (which can take a second with ``netns``) are collected
under the lock and run after it is released.

Rules and [inferred] choices (no source settles them; see vast-api.md section 12):
* the offer rule lives in :func:`skyward_ray.emulator.search.offer_counts`;
* a stopped or outbid instance keeps its GPUs (they are not offered to others) until it is destroyed;
* a bid below ``min_bid`` creates the instance stopped and answers 400 ``invalid_price`` with ``new_contract``;
* insufficient credit (less than one hour of the rental) answers 400 ``insufficient_credit``;
* stop, start and label are idempotent; a second destroy answers 404 ``no_such_instance``;
* overlay members get ``.1``, ``.2``, ... of the overlay's /24 in join order; the address is on the instance's
  ``eth0`` (host runtime), not in ``local_ipaddrs`` (host-side addresses only), unless the inferred fault switch
  ``overlay_address_in_local_ipaddrs`` asks for the old behaviour;
* documented bounds and answers (create input bounds, identity ports, 64 open ports, ``GET /ssh/`` 404) come from
  :mod:`skyward_ray.emulator.documented`, where the inferred choices next to them are marked;
* ``GET /clusters/`` is the host view (clusters the account owns): empty for the emulated renters;
* the SSH proxy is not emulated: ``ssh_host``/``ssh_port`` name the direct endpoint;
* [emulator only] a create request carrying an account API key (label, env, onstart, args) is counted in
  ``dump()["account_key_leaks"]`` and the key is kept out of the instance environment.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import secrets
import shlex
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.documented import (
    CREATE_ARGS_MAX,
    CREATE_DISK_MIN,
    CREATE_ENV_TOTAL_MAX,
    CREATE_ENV_VALUE_MAX,
    CREATE_IMAGE_MAX,
    CREATE_LABEL_MAX,
    CREATE_PRICE_MAX,
    CREATE_PRICE_MIN,
    IDENTITY_PORT_MIN,
    LABEL_MAX,
    MAX_OPEN_PORTS,
    NO_SSH_KEYS_BODY,
    NO_SSH_KEYS_STATUS,
    OVERLAYS_UNAVAILABLE_BODY,
    OVERLAYS_UNAVAILABLE_STATUS,
)
from skyward_ray.emulator.faults import FailureKind, FaultConfig
from skyward_ray.emulator.records import AccountSshKey, Instance, LedgerEntry, Machine, Overlay, User
from skyward_ray.emulator.rows import instance_row, list_page
from skyward_ray.emulator.runtime import HostRuntime, InstanceSpec, NoneRuntime, RuntimeFailure
from skyward_ray.emulator.scenarios import Scenario, build_scenario
from skyward_ray.emulator.search import (
    CONTROL_KEYS,
    QueryError,
    SearchContext,
    build_offer_rows,
    compile_offer_query,
    finish_offer,
    sort_rows,
    split_offer_id,
)

log = logging.getLogger(__name__)

DRIFT_STEP_S = 60.0  # prices move in steps, so cached offer rows survive between steps
OCI_MESSAGE = ("Error response from daemon: failed to create task for container: failed to create shim task: "
               "OCI runtime create failed: runc create failed: unable to start container process: error during "
               "container init: error running hook #0: exit status 1 [emulator]")
_OVERLAY_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
_RUNTYPE_TOKENS = {"ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "jupyter", "jupyter_proxy", "jupyter_direc",
                   "jupyter_direct", "args"}


class MarketError(Exception):
    """A rule said no: ``status`` and ``body`` are exactly what the HTTP layer sends."""

    def __init__(self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("msg") if isinstance(body, dict) else body)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(status: int, error: str, msg: str, **extra: Any) -> MarketError:
    return MarketError(status, {"success": False, "error": error, "msg": msg, **extra})


def _no_such_instance(instance_id: int) -> MarketError:
    return _error(404, "no_such_instance", f"Instance {instance_id} not found.")


def _invalid_args(msg: str) -> MarketError:
    """Vast's create-time 400 (create_instance.yaml: "error 400/3467: Invalid args: ...")."""
    return _error(400, "invalid_args", f"error 400/3467: Invalid args: {msg}")


def _no_such_ask(ask_id: int) -> MarketError:
    return _error(404, "invalid_args",
                  f"error 404/3603: no_such_ask Instance type by id {ask_id} is not available.", ask_id=ask_id)


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user's account key, or an instance's CONTAINER_API_KEY (``instance_scope`` set)."""

    user: User
    instance_scope: int | None = None

    def require_account_key(self) -> None:
        if self.instance_scope is not None:
            raise _error(403, "forbidden",
                         f"This key belongs to instance {self.instance_scope}: it can only stop or destroy it.")

    def require_instance(self, instance_id: int) -> None:
        if self.instance_scope is not None and self.instance_scope != instance_id:
            raise _error(403, "forbidden",
                         f"This key belongs to instance {self.instance_scope}: it can only stop or destroy it.")


@dataclass
class EnvRequest:
    """A create request's ``env``, split into what Vast does with each part."""

    pairs: list[list[str]]  # as extra_env shows it
    variables: dict[str, str]
    ports: list[str]  # "8080/tcp"
    overlays: list[str]
    hostname: str | None


def _port_key(spec: str) -> str:
    """``8080:8080/udp`` -> ``8080/udp``: the container side of a ``-p`` request. A container port of 70000 or more is
    an identity request (networking.mdx), kept as asked (``70000/tcp``) until the rental maps it."""
    spec = spec.strip()
    proto = "tcp"
    if "/" in spec:
        spec, proto = spec.rsplit("/", 1)
        proto = proto.lower()
    container = spec.rsplit(":", 1)[-1]
    valid = proto in ("tcp", "udp") and container.isdigit() and (
        1 <= int(container) <= 65535 or int(container) >= IDENTITY_PORT_MIN)
    if not valid:
        raise _invalid_args(f"env: port request -p {spec!r} is not HOST:CONTAINER[/tcp|/udp] with a container port "
                            f"1-65535, or {IDENTITY_PORT_MIN} and up for an identity port")
    return f"{int(container)}/{proto}"


def parse_env(env: Any) -> EnvRequest:
    """Accept both wire forms: a dict (``{"K": "v", "-p 8080:8080": "1", "-n ov": "1"}``) or a docker-flag string."""
    if env is None:
        env = {}
    if isinstance(env, str):
        try:
            tokens = shlex.split(env)
        except ValueError:
            tokens = env.split()
        as_dict: dict[str, str] = {}
        flag: str | None = None
        for token in tokens:
            if flag is None:
                if token in ("-e", "-p", "-h", "-v", "-n"):
                    flag = token
                continue
            if flag == "-e":
                key, _, value = token.partition("=")
                if key:
                    as_dict[key] = value.strip("'\"")
            elif flag == "-h":
                as_dict["-h"] = token
            else:
                as_dict[f"{flag} {token}"] = "1"
            flag = None
        env = as_dict
    if not isinstance(env, dict):
        raise _error(400, "invalid_args", f"env: expected an object or a docker-flag string, got {type(env).__name__}")
    request = EnvRequest(pairs=[], variables={}, ports=[], overlays=[], hostname=None)
    for raw_key, raw_value in env.items():
        key = str(raw_key)
        value = "" if raw_value is None else str(raw_value)
        request.pairs.append([key, value])
        if not key.startswith("-"):
            request.variables[key] = value
            continue
        flag, _, arg = key.partition(" ")
        arg = arg.strip()
        if flag == "-p" and arg:
            request.ports.append(_port_key(arg))
        elif flag == "-n" and arg:
            request.overlays.append(arg)
        elif flag == "-h":
            request.hostname = arg or value
        elif flag == "-e" and "=" in arg:
            name, _, val = arg.partition("=")
            request.variables[name] = val
    return request


def _key_name(public_key: str) -> str:
    """The comment of an OpenSSH public key, which Vast shows as the key's name."""
    parts = public_key.split()
    return parts[2][:64] if len(parts) > 2 else ""


def _normalize_runtype(runtype: Any, has_args: bool) -> str:
    if runtype in (None, ""):
        return "args" if has_args else "ssh"
    tokens = str(runtype).split()
    unknown = [t for t in tokens if t not in _RUNTYPE_TOKENS]
    if unknown or not tokens:
        raise _error(400, "invalid_args", f"runtype: {runtype!r} is unknown; allowed tokens: "
                                          f"{', '.join(sorted(_RUNTYPE_TOKENS))}")
    return " ".join(t.replace("_direct", "_direc") for t in tokens)


@dataclass
class CreateFields:
    """A create body's fields once checked against create_instance.yaml's ``x-input-validation``."""

    image: str
    disk: float
    label: str | None
    onstart: str | None
    args: list[str] | None
    bid: float | None


def _check_create_body(body: dict[str, Any]) -> CreateFields:
    image = body.get("image")
    if not image and not body.get("template_hash_id") and not body.get("template_id"):
        raise _invalid_args("image is required (or a template)")
    if image is not None and (not isinstance(image, str) or len(image) > CREATE_IMAGE_MAX):
        raise _invalid_args(f"image: must be a string of at most {CREATE_IMAGE_MAX} characters")
    raw_disk = body.get("disk")
    try:
        disk = float(raw_disk if raw_disk is not None else 10.0)
    except (TypeError, ValueError):
        raise _invalid_args(f"disk: {raw_disk!r} is not a number of GB") from None
    if not math.isfinite(disk) or disk < CREATE_DISK_MIN:
        raise _invalid_args(f"disk: {disk:g} GB is below the minimum of {CREATE_DISK_MIN:g} GB")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > CREATE_LABEL_MAX):
        raise _invalid_args(f"label: must be a string of at most {CREATE_LABEL_MAX} characters")
    onstart = body.get("onstart")
    if onstart is not None and not isinstance(onstart, str):
        raise _invalid_args("onstart: must be a string")
    args = body.get("args")
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise _invalid_args("args: must be a list of strings")
    args_str = body.get("args_str")
    if args_str is not None and not isinstance(args_str, str):
        raise _invalid_args("args_str: must be a string")
    combined = len(" ".join(args or [])) + len(args_str or "") + len(onstart or "")
    if combined > CREATE_ARGS_MAX:
        raise _invalid_args(f"args, args_str and onstart: {combined} characters together; at most {CREATE_ARGS_MAX}")
    price_raw = body.get("price")
    bid: float | None = None
    if price_raw is not None:
        try:
            bid = float(price_raw)
        except (TypeError, ValueError):
            raise _error(400, "invalid_price", f"error 400/3467: Invalid args: price: {price_raw!r} is not a $/h "
                                               "number") from None
        if not CREATE_PRICE_MIN <= bid <= CREATE_PRICE_MAX:
            raise _error(400, "invalid_price", f"error 400/3467: Invalid args: price: {bid:g} is outside the allowed "
                                               f"{CREATE_PRICE_MIN:g}-{CREATE_PRICE_MAX:g} $/h")
    return CreateFields(image=str(image) if image else "", disk=disk, label=label, onstart=onstart, args=args,
                        bid=bid)


def _check_env_bounds(env: EnvRequest) -> None:
    """Each env value at most 256 characters, all of env (keys and values) at most 32768."""
    total = 0
    for key, value in env.pairs:
        if len(value) > CREATE_ENV_VALUE_MAX:
            raise _invalid_args(f"env: the value of {key[:64]!r} has {len(value)} characters; at most "
                                f"{CREATE_ENV_VALUE_MAX}")
        total += len(key) + len(value)
    if total > CREATE_ENV_TOTAL_MAX:
        raise _invalid_args(f"env: {total} characters in all; at most {CREATE_ENV_TOTAL_MAX}")


class Market:
    """The marketplace. Thread-safe; every public method may be called from any thread."""

    def __init__(self, scenario: Scenario | str = "default", *, seed: int = 0, api_key: str | None = None,
                 clock: Clock | None = None, runtime: HostRuntime | None = None, boot_delay_s: float = 3.0,
                 faults: FaultConfig | None = None, credit: float | None = None, runtime_workers: int = 8) -> None:
        if isinstance(scenario, str):
            scenario = build_scenario(scenario, seed)
        if boot_delay_s < 0:
            raise ValueError(f"boot_delay_s: {boot_delay_s!r} is negative; allowed: >= 0")
        self.scenario = scenario
        self.clock = clock or Clock()
        self.runtime: HostRuntime = runtime or NoneRuntime()
        self.boot_delay_s = float(boot_delay_s)
        self._faults = faults or scenario.faults
        self._lock = threading.RLock()
        self._rng = random.Random(f"skyward-emulator-faults:{scenario.name}:{scenario.seed}")
        self._rng_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=runtime_workers, thread_name_prefix="emulator-runtime")
        self.epoch0 = self.clock.epoch(0.0)
        self.machines: dict[int, Machine] = {m.machine_id: m for m in scenario.machines}
        self._machine_order = list(self.machines.values())
        self.clusters: dict[int, list[Machine]] = {}
        for machine in self._machine_order:
            if machine.cluster_id is not None:
                self.clusters.setdefault(machine.cluster_id, []).append(machine)
        self.users: dict[int, User] = {}
        self._keys: dict[str, tuple[int, int | None]] = {}  # api key -> (user id, instance scope)
        self.instances: dict[int, Instance] = {}
        self.overlays: dict[int, Overlay] = {}
        self.ledger: dict[int, LedgerEntry] = {}
        self._next_instance_id = self._rng.randrange(9_000_000, 9_500_000)
        self._next_overlay_id = 1
        self._next_ssh_key_id = self._rng.randrange(10_000, 20_000)
        self._all_rows: list[dict[str, Any]] | None = None
        self.account_key_leaks = 0
        self._held: set[Machine] = set()  # machines with GPUs taken by rival renters (released on the clock)
        self._offer_fields = self._collect_offer_fields()
        self._last_tick = self.clock.now()
        self._next_drift = self._last_tick + DRIFT_STEP_S
        self.default_user = self.add_user(api_key=api_key, credit=scenario.credit if credit is None else credit)

    # ------------------------------------------------------------------------------------------------------------
    # Accounts and keys

    def add_user(self, *, api_key: str | None = None, credit: float = 1000.0, username: str | None = None) -> User:
        with self._lock:
            user_id = 100_000 + len(self.users) * 7 + 1
            key = api_key or secrets.token_hex(32)
            if key in self._keys:
                raise ValueError("api_key: already in use by another user")
            user = User(user_id=user_id, api_key=key, username=username or f"renter{len(self.users) + 1}",
                        email=f"renter{len(self.users) + 1}@emulator.invalid", credit=float(credit))
            self.users[user_id] = user
            self._keys[key] = (user_id, None)
            return user

    def authenticate(self, key: str | None) -> Caller | None:
        """The caller behind an API key, or None when the key is unknown."""
        if not key:
            return None
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                return None
            user_id, scope = entry
            return Caller(self.users[user_id], scope)

    @property
    def faults(self) -> FaultConfig:
        return self._faults

    def set_faults(self, faults: FaultConfig) -> None:
        with self._lock:
            self._faults = faults

    def draw(self) -> float:
        """One draw from the seeded fault RNG (thread-safe)."""
        with self._rng_lock:
            return self._rng.random()

    def _choice(self, items: list[Any]) -> Any:
        with self._rng_lock:
            return self._rng.choice(items)

    def _uniform(self, low: float, high: float) -> float:
        with self._rng_lock:
            return self._rng.uniform(low, high)

    # ------------------------------------------------------------------------------------------------------------
    # Time

    def tick(self) -> None:
        """Apply everything the clock says has happened since the last tick; run the runtime calls it implies."""
        with self._lock:
            actions = self._advance_locked()
        self._run(actions)

    def _advance_locked(self) -> list[Callable[[], None]]:
        now = self.clock.now()
        dt = max(0.0, now - self._last_tick)
        self._last_tick = now
        actions: list[Callable[[], None]] = []
        self._bill_locked(now, dt, actions)
        for machine in list(self._held):
            kept = [(until, n) for until, n in machine.rival_holds if until > now]
            freed = sum(n for until, n in machine.rival_holds if until <= now)
            if freed:
                machine.rival_holds = kept
                machine.free_gpus += freed
                self._touch(machine)
            if not kept:
                self._held.discard(machine)
        faults = self._faults
        if faults.price_drift_pct_per_hour > 0:
            while now >= self._next_drift:
                self._next_drift += DRIFT_STEP_S
                self._drift_locked(faults.price_drift_pct_per_hour, actions)
        elif now >= self._next_drift:
            self._next_drift = now + DRIFT_STEP_S
        hours = dt / 3600
        for inst in list(self.instances.values()):
            self._lifecycle_locked(inst, now, actions)
            if hours <= 0:
                continue
            live = inst.intended_status == "running" and inst.actual_status in ("running", "loading", None)
            if inst.is_bid and live and faults.outbid_rate_per_hour > 0 and \
                    self.draw() < 1 - math.exp(-faults.outbid_rate_per_hour * hours):
                self._outbid_locked(inst, None, actions)
                continue
            if live and faults.host_failure_rate_per_hour > 0 and faults.host_failure_kinds and \
                    self.draw() < 1 - math.exp(-faults.host_failure_rate_per_hour * hours):
                self._fail_locked(inst, self._choice(list(faults.host_failure_kinds)), actions)
        return actions

    def _lifecycle_locked(self, inst: Instance, now: float, actions: list[Callable[[], None]]) -> None:
        """null -> loading -> (runtime start) -> running, on the instance's own timeline."""
        if inst.intended_status != "running" or inst.booting or inst.stop_reason is not None:
            return
        if inst.actual_status is None and now >= inst.loading_at:
            inst.actual_status = "loading"
        if inst.actual_status != "loading" or inst.stuck or now < inst.ready_at:
            return
        if inst.boot_fault is not None:
            kind, inst.boot_fault = inst.boot_fault, None
            self._fail_locked(inst, FailureKind(kind), actions)
            return
        inst.booting = True
        spec = self._spec_locked(inst)
        gen = inst.boot_gen
        actions.append(lambda: self._boot(inst.instance_id, gen, spec))

    def _spec_locked(self, inst: Instance) -> InstanceSpec:
        env = {
            "CONTAINER_ID": str(inst.instance_id),
            "CONTAINER_API_KEY": inst.api_key,
            "VAST_CONTAINERLABEL": f"C.{inst.instance_id}",
        }
        for key, port in [*inst.port_map.items(), *inst.identity_ports.items()]:
            number, proto = key.split("/")
            env[f"VAST_{proto.upper()}_PORT_{number}"] = str(port)
        env.update({k: v for k, v in inst.user_env.items() if k not in env})
        inst.keys_applied = len(inst.authorized_keys)
        return InstanceSpec(
            instance_id=inst.instance_id,
            machine_id=inst.machine.machine_id,
            hostname=inst.hostname,
            num_gpus=inst.num_gpus,
            port_map=dict(inst.port_map),
            env=env,
            authorized_keys=tuple(inst.authorized_keys),
            onstart=inst.onstart,
        )

    def _boot(self, instance_id: int, gen: int, spec: InstanceSpec) -> None:
        """Runs outside the lock: start the instance, wire its overlays, then mark it running."""
        error: str | None = None
        try:
            self.runtime.start(spec)
        except RuntimeFailure as exc:
            error = str(exc) or "the host could not start the container"
        except Exception as exc:  # a runtime bug must not kill the market; the instance shows it
            log.exception("runtime.start(%s) failed", instance_id)
            error = f"runtime error: {type(exc).__name__}: {exc}"
        with self._lock:
            inst = self.instances.get(instance_id)
            stale = inst is None or inst.boot_gen != gen
            if not stale and inst is not None and error is not None:
                inst.booting = False
                inst.actual_status, inst.status_msg = "exited", error
                self._set_ledger_reason(inst, "boot failed")
                return
            joins = [] if stale or inst is None else self._pending_joins_locked(inst)
        if stale:
            if inst is None:  # destroyed while booting
                self._safe(self.runtime.destroy, instance_id)
            elif not inst.booting:  # stopped or failed while booting (a newer boot in flight owns it otherwise)
                self._safe(self.runtime.stop, instance_id)
            return
        for overlay_id, address, prefix in joins:
            self._safe(self.runtime.join_overlay, overlay_id, instance_id, address, prefix)
        public_ip = self.runtime.public_ip(instance_id, self.machines[spec.machine_id].public_ipaddr)
        late: list[Callable[[], None]] = []
        with self._lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.boot_gen != gen:
                return
            inst.booting = False
            inst.actual_status = "running"
            inst.status_msg = None
            inst.running_since = self.clock.now()
            inst.public_ipaddr = public_ip
            inst.ssh_port = inst.port_map.get("22/tcp")
            inst.ssh_host = public_ip if inst.ssh_port is not None else None
            for overlay_id, address, prefix in self._pending_joins_locked(inst):
                late.append(lambda o=overlay_id, a=address, p=prefix: self.runtime.join_overlay(o, instance_id, a, p))
            for key in inst.authorized_keys[inst.keys_applied:]:
                late.append(lambda k=key: self.runtime.add_authorized_key(instance_id, k))
            inst.keys_applied = len(inst.authorized_keys)
        self._run(late)

    def _pending_joins_locked(self, inst: Instance) -> list[tuple[int, str, int]]:
        joins = []
        for overlay_id in inst.overlay_ids:
            overlay = self.overlays.get(overlay_id)
            if overlay is None or overlay_id in inst.joined_overlays:
                continue
            address = overlay.members[inst.instance_id]
            joins.append((overlay_id, address, int(overlay.internal_subnet.split("/")[1])))
            inst.joined_overlays.add(overlay_id)
        return joins

    def _run(self, actions: Iterable[Callable[[], None]]) -> None:
        """Run runtime calls outside the lock, in parallel (boots can take seconds each), and wait for them."""
        futures: list[Future[None]] = [self._pool.submit(self._safe, action) for action in actions]
        for future in futures:
            future.result()

    @staticmethod
    def _safe(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("emulator runtime call failed")

    def _bill_locked(self, now: float, dt: float, actions: list[Callable[[], None]]) -> None:
        """Credit drains on the clock: GPU time while running, storage always; at zero every instance stops."""
        if dt <= 0:
            return
        hours = dt / 3600 * self._faults.credit_drain_multiplier
        spent: dict[int, float] = {}
        for inst in self.instances.values():
            rate = inst.hourly_price if inst.actual_status == "running" else inst.storage_hourly
            cost = rate * hours
            inst.cost += cost
            entry = self.ledger.get(inst.instance_id)
            if entry is not None:
                entry.cost += cost
            spent[inst.user_id] = spent.get(inst.user_id, 0.0) + cost
        for user_id, cost in spent.items():
            user = self.users[user_id]
            user.credit -= cost
            if user.credit <= 0 and not user.credit_exhausted:
                user.credit_exhausted = True
                for inst in self.instances.values():
                    if inst.user_id == user_id and inst.intended_status == "running":
                        self._stop_locked(inst, "credit", "Instance stopped: account credit exhausted", actions)
            elif user.credit > 0:
                user.credit_exhausted = False

    def _drift_locked(self, pct_per_hour: float, actions: list[Callable[[], None]]) -> None:
        sigma = pct_per_hour / 100 * math.sqrt(DRIFT_STEP_S / 3600)
        with self._rng_lock:
            factors = [math.exp(self._rng.gauss(0.0, sigma)) for _ in self._machine_order]
        for machine, factor in zip(self._machine_order, factors, strict=True):
            machine.gpu_price = round(min(max(machine.gpu_price * factor, machine.base_gpu_price * 0.5),
                                          machine.base_gpu_price * 2), 5)
            machine.bid_price = round(min(max(machine.bid_price * factor, machine.base_bid_price * 0.5),
                                          machine.base_bid_price * 2), 5)
            self._touch(machine)
        for inst in self.instances.values():
            floor = inst.machine.bid_price * inst.num_gpus
            if inst.is_bid and inst.bid is not None and inst.bid < floor and inst.intended_status == "running":
                self._outbid_locked(inst, floor, actions)

    # ------------------------------------------------------------------------------------------------------------
    # State transitions (all under the lock; runtime calls appended to ``actions``)

    def _stop_locked(self, inst: Instance, reason: str, message: str | None,
                     actions: list[Callable[[], None]]) -> None:
        inst.intended_status = inst.cur_state = inst.next_state = "stopped"
        inst.actual_status = "stopped"
        inst.status_msg = message
        inst.stop_reason = reason
        inst.running_since = None
        inst.booting = False
        inst.boot_gen += 1
        inst.joined_overlays.clear()
        actions.append(lambda iid=inst.instance_id: self.runtime.stop(iid))

    def _outbid_locked(self, inst: Instance, rival: float | None, actions: list[Callable[[], None]]) -> None:
        floor = inst.machine.bid_price * inst.num_gpus
        if rival is None:
            rival = max(inst.bid or 0.0, floor) * self._uniform(1.05, 1.5)
        inst.rival_bid = round(rival, 4)
        self._stop_locked(inst, "outbid",
                          f"Instance stopped: outbid by a higher bid (${inst.rival_bid:.4f}/h > your "
                          f"${(inst.bid or 0):.4f}/h)", actions)

    def _fail_locked(self, inst: Instance, kind: FailureKind, actions: list[Callable[[], None]]) -> None:
        inst.booting = False
        inst.boot_gen += 1
        inst.running_since = None
        inst.joined_overlays.clear()
        if kind is FailureKind.OFFLINE:
            machine = inst.machine
            machine.listed = False
            self._touch(machine)
            for other in self.instances.values():
                if other.machine is machine and other.actual_status not in ("stopped",):
                    other.actual_status, other.status_msg = "offline", "host machine is offline"
                    other.booting = False
                    other.boot_gen += 1
                    other.running_since = None
                    other.joined_overlays.clear()
                    actions.append(lambda iid=other.instance_id: self.runtime.stop(iid))
            return
        if kind is FailureKind.EXITED:
            inst.actual_status, inst.status_msg = "exited", "container exited unexpectedly (exit code 137)"
        elif kind is FailureKind.STUCK_LOADING:
            inst.actual_status, inst.status_msg, inst.stuck = "loading", None, True
        else:
            inst.actual_status, inst.status_msg = "created", OCI_MESSAGE
        actions.append(lambda iid=inst.instance_id: self.runtime.stop(iid))

    def _restart_locked(self, inst: Instance, now: float) -> None:
        """Boot again (a start, a reboot, or a bid that wins again)."""
        inst.intended_status = inst.cur_state = inst.next_state = "running"
        inst.actual_status = "loading"
        inst.status_msg = None
        inst.stop_reason = None
        inst.stuck = False
        inst.booting = False
        inst.boot_gen += 1
        inst.running_since = None
        inst.joined_overlays.clear()
        inst.loading_at = now
        inst.ready_at = now + self.boot_delay_s

    def _touch(self, machine: Machine) -> None:
        machine.offer_rows = None
        self._all_rows = None

    def _set_ledger_reason(self, inst: Instance, reason: str) -> None:
        entry = self.ledger.get(inst.instance_id)
        if entry is not None and entry.end_reason is None:
            entry.end_reason = reason

    # ------------------------------------------------------------------------------------------------------------
    # Search

    def _collect_offer_fields(self) -> frozenset[str]:
        sample = next((m for m in self._machine_order), None)
        fields: set[str] = set(CONTROL_KEYS)
        if sample is not None:
            saved = sample.listed, sample.free_gpus
            sample.listed, sample.free_gpus = True, max(sample.free_gpus, 1)
            rows = build_offer_rows(sample, self.epoch0)
            sample.listed, sample.free_gpus = saved
            sample.offer_rows = None
            ctx = SearchContext(0.0, 5.0, False, frozenset())
            fields |= set(finish_offer(rows[0], ctx, 1, True))
        return frozenset(fields)

    def _rows_locked(self) -> list[dict[str, Any]]:
        if self._all_rows is None:
            rows: list[dict[str, Any]] = []
            for machine in self._machine_order:
                if machine.offer_rows is None:
                    machine.offer_rows = build_offer_rows(machine, self.epoch0)
                rows.extend(machine.offer_rows)
            self._all_rows = rows
        return self._all_rows

    def search(self, query: Any, caller: Caller | None) -> dict[str, Any]:
        """``POST /bundles/``: ``{"offers": [...]}``."""
        try:
            plan = compile_offer_query(query, self._offer_fields)
        except QueryError as exc:
            raise _error(400, exc.error, str(exc)) from None
        self.tick()
        with self._lock:
            rows = self._rows_locked()
            rented = frozenset(
                inst.machine.machine_id for inst in self.instances.values()
                if caller is not None and inst.user_id == caller.user.user_id
            )
            now_epoch = self.clock.epoch()
        ctx = SearchContext(now_epoch=now_epoch, storage_gb=plan.storage_gb, is_bid=plan.is_bid,
                            rented_machines=rented)
        matched = rows
        for check in plan.checks:
            matched = [row for row in matched if check(row, ctx)]
        top = sort_rows(matched, plan.order, ctx, plan.limit)
        return {"offers": [finish_offer(row, ctx, rank, plan.reserved) for rank, row in enumerate(top, start=1)]}

    def offer_count(self) -> int:
        with self._lock:
            return len(self._rows_locked())

    def gpu_names(self) -> list[str]:
        with self._lock:
            return sorted({m.gpu_name for m in self._machine_order})

    # ------------------------------------------------------------------------------------------------------------
    # Instances

    def create_instance(self, caller: Caller, ask_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /asks/{id}/``. Raises MarketError for every refusal (a bid below min_bid still creates)."""
        caller.require_account_key()
        self.tick()
        actions: list[Callable[[], None]] = []
        try:
            with self._lock:
                return self._create_locked(caller.user, ask_id, body, actions)
        finally:
            self._run(actions)

    def _create_locked(self, user: User, ask_id: int, body: dict[str, Any],
                       actions: list[Callable[[], None]]) -> dict[str, Any]:
        checked = _check_create_body(body)
        image, disk, label, onstart, args, bid = (checked.image, checked.disk, checked.label, checked.onstart,
                                                  checked.args, checked.bid)
        runtype = _normalize_runtype(body.get("runtype"), bool(args or body.get("args_str")))
        env = parse_env(body.get("env"))
        _check_env_bounds(env)
        self._guard_account_keys(env, label, onstart, args)
        machine_id, n = split_offer_id(int(ask_id))
        machine = self.machines.get(machine_id)
        if machine is None or not 1 <= n <= machine.num_gpus or not machine.listed or machine.free_gpus < n:
            raise _no_such_ask(ask_id)
        overlays = []
        for name in env.overlays:
            overlay = self._overlay_by_name_locked(user, name)
            if overlay is None:
                raise _invalid_args(f"env: overlay {name!r} does not exist on this account")
            if overlay.cluster_id != machine.cluster_id:
                raise _invalid_args(f"env: overlay {name!r} is on cluster {overlay.cluster_id}; offer {ask_id} is on "
                                    f"machine {machine_id}, outside that cluster")
            overlays.append(overlay)
        # networking.mdx: ssh runtypes open 22, jupyter 8080 too; "args" opens only what is asked for.
        tokens = runtype.split()
        ports = ["22/tcp"] if any(t.startswith(("ssh", "jupyter")) for t in tokens) else []
        if "jupyter" in runtype:
            ports.append("8080/tcp")
        ports += [p for p in env.ports if p not in ports]
        if len(ports) > MAX_OPEN_PORTS:
            raise _invalid_args(f"env: {len(ports)} open ports requested; at most {MAX_OPEN_PORTS} per instance")
        if len(ports) > machine.direct_port_count:
            raise _invalid_args(f"env: {len(ports)} ports requested; machine {machine_id} has "
                                f"{machine.direct_port_count} direct ports")
        if self._faults.offer_taken_rate > 0 and self.draw() < self._faults.offer_taken_rate:
            machine.free_gpus -= n
            machine.rival_holds.append((self.clock.now() + self._faults.rival_hold_s, n))
            self._held.add(machine)
            self._touch(machine)
            raise _no_such_ask(ask_id)
        dph_base = round(machine.gpu_price * n, 4)
        min_bid = round(machine.bid_price * n, 4)
        storage_hourly = disk * machine.storage_cost / 30 / 24
        hourly = (bid if bid is not None else dph_base) + storage_hourly
        if user.credit < hourly:
            raise _error(400, "insufficient_credit",
                         f"Your credit (${user.credit:.2f}) does not cover one hour of this rental "
                         f"(${hourly:.4f}/h). Add credit on the Billing page.")
        now = self.clock.now()
        instance_id = self._next_instance_id
        self._next_instance_id += 1 + int(self.draw() * 20)
        port_map, identity_ports = self._map_ports_locked(machine, ports)
        inst = Instance(
            instance_id=instance_id, user_id=user.user_id, machine=machine, offer_id=int(ask_id), num_gpus=n,
            is_bid=bid is not None, bid=bid, dph_base=dph_base, disk=disk, storage_cost=machine.storage_cost,
            image=str(image or body.get("template_hash_id") or body.get("template_id")),
            env_pairs=env.pairs, user_env=env.variables, port_map=port_map, identity_ports=identity_ports,
            label=label, onstart=onstart,
            runtype=runtype, args=args, api_key=secrets.token_hex(32), created_at=now,
            hostname=env.hostname or f"C.{instance_id}",
            authorized_keys=[key.public_key for key in user.ssh_keys.values()],
            instance_keys=[{"id": key.key_id, "name": _key_name(key.public_key), "public_key": key.public_key}
                           for key in user.ssh_keys.values()],
            loading_at=now + self.boot_delay_s * 0.2, ready_at=now + self.boot_delay_s,
        )
        inst.ssh_port = port_map.get("22/tcp")
        inst.ssh_host = machine.public_ipaddr if inst.ssh_port is not None else None
        if self._faults.boot_failure_rate > 0 and self.draw() < self._faults.boot_failure_rate:
            kinds = [k for k in self._faults.host_failure_kinds if k is not FailureKind.OFFLINE] or \
                [FailureKind.EXITED]
            inst.boot_fault = self._choice(kinds).value
        machine.free_gpus -= n
        self._touch(machine)
        self.instances[instance_id] = inst
        self._keys[inst.api_key] = (user.user_id, instance_id)
        for overlay in overlays:
            self._add_member_locked(overlay, inst)
        self.ledger[instance_id] = LedgerEntry(
            instance_id=instance_id, user_id=user.user_id, machine_id=machine_id, offer_id=int(ask_id),
            gpu_name=machine.gpu_name, num_gpus=n, is_bid=bid is not None,
            price=round(hourly if bid is None else bid, 6), label=label, created_at=self.clock.epoch(now))
        if bid is not None and bid < min_bid:
            self._stop_locked(inst, "bid_too_low",
                              f"Instance stopped: your bid ${bid:.4f}/h is below the minimum bid ${min_bid:.4f}/h",
                              actions)
            raise _error(400, "invalid_price",
                         f"Your bid ${bid:.4f}/h is below the minimum bid ${min_bid:.4f}/h for offer {ask_id}: "
                         f"instance {instance_id} was created stopped and starts once the bid wins.",
                         new_contract=instance_id, ask_id=int(ask_id))
        return {"success": True, "new_contract": instance_id, "instance_api_key": inst.api_key}

    def _guard_account_keys(self, env: EnvRequest, label: Any, onstart: Any, args: Any) -> None:
        """An account key must never reach an instance (DESIGN.md, Secrets). Count every request that tries, keep
        such entries out of the instance's environment, and let tests assert ``account_key_leaks == 0``."""
        keys = [user.api_key for user in self.users.values()]
        texts = [str(t) for t in (label, onstart, *(args or [])) if t]
        texts += [part for pair in env.pairs for part in pair]
        if not any(key in text for key in keys for text in texts):
            return
        self.account_key_leaks += 1
        log.warning("a create request carried an account API key (label, env, onstart or args); it is kept out of "
                    "the instance environment")
        env.variables = {k: v for k, v in env.variables.items() if not any(key in k or key in v for key in keys)}

    def create_instances_bulk(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /asks/bulk/`` [inferred response shape]: one result per offer id, in order."""
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids:
            raise _error(400, "invalid_args", "ids: a non-empty list of offer ids is required")
        rest = {k: v for k, v in body.items() if k != "ids"}
        results: list[dict[str, Any]] = []
        for ask in ids:
            try:
                results.append(self.create_instance(caller, int(ask), rest))
            except MarketError as exc:
                results.append(exc.body if isinstance(exc.body, dict) else {"success": False, "msg": exc.body})
            except (TypeError, ValueError):
                results.append({"success": False, "error": "invalid_args", "msg": f"{ask!r} is not an offer id"})
        created = [r["new_contract"] for r in results if r.get("success") and "new_contract" in r]
        return {"success": len(created) == len(ids), "new_contracts": created, "results": results}

    def _map_ports_locked(self, machine: Machine, ports: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """(container port -> host port, identity request -> host port). An identity request (``70000/tcp``) gets a
        random host port P mapped to the same P inside the container (networking.mdx, "Identity Ports")."""
        port_map: dict[str, int] = {}
        identity: dict[str, int] = {}
        for key in ports:
            number, proto = key.split("/")
            if int(number) < IDENTITY_PORT_MIN:
                port_map[key] = self._allocate_port_locked(machine)
                continue
            for _ in range(100):
                host = self._allocate_port_locked(machine)
                if f"{host}/{proto}" not in port_map and f"{host}/{proto}" not in ports:
                    break
                machine.used_ports.discard(host)
            else:
                raise _invalid_args(f"machine {machine.machine_id} has no free direct port for {key}")
            port_map[f"{host}/{proto}"] = host
            identity[key] = host
        return port_map, identity

    def _allocate_port_locked(self, machine: Machine) -> int:
        for _ in range(1000):
            port = machine.direct_port_start + int(self.draw() * machine.direct_port_count)
            if port not in machine.used_ports:
                machine.used_ports.add(port)
                return port
        raise _invalid_args(f"machine {machine.machine_id} has no free direct port left")

    def _owned_locked(self, caller: Caller, instance_id: int) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None or inst.user_id != caller.user.user_id:
            raise _no_such_instance(instance_id)
        return inst

    def _row_locked(self, inst: Instance) -> dict[str, Any]:
        addresses = [self.overlays[o].members[inst.instance_id] for o in inst.overlay_ids if o in self.overlays] \
            if self._faults.overlay_address_in_local_ipaddrs else []
        return instance_row(inst, now=self.clock.now(), epoch_of=self.clock.epoch, overlay_addresses=addresses,
                            min_bid=round(inst.machine.bid_price * inst.num_gpus, 4))

    def get_instance(self, caller: Caller, instance_id: int) -> dict[str, Any]:
        """``GET /instances/{id}/``: ``{"instances": row}``, or ``{"instances": null}`` once it is gone."""
        caller.require_account_key()
        self.tick()
        with self._lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.user_id != caller.user.user_id:
                return {"instances": None}
            return {"instances": self._row_locked(inst)}

    def _user_rows(self, caller: Caller) -> list[dict[str, Any]]:
        self.tick()
        with self._lock:
            return [self._row_locked(inst) for inst in self.instances.values()
                    if inst.user_id == caller.user.user_id]

    def list_instances(self, caller: Caller, params: dict[str, str]) -> dict[str, Any]:
        """``GET /api/v1/instances/``: one page, ``next_token`` an opaque cursor."""
        caller.require_account_key()
        try:
            return list_page(self._user_rows(caller), params)
        except QueryError as exc:
            raise _error(400, exc.error, str(exc)) from None

    def list_instances_legacy(self, caller: Caller) -> dict[str, Any]:
        """Deprecated ``GET /api/v0/instances/``: every instance, no paging."""
        caller.require_account_key()
        return {"instances": sorted(self._user_rows(caller), key=lambda r: r["id"])}

    def instance_filters(self, caller: Caller) -> dict[str, Any]:
        caller.require_account_key()
        combos = {(r["actual_status"], r["verification"], r["gpu_name"]) for r in self._user_rows(caller)}
        return {"filters": [{"actual_status": a, "verification": v, "gpu_name": g} for a, v, g in sorted(
            combos, key=str)]}

    def update_instance(self, caller: Caller, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /instances/{id}/``: ``{"state": "stopped"|"running"}`` and/or ``{"label": str}``."""
        state = body.get("state")
        has_label = "label" in body
        if caller.instance_scope is not None:
            caller.require_instance(instance_id)
            if state != "stopped" or has_label:
                caller.require_account_key()
        if state is None and not has_label:
            raise _error(400, "invalid_args", "nothing to change: send state (running|stopped) or label")
        if state is not None and state not in ("running", "stopped"):
            raise _error(400, "invalid_args", f"state: {state!r} is unknown; allowed: running, stopped")
        label = body.get("label")
        if has_label and label is not None and (not isinstance(label, str) or len(label) > LABEL_MAX):
            raise _error(400, "invalid_args", f"label: must be a string of at most {LABEL_MAX} characters "
                                              f"(label_instance)")
        self.tick()
        actions: list[Callable[[], None]] = []
        with self._lock:
            inst = self._owned_locked(caller, instance_id)
            reply: dict[str, Any] = {"success": True}
            if has_label:
                inst.label = label
                self.ledger[instance_id].label = label
                reply["msg"] = f"label for {instance_id} set to {label}."
            if state == "stopped" and inst.intended_status != "stopped":
                self._stop_locked(inst, "user", None, actions)
            elif state == "running":
                self._start_locked(caller.user, inst)
        self._run(actions)
        return reply

    def _start_locked(self, user: User, inst: Instance) -> None:
        if inst.intended_status == "running" and inst.stop_reason is None and \
                inst.actual_status in ("running", "loading", None):
            return
        if user.credit <= 0:
            raise _error(400, "insufficient_credit", "Your account has no credit left; add credit to start "
                                                     "instances.")
        if inst.is_bid and not self._bid_wins_locked(inst):
            # Vast shows this as "scheduling": wanted running, waiting for the bid to win.
            inst.intended_status = inst.next_state = "running"
            inst.stop_reason = inst.stop_reason or "outbid"
            return
        self._restart_locked(inst, self.clock.now())

    def _bid_wins_locked(self, inst: Instance) -> bool:
        floor = inst.machine.bid_price * inst.num_gpus
        return inst.bid is not None and inst.bid >= max(floor, inst.rival_bid or 0.0)

    def bulk_update(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /instances/`` with ``{"state", "ids"}``."""
        caller.require_account_key()
        ids = body.get("ids")
        if not isinstance(ids, list):
            raise _error(400, "invalid_args", "ids: a list of instance ids is required")
        for instance_id in ids:
            try:
                self.update_instance(caller, int(instance_id), {"state": body.get("state")})
            except MarketError as exc:
                if exc.status != 404:
                    raise
        return {"success": True}

    def destroy_instance(self, caller: Caller, instance_id: int) -> dict[str, Any]:
        """``DELETE /instances/{id}/``: frees the GPUs at once; 404 ``no_such_instance`` when already gone."""
        caller.require_instance(instance_id)
        self.tick()
        actions: list[Callable[[], None]] = []
        with self._lock:
            inst = self._owned_locked(caller, instance_id)
            self._destroy_locked(inst, "destroyed by the renter", actions)
        self._run(actions)
        return {"success": True, "msg": f"Instance {instance_id} destroyed."}

    def _destroy_locked(self, inst: Instance, reason: str, actions: list[Callable[[], None]]) -> None:
        machine = inst.machine
        machine.free_gpus += inst.num_gpus
        for port in inst.port_map.values():
            machine.used_ports.discard(port)
        self._touch(machine)
        for overlay_id in inst.overlay_ids:
            overlay = self.overlays.get(overlay_id)
            if overlay is not None:
                overlay.members.pop(inst.instance_id, None)
        self._keys.pop(inst.api_key, None)
        del self.instances[inst.instance_id]
        entry = self.ledger[inst.instance_id]
        entry.destroyed_at = self.clock.epoch()
        entry.label = inst.label
        self._set_ledger_reason(inst, reason)
        inst.boot_gen += 1
        actions.append(lambda iid=inst.instance_id: self.runtime.destroy(iid))

    def destroy_instances(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``DELETE /instances/`` with ``{"instance_ids": [...]}``; ids already gone are skipped."""
        caller.require_account_key()
        ids = body.get("instance_ids") or body.get("ids")
        if not isinstance(ids, list):
            raise _error(400, "invalid_args", "instance_ids: a list of instance ids is required")
        self.tick()
        actions: list[Callable[[], None]] = []
        destroyed = []
        with self._lock:
            for raw in ids:
                inst = self.instances.get(int(raw))
                if inst is not None and inst.user_id == caller.user.user_id:
                    self._destroy_locked(inst, "destroyed by the renter", actions)
                    destroyed.append(inst.instance_id)
        self._run(actions)
        return {"success": True, "destroyed": destroyed}

    def change_bid(self, caller: Caller, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /instances/bid_price/{id}/``: a new bid in $/h for the whole instance; a winning one resumes it."""
        caller.require_account_key()
        price_raw = body.get("price")
        self.tick()
        with self._lock:
            inst = self._owned_locked(caller, instance_id)
            floor = inst.machine.bid_price * inst.num_gpus
            if price_raw is None:
                price = round(max(floor, inst.rival_bid or 0.0) * 1.1 + 0.001, 4)  # "a winning bid"
            else:
                try:
                    price = float(price_raw)
                except (TypeError, ValueError):
                    raise _error(400, "invalid_args", "Please set a bid price >= 0.001.") from None
            if price < 0.001:
                raise _error(400, "invalid_args", "Please set a bid price >= 0.001.")
            if not inst.is_bid:
                raise _error(400, "invalid_args", f"Instance {instance_id} is on-demand: only interruptible "
                                                  "instances have a bid.")
            inst.bid = price
            self.ledger[instance_id].price = price
            if inst.stop_reason in ("outbid", "bid_too_low") and self._bid_wins_locked(inst):
                inst.rival_bid = None
                self._restart_locked(inst, self.clock.now())
        return {"success": True}

    def reboot_instance(self, caller: Caller, instance_id: int) -> dict[str, Any]:
        caller.require_account_key()
        self.tick()
        actions: list[Callable[[], None]] = []
        with self._lock:
            inst = self._owned_locked(caller, instance_id)
            if inst.intended_status == "running" and inst.stop_reason is None:
                actions.append(lambda: self.runtime.stop(instance_id))
                self._restart_locked(inst, self.clock.now())
        self._run(actions)
        return {"success": True}

    # --- per-instance SSH keys

    def attach_ssh(self, caller: Caller, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        key = body.get("ssh_key")
        if not isinstance(key, str) or not key.strip():
            raise _error(400, "no_ssh_key", "No ssh key provided")
        key = key.strip()
        actions: list[Callable[[], None]] = []
        with self._lock:
            inst = self._owned_locked(caller, instance_id)
            if all(entry["public_key"] != key for entry in inst.instance_keys):
                self._next_ssh_key_id += 1
                inst.instance_keys.append({"id": self._next_ssh_key_id, "name": _key_name(key), "public_key": key})
            if key not in inst.authorized_keys:
                inst.authorized_keys.append(key)
                if inst.actual_status == "running" and not inst.booting:
                    inst.keys_applied = len(inst.authorized_keys)
                    actions.append(lambda: self.runtime.add_authorized_key(instance_id, key))
        self._run(actions)
        return {"success": True, "msg": f"SSH key added to instance {instance_id}."}

    def instance_ssh_keys(self, caller: Caller, instance_id: int) -> dict[str, Any]:
        caller.require_account_key()
        with self._lock:
            inst = self._owned_locked(caller, instance_id)
            return {"success": True, "ssh_keys": json.dumps(inst.instance_keys)}

    def detach_ssh(self, caller: Caller, instance_id: int, key_id: int) -> dict[str, Any]:
        caller.require_account_key()
        with self._lock:
            inst = self._owned_locked(caller, instance_id)
            entry = next((k for k in inst.instance_keys if k["id"] == key_id), None)
            if entry is None:
                raise _error(404, "no_such_ssh_key", f"SSH key {key_id} is not attached to instance {instance_id}.")
            inst.instance_keys.remove(entry)
            if entry["public_key"] in inst.authorized_keys:
                inst.authorized_keys.remove(entry["public_key"])
        return {"success": True, "msg": "SSH key removed from instance."}

    # ------------------------------------------------------------------------------------------------------------
    # Overlays and clusters

    def _require_overlays(self) -> None:
        """The switch ``overlays_available: false``: answer as an account without overlay networks [inferred]."""
        if not self._faults.overlays_available:
            raise MarketError(OVERLAYS_UNAVAILABLE_STATUS, dict(OVERLAYS_UNAVAILABLE_BODY))

    def _overlay_by_name_locked(self, user: User, name: str) -> Overlay | None:
        return next((o for o in self.overlays.values() if o.user_id == user.user_id and o.name == name), None)

    def _add_member_locked(self, overlay: Overlay, inst: Instance) -> str:
        if inst.instance_id in overlay.members:
            return overlay.members[inst.instance_id]
        if overlay.next_host > 254:
            raise _error(400, "invalid_args", f"overlay {overlay.name!r} has no free address left in "
                                              f"{overlay.internal_subnet}")
        base = overlay.internal_subnet.split("/")[0].rsplit(".", 1)[0]
        address = f"{base}.{overlay.next_host}"
        overlay.next_host += 1
        overlay.members[inst.instance_id] = address
        inst.overlay_ids.append(overlay.overlay_id)
        return address

    def list_overlays(self, caller: Caller) -> list[dict[str, Any]]:
        caller.require_account_key()
        self._require_overlays()
        with self._lock:
            return [{"overlay_id": o.overlay_id, "name": o.name, "internal_subnet": o.internal_subnet,
                     "cluster_id": o.cluster_id, "instances": list(o.members)}
                    for o in self.overlays.values() if o.user_id == caller.user.user_id]

    def create_overlay(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        self._require_overlays()
        name, cluster_raw = body.get("name"), body.get("cluster_id")
        if not isinstance(name, str) or not _OVERLAY_NAME.match(name):
            raise _error(400, "invalid_args", f"name: {name!r} must be 1-64 characters of lowercase a-z, 0-9 and -")
        try:
            cluster_id = int(cluster_raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _error(400, "invalid_args", f"cluster_id: {cluster_raw!r} is not a cluster id") from None
        with self._lock:
            if cluster_id not in self.clusters:
                raise _error(404, "not_found", f"Cluster {cluster_id} does not exist.")
            if self._overlay_by_name_locked(caller.user, name) is not None:
                raise _error(400, "invalid_args", f"An overlay named {name!r} already exists on this account.")
            overlay_id = self._next_overlay_id
            self._next_overlay_id += 1
            subnet = f"10.{(overlay_id >> 8) & 0xFF}.{overlay_id & 0xFF}.0/24"
            self.overlays[overlay_id] = Overlay(overlay_id, name, cluster_id, caller.user.user_id, subnet)
        self._run([lambda: self.runtime.create_overlay(overlay_id, subnet)])
        return {"success": True, "msg": f"Overlay network {name} created on cluster {cluster_id}."}

    def join_overlay(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /overlay/``: only for an instance on a machine of the overlay's physical cluster."""
        caller.require_account_key()
        self._require_overlays()
        name, raw_id = body.get("name"), body.get("instance_id")
        try:
            instance_id = int(raw_id)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _error(400, "invalid_args", f"instance_id: {raw_id!r} is not an instance id") from None
        actions: list[Callable[[], None]] = []
        with self._lock:
            overlay = self._overlay_by_name_locked(caller.user, str(name))
            if overlay is None:
                raise _error(404, "not_found", f"Overlay {name!r} does not exist on this account.")
            inst = self._owned_locked(caller, instance_id)
            if inst.machine.cluster_id != overlay.cluster_id:
                raise _error(400, "invalid_args",
                             f"Instance {instance_id} is on machine {inst.machine.machine_id}, which is not in "
                             f"cluster {overlay.cluster_id} of overlay {overlay.name!r}.")
            self._add_member_locked(overlay, inst)
            if inst.actual_status == "running" and not inst.booting:
                for overlay_id, address, prefix in self._pending_joins_locked(inst):
                    actions.append(lambda o=overlay_id, a=address, p=prefix:
                                   self.runtime.join_overlay(o, instance_id, a, p))
        self._run(actions)
        return {"success": True, "msg": f"Instance {instance_id} joined overlay {overlay.name}."}

    def delete_overlay(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``DELETE /overlay/`` by ``overlay_id`` or ``overlay_name``; members leave it (they are not destroyed)."""
        caller.require_account_key()
        self._require_overlays()
        with self._lock:
            if body.get("overlay_id") is not None:
                try:
                    wanted = int(body["overlay_id"])
                except (TypeError, ValueError):
                    raise _error(400, "invalid_args", f"overlay_id: {body['overlay_id']!r} is not an id") from None
                overlay = self.overlays.get(wanted)
                if overlay is not None and overlay.user_id != caller.user.user_id:
                    overlay = None
            elif body.get("overlay_name") is not None:
                overlay = self._overlay_by_name_locked(caller.user, str(body["overlay_name"]))
            else:
                raise _error(400, "invalid_args", "send overlay_id or overlay_name")
            if overlay is None:
                raise _error(404, "not_found", "Overlay not found.")
            for instance_id in overlay.members:
                inst = self.instances.get(instance_id)
                if inst is not None:
                    inst.overlay_ids.remove(overlay.overlay_id)
                    inst.joined_overlays.discard(overlay.overlay_id)
            del self.overlays[overlay.overlay_id]
            overlay_id = overlay.overlay_id
        self._run([lambda: self.runtime.delete_overlay(overlay_id)])
        return {"success": True, "msg": f"Overlay {overlay.name} deleted."}

    def list_clusters(self, caller: Caller) -> dict[str, Any]:
        """Host view: the clusters this account owns as a host. Emulated renters own none [inferred]."""
        caller.require_account_key()
        return {"clusters": {}}

    # ------------------------------------------------------------------------------------------------------------
    # Account

    def current_user(self, caller: Caller) -> dict[str, Any]:
        """``GET /users/current/``; never carries any api_key."""
        caller.require_account_key()
        self.tick()
        with self._lock:
            user = caller.user
            first_key = next(iter(user.ssh_keys.values()), None)
            return {
                "id": user.user_id, "username": user.username, "email": user.email, "fullname": user.username,
                "credit": round(user.credit, 6), "balance": 0.0, "balance_threshold": 0.0,
                "balance_threshold_enabled": False, "billed_expected": 0.0, "billed_verified": 0.0,
                "billing_creditonly": True, "can_pay": user.credit > 0, "has_billing": True, "has_payout": False,
                "email_verified": True, "got_signup_credit": True, "last4": None, "paid_expected": 0.0,
                "paid_verified": 0.0, "paypal_email": None,
                "ssh_key": first_key.public_key if first_key else None,
                "key_id": None, "sid": None,
            }

    def list_ssh_keys(self, caller: Caller) -> list[dict[str, Any]]:
        """``GET /ssh/``: the account's keys; 404 when it has none (show_ssh_keys.yaml)."""
        caller.require_account_key()
        with self._lock:
            if not caller.user.ssh_keys:
                raise MarketError(NO_SSH_KEYS_STATUS, dict(NO_SSH_KEYS_BODY))
            return [{"id": k.key_id, "user_id": k.user_id, "key": k.public_key,
                     "created_at": k.created_at, "deleted_at": None} for k in caller.user.ssh_keys.values()]

    def create_ssh_key(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        key = body.get("ssh_key")
        if not isinstance(key, str) or not key.strip():
            raise _error(400, "no_ssh_key", "No ssh key provided")
        with self._lock:
            self._next_ssh_key_id += 1
            record = AccountSshKey(self._next_ssh_key_id, caller.user.user_id, key.strip(), self.clock.epoch())
            caller.user.ssh_keys[record.key_id] = record
            return {"success": True, "key": {"id": record.key_id, "user_id": record.user_id,
                                             "public_key": record.public_key, "created_at": record.created_at,
                                             "deleted_at": None}}

    def update_ssh_key(self, caller: Caller, key_id: int, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        key = body.get("ssh_key")
        if not isinstance(key, str) or not key.strip():
            raise _error(400, "no_ssh_key", "No ssh key provided")
        with self._lock:
            record = caller.user.ssh_keys.get(key_id)
            if record is None:
                raise _error(404, "not_found", f"SSH key {key_id} not found.")
            record.public_key = key.strip()
        return {"success": True}

    def delete_ssh_key(self, caller: Caller, key_id: int) -> dict[str, Any]:
        caller.require_account_key()
        with self._lock:
            if caller.user.ssh_keys.pop(key_id, None) is None:
                raise _error(404, "not_found", f"SSH key {key_id} not found.")
        return {"success": True}

    # ------------------------------------------------------------------------------------------------------------
    # Admin (the /_emulator/ API and tests)

    def trigger_outbid(self, instance_id: int, rival_bid: float | None = None) -> dict[str, Any]:
        actions: list[Callable[[], None]] = []
        with self._lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                raise _no_such_instance(instance_id)
            if not inst.is_bid:
                raise _error(400, "invalid_args", f"Instance {instance_id} is on-demand: it cannot be outbid.")
            self._outbid_locked(inst, rival_bid, actions)
            rival = inst.rival_bid
        self._run(actions)
        return {"success": True, "rival_bid": rival}

    def trigger_failure(self, instance_id: int, kind: FailureKind) -> dict[str, Any]:
        actions: list[Callable[[], None]] = []
        with self._lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                raise _no_such_instance(instance_id)
            self._fail_locked(inst, kind, actions)
        self._run(actions)
        return {"success": True, "kind": kind.value}

    def set_credit(self, credit: float, user_id: int | None = None) -> dict[str, Any]:
        with self._lock:
            user = self.users.get(user_id) if user_id is not None else self.default_user
            if user is None:
                raise _error(404, "not_found", f"User {user_id} not found.")
            user.credit = float(credit)
            if user.credit > 0:
                user.credit_exhausted = False
            return {"success": True, "user_id": user.user_id, "credit": user.credit}

    def dump(self) -> dict[str, Any]:
        """Everything a test or benchmark may audit. Carries no API key of any kind."""
        self.tick()
        with self._lock:
            instances = []
            for inst in self.instances.values():
                row = self._row_locked(inst)
                row.update({"user_id": inst.user_id, "stop_reason": inst.stop_reason, "bid": inst.bid,
                            "rival_bid": inst.rival_bid, "cost": round(inst.cost, 6)})
                instances.append(row)
            return {
                "clock": {"now": self.clock.now(), "epoch": self.clock.epoch(), "scale": self.clock.scale},
                "users": [{"id": u.user_id, "username": u.username, "credit": round(u.credit, 6)}
                          for u in self.users.values()],
                "instances": instances,
                "overlays": [{"overlay_id": o.overlay_id, "name": o.name, "cluster_id": o.cluster_id,
                              "user_id": o.user_id, "internal_subnet": o.internal_subnet,
                              "members": {str(k): v for k, v in o.members.items()}}
                             for o in self.overlays.values()],
                "ledger": [asdict(entry) for entry in self.ledger.values()],
                "market": {"scenario": self.scenario.name, "seed": self.scenario.seed,
                           "machines": len(self.machines), "clusters": len(self.clusters),
                           "offers": len(self._rows_locked())},
                "account_key_leaks": self.account_key_leaks,
            }

    def close(self) -> None:
        """Destroy what the runtime still holds for live instances, then close the runtime."""
        with self._lock:
            ids = list(self.instances)
        for instance_id in ids:
            self._safe(self.runtime.destroy, instance_id)
        self._safe(self.runtime.close)
        self._pool.shutdown(wait=True, cancel_futures=True)
