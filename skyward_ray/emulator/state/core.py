"""The state every resource shares: one re-entrant lock over every record, one clock, the seeded fault RNG, and the
state transitions of an instance. Runtime calls (a second each with ``netns``) are collected under the lock as
``actions`` and run after it is released (:meth:`MarketCore.run`)."""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.errors import bad_request, no_such_instance
from skyward_ray.emulator.faults import FailureKind, FaultConfig
from skyward_ray.emulator.records import Caller, Instance, LedgerEntry, Machine, Overlay, User
from skyward_ray.emulator.runtime import HostRuntime, NoneRuntime
from skyward_ray.emulator.scenarios import Scenario, build_scenario

log = logging.getLogger(__name__)

Actions = list[Callable[[], None]]
DRIFT_STEP_S = 60.0  # prices move in steps, so cached offer rows survive between steps
OCI_MESSAGE = ("Error response from daemon: failed to create task for container: failed to create shim task: "
               "OCI runtime create failed: runc create failed: unable to start container process: error during "
               "container init: error running hook #0: exit status 1 [emulator]")


class MarketCore:
    """Records and the rules that move one instance between states. Thread-safe: ``lock`` guards every record."""

    def __init__(self, scenario: Scenario | str = "default", *, seed: int = 0, clock: Clock | None = None,
                 runtime: HostRuntime | None = None, boot_delay_s: float = 3.0, faults: FaultConfig | None = None,
                 runtime_workers: int = 8) -> None:
        if isinstance(scenario, str):
            scenario = build_scenario(scenario, seed)
        if boot_delay_s < 0:
            raise ValueError(f"boot_delay_s: {boot_delay_s!r} is negative; allowed: >= 0")
        self.scenario = scenario
        self.clock = clock or Clock()
        self.runtime: HostRuntime = runtime or NoneRuntime()
        self.boot_delay_s = float(boot_delay_s)
        self._faults = faults or scenario.faults
        self.lock = threading.RLock()
        self._rng = random.Random(f"skyward-emulator-faults:{scenario.name}:{scenario.seed}")
        self._rng_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=runtime_workers, thread_name_prefix="emulator-runtime")
        self.epoch0 = self.clock.epoch(0.0)
        self.machines: dict[int, Machine] = {m.machine_id: m for m in scenario.machines}
        self.machine_order = list(self.machines.values())
        self.clusters: dict[int, list[Machine]] = {}
        for machine in self.machine_order:
            if machine.cluster_id is not None:
                self.clusters.setdefault(machine.cluster_id, []).append(machine)
        self.users: dict[int, User] = {}
        self.api_keys: dict[str, tuple[int, int | None]] = {}  # api key -> (user id, instance scope)
        self.instances: dict[int, Instance] = {}
        self.overlays: dict[int, Overlay] = {}
        self.ledger: dict[int, LedgerEntry] = {}
        self.next_instance_id = self._rng.randrange(9_000_000, 9_500_000)
        self.next_overlay_id = 1
        self.next_ssh_key_id = self._rng.randrange(10_000, 20_000)
        self.all_rows: list[dict[str, Any]] | None = None  # every offer row; None = rebuild
        self.account_key_leaks = 0
        self.held: set[Machine] = set()  # machines with GPUs taken by rival renters (released on the clock)
        self.last_tick = self.clock.now()
        self.next_drift = self.last_tick + DRIFT_STEP_S

    # --- faults and the seeded RNG

    @property
    def faults(self) -> FaultConfig:
        return self._faults

    def set_faults(self, faults: FaultConfig) -> None:
        with self.lock:
            self._faults = faults

    def draw(self) -> float:
        """One draw from the seeded fault RNG (thread-safe)."""
        with self._rng_lock:
            return self._rng.random()

    def choice(self, items: list[Any]) -> Any:
        with self._rng_lock:
            return self._rng.choice(items)

    def uniform(self, low: float, high: float) -> float:
        with self._rng_lock:
            return self._rng.uniform(low, high)

    def gauss_factors(self, sigma: float, count: int) -> list[float]:
        with self._rng_lock:
            return [math.exp(self._rng.gauss(0.0, sigma)) for _ in range(count)]

    # --- runtime calls, outside the lock

    def run(self, actions: Iterable[Callable[[], None]]) -> None:
        """Run runtime calls outside the lock, in parallel (boots can take seconds each), and wait for them."""
        futures: list[Future[None]] = [self._pool.submit(self.safe, action) for action in actions]
        for future in futures:
            future.result()

    @staticmethod
    def safe(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("emulator runtime call failed")

    def shutdown_pool(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- lookups (under the lock)

    def owned_locked(self, caller: Caller, instance_id: int) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None or inst.user_id != caller.user.user_id:
            raise no_such_instance(instance_id)
        return inst

    def overlay_by_name_locked(self, user: User, name: str) -> Overlay | None:
        return next((o for o in self.overlays.values() if o.user_id == user.user_id and o.name == name), None)

    def overlay_addresses_locked(self, inst: Instance) -> list[str]:
        return [self.overlays[o].members[inst.instance_id] for o in inst.overlay_ids if o in self.overlays]

    def touch(self, machine: Machine) -> None:
        """Forget the cached offer rows of ``machine`` (its free GPUs, price or listing changed)."""
        machine.offer_rows = None
        self.all_rows = None

    def set_ledger_reason(self, inst: Instance, reason: str) -> None:
        entry = self.ledger.get(inst.instance_id)
        if entry is not None and entry.end_reason is None:
            entry.end_reason = reason

    # --- overlay membership (under the lock)

    def add_member_locked(self, overlay: Overlay, inst: Instance) -> str:
        """Overlay members get .1, .2, ... of the overlay's /24 in join order."""
        if inst.instance_id in overlay.members:
            return overlay.members[inst.instance_id]
        if overlay.next_host > 254:
            raise bad_request(f"overlay {overlay.name!r} has no free address left in {overlay.internal_subnet}")
        base = overlay.internal_subnet.split("/")[0].rsplit(".", 1)[0]
        address = f"{base}.{overlay.next_host}"
        overlay.next_host += 1
        overlay.members[inst.instance_id] = address
        inst.overlay_ids.append(overlay.overlay_id)
        return address

    def pending_joins_locked(self, inst: Instance) -> list[tuple[int, str, int]]:
        """(overlay id, address, prefix) of every overlay the runtime has yet to wire; marks them wired."""
        joins = []
        for overlay_id in inst.overlay_ids:
            overlay = self.overlays.get(overlay_id)
            if overlay is None or overlay_id in inst.joined_overlays:
                continue
            address = overlay.members[inst.instance_id]
            joins.append((overlay_id, address, int(overlay.internal_subnet.split("/")[1])))
            inst.joined_overlays.add(overlay_id)
        return joins

    # --- state transitions (under the lock; runtime calls appended to ``actions``)

    def stop_locked(self, inst: Instance, reason: str, message: str | None, actions: Actions) -> None:
        inst.intended_status = inst.cur_state = inst.next_state = "stopped"
        inst.actual_status = "stopped"
        inst.status_msg = message
        inst.stop_reason = reason
        inst.running_since = None
        inst.booting = False
        inst.boot_gen += 1
        inst.joined_overlays.clear()
        actions.append(lambda iid=inst.instance_id: self.runtime.stop(iid))

    def outbid_locked(self, inst: Instance, rival: float | None, actions: Actions) -> None:
        floor = inst.machine.bid_price * inst.num_gpus
        if rival is None:
            rival = max(inst.bid or 0.0, floor) * self.uniform(1.05, 1.5)
        inst.rival_bid = round(rival, 4)
        self.stop_locked(inst, "outbid", f"Instance stopped: outbid by a higher bid (${inst.rival_bid:.4f}/h > your "
                                         f"${(inst.bid or 0):.4f}/h)", actions)

    def _halt(self, inst: Instance, actions: Actions) -> None:
        inst.booting = False
        inst.boot_gen += 1
        inst.running_since = None
        inst.joined_overlays.clear()
        actions.append(lambda iid=inst.instance_id: self.runtime.stop(iid))

    def fail_locked(self, inst: Instance, kind: FailureKind, actions: Actions) -> None:
        """Leave the status fields the way Vast shows ``kind``; an offline host takes every instance on it along."""
        if kind is FailureKind.OFFLINE:
            inst.booting = False
            inst.boot_gen += 1
            inst.running_since = None
            inst.joined_overlays.clear()
            machine = inst.machine
            machine.listed = False
            self.touch(machine)
            for other in self.instances.values():
                if other.machine is machine and other.actual_status not in ("stopped",):
                    other.actual_status, other.status_msg = "offline", "host machine is offline"
                    self._halt(other, actions)
            return
        if kind is FailureKind.EXITED:
            inst.actual_status, inst.status_msg = "exited", "container exited unexpectedly (exit code 137)"
        elif kind is FailureKind.STUCK_LOADING:
            inst.actual_status, inst.status_msg, inst.stuck = "loading", None, True
        else:
            inst.actual_status, inst.status_msg = "created", OCI_MESSAGE
        self._halt(inst, actions)

    def restart_locked(self, inst: Instance, now: float) -> None:
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

    def bid_wins_locked(self, inst: Instance) -> bool:
        floor = inst.machine.bid_price * inst.num_gpus
        return inst.bid is not None and inst.bid >= max(floor, inst.rival_bid or 0.0)
