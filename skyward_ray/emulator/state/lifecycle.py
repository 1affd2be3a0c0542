"""Time: everything the market clock makes happen (boots, billing, price drift, rival bids, host failures), and the
admin switches that make one of them happen now."""

from __future__ import annotations

import logging
import math

from skyward_ray.emulator.errors import bad_request, no_such_instance
from skyward_ray.emulator.faults import FailureKind
from skyward_ray.emulator.records import Instance
from skyward_ray.emulator.runtime import InstanceSpec, RuntimeFailure
from skyward_ray.emulator.state.core import DRIFT_STEP_S, Actions, MarketCore

log = logging.getLogger(__name__)


class Lifecycle(MarketCore):
    """The clock's rules. :meth:`tick` applies what happened since the last tick; every call path ticks first."""

    def tick(self) -> None:
        """Apply everything the clock says has happened since the last tick; run the runtime calls it implies."""
        with self.lock:
            actions = self._advance_locked()
        self.run(actions)

    def _advance_locked(self) -> Actions:
        now = self.clock.now()
        dt = max(0.0, now - self.last_tick)
        self.last_tick = now
        actions: Actions = []
        self._bill_locked(dt, actions)
        self._release_holds_locked(now)
        faults = self.faults
        if faults.price_drift_pct_per_hour > 0:
            while now >= self.next_drift:
                self.next_drift += DRIFT_STEP_S
                self._drift_locked(faults.price_drift_pct_per_hour, actions)
        elif now >= self.next_drift:
            self.next_drift = now + DRIFT_STEP_S
        hours = dt / 3600
        for inst in list(self.instances.values()):
            self._lifecycle_locked(inst, now, actions)
            if hours > 0:
                self._random_faults_locked(inst, hours, actions)
        return actions

    def _release_holds_locked(self, now: float) -> None:
        """GPUs rivals took come back when their hold ends."""
        for machine in list(self.held):
            kept = [(until, n) for until, n in machine.rival_holds if until > now]
            freed = sum(n for until, n in machine.rival_holds if until <= now)
            if freed:
                machine.rival_holds = kept
                machine.free_gpus += freed
                self.touch(machine)
            if not kept:
                self.held.discard(machine)

    def _random_faults_locked(self, inst: Instance, hours: float, actions: Actions) -> None:
        """Rival bids and host failures at their hourly rates (Poisson over ``hours``)."""
        faults = self.faults
        live = inst.intended_status == "running" and inst.actual_status in ("running", "loading", None)
        if inst.is_bid and live and faults.outbid_rate_per_hour > 0 and \
                self.draw() < 1 - math.exp(-faults.outbid_rate_per_hour * hours):
            self.outbid_locked(inst, None, actions)
            return
        if live and faults.host_failure_rate_per_hour > 0 and faults.host_failure_kinds and \
                self.draw() < 1 - math.exp(-faults.host_failure_rate_per_hour * hours):
            self.fail_locked(inst, self.choice(list(faults.host_failure_kinds)), actions)

    def _lifecycle_locked(self, inst: Instance, now: float, actions: Actions) -> None:
        """null -> loading -> (runtime start) -> running, on the instance's own timeline."""
        if inst.intended_status != "running" or inst.booting or inst.stop_reason is not None:
            return
        if inst.actual_status is None and now >= inst.loading_at:
            inst.actual_status = "loading"
        if inst.actual_status != "loading" or inst.stuck or now < inst.ready_at:
            return
        if inst.boot_fault is not None:
            kind, inst.boot_fault = inst.boot_fault, None
            self.fail_locked(inst, FailureKind(kind), actions)
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
        return InstanceSpec(instance_id=inst.instance_id, machine_id=inst.machine.machine_id, hostname=inst.hostname,
                            num_gpus=inst.num_gpus, port_map=dict(inst.port_map), env=env,
                            authorized_keys=tuple(inst.authorized_keys), onstart=inst.onstart)

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
        with self.lock:
            inst = self.instances.get(instance_id)
            stale = inst is None or inst.boot_gen != gen
            if not stale and inst is not None and error is not None:
                inst.booting = False
                inst.actual_status, inst.status_msg = "exited", error
                self.set_ledger_reason(inst, "boot failed")
                return
            joins = [] if stale or inst is None else self.pending_joins_locked(inst)
        if stale:
            if inst is None:  # destroyed while booting
                self.safe(self.runtime.destroy, instance_id)
            elif not inst.booting:  # stopped or failed while booting (a newer boot in flight owns it otherwise)
                self.safe(self.runtime.stop, instance_id)
            return
        for overlay_id, address, prefix in joins:
            self.safe(self.runtime.join_overlay, overlay_id, instance_id, address, prefix)
        self._mark_running(instance_id, gen, self.runtime.public_ip(instance_id,
                                                                    self.machines[spec.machine_id].public_ipaddr))

    def _mark_running(self, instance_id: int, gen: int, public_ip: str) -> None:
        """The boot succeeded: show it running and hand the runtime what arrived meanwhile (overlays, keys)."""
        late: Actions = []
        with self.lock:
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
            for overlay_id, address, prefix in self.pending_joins_locked(inst):
                late.append(lambda o=overlay_id, a=address, p=prefix: self.runtime.join_overlay(o, instance_id, a, p))
            for key in inst.authorized_keys[inst.keys_applied:]:
                late.append(lambda k=key: self.runtime.add_authorized_key(instance_id, k))
            inst.keys_applied = len(inst.authorized_keys)
        self.run(late)

    def _bill_locked(self, dt: float, actions: Actions) -> None:
        """Credit drains on the clock: GPU time while running, storage always; at zero every instance stops."""
        if dt <= 0:
            return
        hours = dt / 3600 * self.faults.credit_drain_multiplier
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
                        self.stop_locked(inst, "credit", "Instance stopped: account credit exhausted", actions)
            elif user.credit > 0:
                user.credit_exhausted = False

    def _drift_locked(self, pct_per_hour: float, actions: Actions) -> None:
        """One step of the price random walk (within half and twice the scenario's price); bids below the new floor
        are outbid."""
        sigma = pct_per_hour / 100 * math.sqrt(DRIFT_STEP_S / 3600)
        factors = self.gauss_factors(sigma, len(self.machine_order))
        for machine, factor in zip(self.machine_order, factors, strict=True):
            machine.gpu_price = round(min(max(machine.gpu_price * factor, machine.base_gpu_price * 0.5),
                                          machine.base_gpu_price * 2), 5)
            machine.bid_price = round(min(max(machine.bid_price * factor, machine.base_bid_price * 0.5),
                                          machine.base_bid_price * 2), 5)
            self.touch(machine)
        for inst in self.instances.values():
            floor = inst.machine.bid_price * inst.num_gpus
            if inst.is_bid and inst.bid is not None and inst.bid < floor and inst.intended_status == "running":
                self.outbid_locked(inst, floor, actions)

    # --- admin switches

    def trigger_outbid(self, instance_id: int, rival_bid: float | None = None) -> float | None:
        """Outbid an interruptible instance now; returns the rival bid."""
        actions: Actions = []
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                raise no_such_instance(instance_id)
            if not inst.is_bid:
                raise bad_request(f"Instance {instance_id} is on-demand: it cannot be outbid.")
            self.outbid_locked(inst, rival_bid, actions)
            rival = inst.rival_bid
        self.run(actions)
        return rival

    def trigger_failure(self, instance_id: int, kind: FailureKind) -> None:
        actions: Actions = []
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                raise no_such_instance(instance_id)
            self.fail_locked(inst, kind, actions)
        self.run(actions)
