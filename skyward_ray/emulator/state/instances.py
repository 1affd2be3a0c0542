"""Instances: renting an offer, the renter's state changes (stop, start, label, bid, reboot, destroy) and the keys
attached to one instance. Every method returns records or nothing; the HTTP layer renders them."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from skyward_ray.emulator.documented import IDENTITY_PORT_MIN, MAX_OPEN_PORTS
from skyward_ray.emulator.errors import bad_request, error, invalid_args, no_such_ask
from skyward_ray.emulator.faults import FailureKind
from skyward_ray.emulator.records import Caller, Instance, LedgerEntry, Machine, Overlay, RentalOrder, User
from skyward_ray.emulator.search import split_offer_id
from skyward_ray.emulator.state.core import Actions
from skyward_ray.emulator.state.lifecycle import Lifecycle

log = logging.getLogger(__name__)


def key_name(public_key: str) -> str:
    """The comment of an OpenSSH public key, which Vast shows as the key's name."""
    parts = public_key.split()
    return parts[2][:64] if len(parts) > 2 else ""


class InstanceStore(Lifecycle):
    """Rentals. A stopped or outbid instance keeps its GPUs (they are not offered to others) until destroyed."""

    def create_instance(self, user: User, ask_id: int, order: RentalOrder) -> Instance:
        """``PUT /asks/{id}/``. A bid below ``min_bid`` still creates the instance, stopped, and raises 400
        ``invalid_price`` naming it."""
        self.tick()
        actions: Actions = []
        try:
            with self.lock:
                return self._create_locked(user, ask_id, order, actions)
        finally:
            self.run(actions)

    def _create_locked(self, user: User, ask_id: int, order: RentalOrder, actions: Actions) -> Instance:
        self._guard_account_keys(order)
        machine_id, n = split_offer_id(int(ask_id))
        machine = self.machines.get(machine_id)
        if machine is None or not 1 <= n <= machine.num_gpus or not machine.listed or machine.free_gpus < n:
            raise no_such_ask(ask_id)
        overlays = self._order_overlays_locked(user, order, machine, ask_id)
        ports = self._open_ports(order, machine)
        if self.faults.offer_taken_rate > 0 and self.draw() < self.faults.offer_taken_rate:
            machine.free_gpus -= n
            machine.rival_holds.append((self.clock.now() + self.faults.rival_hold_s, n))
            self.held.add(machine)
            self.touch(machine)
            raise no_such_ask(ask_id)
        hourly = (order.bid if order.bid is not None else round(machine.gpu_price * n, 4)) + \
            order.disk * machine.storage_cost / 30 / 24
        if user.credit < hourly:
            raise error(400, "insufficient_credit", f"Your credit (${user.credit:.2f}) does not cover one hour of this "
                                                    f"rental (${hourly:.4f}/h). Add credit on the Billing page.")
        inst = self._new_instance_locked(user, int(ask_id), n, order, ports)
        for overlay in overlays:
            self.add_member_locked(overlay, inst)
        self.ledger[inst.instance_id] = LedgerEntry(
            instance_id=inst.instance_id, user_id=user.user_id, machine_id=machine_id, offer_id=int(ask_id),
            gpu_name=machine.gpu_name, num_gpus=n, is_bid=order.bid is not None,
            price=round(hourly if order.bid is None else order.bid, 6), label=order.label,
            created_at=self.clock.epoch(inst.created_at))
        min_bid = round(machine.bid_price * n, 4)
        if order.bid is not None and order.bid < min_bid:
            self._refuse_low_bid_locked(inst, order.bid, min_bid, int(ask_id), actions)
        return inst

    def _refuse_low_bid_locked(self, inst: Instance, bid: float, min_bid: float, ask_id: int,
                               actions: Actions) -> None:
        self.stop_locked(inst, "bid_too_low",
                         f"Instance stopped: your bid ${bid:.4f}/h is below the minimum bid ${min_bid:.4f}/h", actions)
        raise error(400, "invalid_price",
                    f"Your bid ${bid:.4f}/h is below the minimum bid ${min_bid:.4f}/h for offer {ask_id}: "
                    f"instance {inst.instance_id} was created stopped and starts once the bid wins.",
                    new_contract=inst.instance_id, ask_id=ask_id)

    def _order_overlays_locked(self, user: User, order: RentalOrder, machine: Machine, ask_id: int) -> list[Overlay]:
        """The overlays ``-n`` names: each must exist on the account and span the offer's machine."""
        overlays = []
        for name in order.env.overlays:
            overlay = self.overlay_by_name_locked(user, name)
            if overlay is None:
                raise invalid_args(f"env: overlay {name!r} does not exist on this account")
            if overlay.cluster_id != machine.cluster_id:
                raise invalid_args(f"env: overlay {name!r} is on cluster {overlay.cluster_id}; offer {ask_id} is on "
                                   f"machine {machine.machine_id}, outside that cluster")
            overlays.append(overlay)
        return overlays

    @staticmethod
    def _open_ports(order: RentalOrder, machine: Machine) -> list[str]:
        """networking.mdx: ssh runtypes open 22, jupyter 8080 too; "args" opens only what is asked for."""
        runtype = order.runtype
        ports = ["22/tcp"] if any(t.startswith(("ssh", "jupyter")) for t in runtype.split()) else []
        if "jupyter" in runtype:
            ports.append("8080/tcp")
        ports += [p for p in order.env.ports if p not in ports]
        if len(ports) > MAX_OPEN_PORTS:
            raise invalid_args(f"env: {len(ports)} open ports requested; at most {MAX_OPEN_PORTS} per instance")
        if len(ports) > machine.direct_port_count:
            raise invalid_args(f"env: {len(ports)} ports requested; machine {machine.machine_id} has "
                               f"{machine.direct_port_count} direct ports")
        return ports

    def _new_instance_locked(self, user: User, ask_id: int, n: int, order: RentalOrder, ports: list[str]) -> Instance:
        """The instance record, its ports and keys, registered on the market (GPUs taken, key issued)."""
        machine = self.machines[split_offer_id(ask_id)[0]]
        now = self.clock.now()
        instance_id = self.next_instance_id
        self.next_instance_id += 1 + int(self.draw() * 20)
        port_map, identity_ports = self._map_ports_locked(machine, ports)
        keys = list(user.ssh_keys.values())
        inst = Instance(
            instance_id=instance_id, user_id=user.user_id, machine=machine, offer_id=ask_id, num_gpus=n,
            is_bid=order.bid is not None, bid=order.bid, dph_base=round(machine.gpu_price * n, 4), disk=order.disk,
            storage_cost=machine.storage_cost, image=order.image, env_pairs=order.env.pairs,
            user_env=order.env.variables, port_map=port_map, identity_ports=identity_ports, label=order.label,
            onstart=order.onstart, runtype=order.runtype, args=order.args, api_key=secrets.token_hex(32),
            created_at=now, hostname=order.env.hostname or f"C.{instance_id}",
            authorized_keys=[key.public_key for key in keys],
            instance_keys=[{"id": k.key_id, "name": key_name(k.public_key), "public_key": k.public_key} for k in keys],
            loading_at=now + self.boot_delay_s * 0.2, ready_at=now + self.boot_delay_s,
        )
        inst.ssh_port = port_map.get("22/tcp")
        inst.ssh_host = machine.public_ipaddr if inst.ssh_port is not None else None
        if self.faults.boot_failure_rate > 0 and self.draw() < self.faults.boot_failure_rate:
            kinds = [k for k in self.faults.host_failure_kinds if k is not FailureKind.OFFLINE] or \
                [FailureKind.EXITED]
            inst.boot_fault = self.choice(kinds).value
        machine.free_gpus -= n
        self.touch(machine)
        self.instances[instance_id] = inst
        self.api_keys[inst.api_key] = (user.user_id, instance_id)
        return inst

    def _guard_account_keys(self, order: RentalOrder) -> None:
        """An account key must never reach an instance. Count every request that tries, keep such entries out of the
        instance's environment, and let tests assert ``account_key_leaks == 0``."""
        keys = [user.api_key for user in self.users.values()]
        texts = [str(t) for t in (order.label, order.onstart, *(order.args or [])) if t]
        texts += [part for pair in order.env.pairs for part in pair]
        if not any(key in text for key in keys for text in texts):
            return
        self.account_key_leaks += 1
        log.warning("a create request carried an account API key (label, env, onstart or args); it is kept out of "
                    "the instance environment")
        env = order.env
        env.variables = {k: v for k, v in env.variables.items() if not any(key in k or key in v for key in keys)}

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
                raise invalid_args(f"machine {machine.machine_id} has no free direct port for {key}")
            port_map[f"{host}/{proto}"] = host
            identity[key] = host
        return port_map, identity

    def _allocate_port_locked(self, machine: Machine) -> int:
        for _ in range(1000):
            port = machine.direct_port_start + int(self.draw() * machine.direct_port_count)
            if port not in machine.used_ports:
                machine.used_ports.add(port)
                return port
        raise invalid_args(f"machine {machine.machine_id} has no free direct port left")

    def instances_of_locked(self, user: User) -> list[Instance]:
        return [inst for inst in self.instances.values() if inst.user_id == user.user_id]

    def update_instance(self, caller: Caller, instance_id: int, state: str | None, label: str | None,
                        has_label: bool) -> None:
        """``PUT /instances/{id}/``: a new state and/or label; stop and start are idempotent."""
        self.tick()
        actions: Actions = []
        with self.lock:
            inst = self.owned_locked(caller, instance_id)
            if has_label:
                inst.label = label
                self.ledger[instance_id].label = label
            if state == "stopped" and inst.intended_status != "stopped":
                self.stop_locked(inst, "user", None, actions)
            elif state == "running":
                self._start_locked(caller.user, inst)
        self.run(actions)

    def _start_locked(self, user: User, inst: Instance) -> None:
        if inst.intended_status == "running" and inst.stop_reason is None and \
                inst.actual_status in ("running", "loading", None):
            return
        if user.credit <= 0:
            raise error(400, "insufficient_credit", "Your account has no credit left; add credit to start instances.")
        if inst.is_bid and not self.bid_wins_locked(inst):
            # Vast shows this as "scheduling": wanted running, waiting for the bid to win.
            inst.intended_status = inst.next_state = "running"
            inst.stop_reason = inst.stop_reason or "outbid"
            return
        self.restart_locked(inst, self.clock.now())

    def destroy_instance(self, caller: Caller, instance_id: int) -> None:
        """Frees the GPUs at once; 404 ``no_such_instance`` when already gone."""
        self.tick()
        actions: Actions = []
        with self.lock:
            inst = self.owned_locked(caller, instance_id)
            self._destroy_locked(inst, "destroyed by the renter", actions)
        self.run(actions)

    def destroy_instances(self, caller: Caller, ids: list[Any]) -> list[int]:
        """Destroy every one of ``ids`` the caller owns; the ids destroyed (those already gone are skipped)."""
        self.tick()
        actions: Actions = []
        destroyed = []
        with self.lock:
            for raw in ids:
                inst = self.instances.get(int(raw))
                if inst is not None and inst.user_id == caller.user.user_id:
                    self._destroy_locked(inst, "destroyed by the renter", actions)
                    destroyed.append(inst.instance_id)
        self.run(actions)
        return destroyed

    def _destroy_locked(self, inst: Instance, reason: str, actions: Actions) -> None:
        machine = inst.machine
        machine.free_gpus += inst.num_gpus
        for port in inst.port_map.values():
            machine.used_ports.discard(port)
        self.touch(machine)
        for overlay_id in inst.overlay_ids:
            overlay = self.overlays.get(overlay_id)
            if overlay is not None:
                overlay.members.pop(inst.instance_id, None)
        self.api_keys.pop(inst.api_key, None)
        del self.instances[inst.instance_id]
        entry = self.ledger[inst.instance_id]
        entry.destroyed_at = self.clock.epoch()
        entry.label = inst.label
        self.set_ledger_reason(inst, reason)
        inst.boot_gen += 1
        actions.append(lambda iid=inst.instance_id: self.runtime.destroy(iid))

    def change_bid(self, caller: Caller, instance_id: int, price: float | None) -> None:
        """A new bid in $/h for the whole instance (None: a winning one); a winning bid resumes it."""
        self.tick()
        with self.lock:
            inst = self.owned_locked(caller, instance_id)
            if price is None:
                floor = inst.machine.bid_price * inst.num_gpus
                price = round(max(floor, inst.rival_bid or 0.0) * 1.1 + 0.001, 4)
            if not inst.is_bid:
                raise bad_request(f"Instance {instance_id} is on-demand: only interruptible instances have a bid.")
            inst.bid = price
            self.ledger[instance_id].price = price
            if inst.stop_reason in ("outbid", "bid_too_low") and self.bid_wins_locked(inst):
                inst.rival_bid = None
                self.restart_locked(inst, self.clock.now())

    def reboot_instance(self, caller: Caller, instance_id: int) -> None:
        self.tick()
        actions: Actions = []
        with self.lock:
            inst = self.owned_locked(caller, instance_id)
            if inst.intended_status == "running" and inst.stop_reason is None:
                actions.append(lambda: self.runtime.stop(instance_id))
                self.restart_locked(inst, self.clock.now())
        self.run(actions)

    def attach_ssh(self, caller: Caller, instance_id: int, key: str) -> None:
        """``POST /instances/{id}/ssh/``: the key can log in at once when the instance runs, else once it boots."""
        actions: Actions = []
        with self.lock:
            inst = self.owned_locked(caller, instance_id)
            if all(entry["public_key"] != key for entry in inst.instance_keys):
                self.next_ssh_key_id += 1
                inst.instance_keys.append({"id": self.next_ssh_key_id, "name": key_name(key), "public_key": key})
            if key not in inst.authorized_keys:
                inst.authorized_keys.append(key)
                if inst.actual_status == "running" and not inst.booting:
                    inst.keys_applied = len(inst.authorized_keys)
                    actions.append(lambda: self.runtime.add_authorized_key(instance_id, key))
        self.run(actions)

    def detach_ssh(self, caller: Caller, instance_id: int, key_id: int) -> None:
        with self.lock:
            inst = self.owned_locked(caller, instance_id)
            entry = next((k for k in inst.instance_keys if k["id"] == key_id), None)
            if entry is None:
                raise error(404, "no_such_ssh_key", f"SSH key {key_id} is not attached to instance {instance_id}.")
            inst.instance_keys.remove(entry)
            if entry["public_key"] in inst.authorized_keys:
                inst.authorized_keys.remove(entry["public_key"])
