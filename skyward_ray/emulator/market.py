"""The marketplace as Vast's API, in process: each method parses a wire body (:mod:`.parse`), asks the state
(:mod:`.state`, which returns records) and renders the answer (:mod:`.rows`, :mod:`.render`). The HTTP app and tests
call these methods; refusals raise :class:`~skyward_ray.emulator.errors.MarketError`.
"""

from __future__ import annotations

import json
from typing import Any

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.documented import NO_SSH_KEYS_BODY, NO_SSH_KEYS_STATUS
from skyward_ray.emulator.errors import MarketError, bad_request, error
from skyward_ray.emulator.faults import FailureKind, FaultConfig
from skyward_ray.emulator.parse import (
    int_field,
    overlay_name,
    overlay_selector,
    parse_bid,
    parse_rental,
    parse_update,
    ssh_key,
)
from skyward_ray.emulator.records import Caller, Instance, User
from skyward_ray.emulator.render import created_ssh_key, dump, overlay_row, ssh_key_row, user_body
from skyward_ray.emulator.rows import instance_row, list_page
from skyward_ray.emulator.runtime import HostRuntime
from skyward_ray.emulator.scenarios import Scenario
from skyward_ray.emulator.search import QueryError, compile_offer_query, finish_offer
from skyward_ray.emulator.state.backend import MarketBackend


class Market:
    """Vast's endpoints over one :class:`MarketBackend` (``state``). Thread-safe; any method from any thread."""

    def __init__(self, scenario: Scenario | str = "default", *, seed: int = 0, api_key: str | None = None,
                 clock: Clock | None = None, runtime: HostRuntime | None = None, boot_delay_s: float = 3.0,
                 faults: FaultConfig | None = None, credit: float | None = None, runtime_workers: int = 8) -> None:
        self.state = state = MarketBackend(scenario, seed=seed, api_key=api_key, clock=clock, runtime=runtime,
                                           boot_delay_s=boot_delay_s, faults=faults, credit=credit,
                                           runtime_workers=runtime_workers)
        # The state's records, for tests and the admin API (the same objects, never copies).
        self.scenario, self.clock, self.runtime = state.scenario, state.clock, state.runtime
        self.machines, self.clusters, self.users = state.machines, state.clusters, state.users
        self.instances, self.overlays, self.ledger = state.instances, state.overlays, state.ledger
        self.default_user: User = state.default_user
        self.tick, self.authenticate, self.add_user, self.draw = state.tick, state.authenticate, state.add_user, \
            state.draw
        self.set_faults, self.offer_count, self.gpu_names = state.set_faults, state.offer_count, state.gpu_names

    @property
    def faults(self) -> FaultConfig:
        return self.state.faults

    def close(self) -> None:
        self.state.close()

    def row(self, inst: Instance) -> dict[str, Any]:
        """The wire row of ``inst`` (call under ``state.lock``)."""
        state = self.state
        addresses = state.overlay_addresses_locked(inst) if state.faults.overlay_address_in_local_ipaddrs else []
        return instance_row(inst, now=state.clock.now(), epoch_of=state.clock.epoch, overlay_addresses=addresses,
                            min_bid=round(inst.machine.bid_price * inst.num_gpus, 4))

    # --- offers

    def search(self, query: Any, caller: Caller | None) -> dict[str, Any]:
        """``POST /bundles/``: ``{"offers": [...]}``."""
        try:
            plan = compile_offer_query(query, self.state.offer_fields)
        except QueryError as exc:
            raise error(400, exc.error, str(exc)) from None
        rows, ctx = self.state.search(plan, caller)
        return {"offers": [finish_offer(row, ctx, rank, plan.reserved) for rank, row in enumerate(rows, start=1)]}

    # --- instances

    def create_instance(self, caller: Caller, ask_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /asks/{id}/``. Raises MarketError for every refusal (a bid below min_bid still creates)."""
        caller.require_account_key()
        inst = self.state.create_instance(caller.user, ask_id, parse_rental(body))
        return {"success": True, "new_contract": inst.instance_id, "instance_api_key": inst.api_key}

    def create_instances_bulk(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /asks/bulk/`` [inferred response shape]: one result per offer id, in order."""
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids:
            raise bad_request("ids: a non-empty list of offer ids is required")
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

    def get_instance(self, caller: Caller, instance_id: int) -> dict[str, Any]:
        """``GET /instances/{id}/``: ``{"instances": row}``, or ``{"instances": null}`` once it is gone."""
        caller.require_account_key()
        self.state.tick()
        with self.state.lock:
            inst = self.state.instances.get(instance_id)
            if inst is None or inst.user_id != caller.user.user_id:
                return {"instances": None}
            return {"instances": self.row(inst)}

    def _user_rows(self, caller: Caller) -> list[dict[str, Any]]:
        self.state.tick()
        with self.state.lock:
            return [self.row(inst) for inst in self.state.instances_of_locked(caller.user)]

    def list_instances(self, caller: Caller, params: dict[str, str]) -> dict[str, Any]:
        """``GET /api/v1/instances/``: one page, ``next_token`` an opaque cursor."""
        caller.require_account_key()
        try:
            return list_page(self._user_rows(caller), params)
        except QueryError as exc:
            raise error(400, exc.error, str(exc)) from None

    def list_instances_legacy(self, caller: Caller) -> dict[str, Any]:
        """Deprecated ``GET /api/v0/instances/``: every instance, no paging."""
        caller.require_account_key()
        return {"instances": sorted(self._user_rows(caller), key=lambda r: r["id"])}

    def instance_filters(self, caller: Caller) -> dict[str, Any]:
        caller.require_account_key()
        combos = {(r["actual_status"], r["verification"], r["gpu_name"]) for r in self._user_rows(caller)}
        return {"filters": [{"actual_status": a, "verification": v, "gpu_name": g}
                            for a, v, g in sorted(combos, key=str)]}

    def update_instance(self, caller: Caller, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /instances/{id}/``: ``{"state": "stopped"|"running"}`` and/or ``{"label": str}``. An instance key may
        only stop its own instance."""
        if caller.instance_scope is not None:
            caller.require_instance(instance_id)
            if body.get("state") != "stopped" or "label" in body:
                caller.require_account_key()
        state, has_label, label = parse_update(body)
        self.state.update_instance(caller, instance_id, state, label, has_label)
        reply: dict[str, Any] = {"success": True}
        if has_label:
            reply["msg"] = f"label for {instance_id} set to {label}."
        return reply

    def bulk_update(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /instances/`` with ``{"state", "ids"}``; ids already gone are skipped."""
        caller.require_account_key()
        ids = body.get("ids")
        if not isinstance(ids, list):
            raise bad_request("ids: a list of instance ids is required")
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
        self.state.destroy_instance(caller, instance_id)
        return {"success": True, "msg": f"Instance {instance_id} destroyed."}

    def destroy_instances(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``DELETE /instances/`` with ``{"instance_ids": [...]}``; ids already gone are skipped."""
        caller.require_account_key()
        ids = body.get("instance_ids") or body.get("ids")
        if not isinstance(ids, list):
            raise bad_request("instance_ids: a list of instance ids is required")
        return {"success": True, "destroyed": self.state.destroy_instances(caller, ids)}

    def change_bid(self, caller: Caller, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /instances/bid_price/{id}/``: a new bid in $/h for the whole instance; a winning one resumes it."""
        caller.require_account_key()
        self.state.tick()
        with self.state.lock:
            self.state.owned_locked(caller, instance_id)  # 404 before any complaint about the price
        self.state.change_bid(caller, instance_id, parse_bid(body.get("price")))
        return {"success": True}

    def reboot_instance(self, caller: Caller, instance_id: int) -> dict[str, Any]:
        caller.require_account_key()
        self.state.reboot_instance(caller, instance_id)
        return {"success": True}

    def attach_ssh(self, caller: Caller, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        self.state.attach_ssh(caller, instance_id, ssh_key(body))
        return {"success": True, "msg": f"SSH key added to instance {instance_id}."}

    def instance_ssh_keys(self, caller: Caller, instance_id: int) -> dict[str, Any]:
        caller.require_account_key()
        with self.state.lock:
            inst = self.state.owned_locked(caller, instance_id)
            return {"success": True, "ssh_keys": json.dumps(inst.instance_keys)}

    def detach_ssh(self, caller: Caller, instance_id: int, key_id: int) -> dict[str, Any]:
        caller.require_account_key()
        self.state.detach_ssh(caller, instance_id, key_id)
        return {"success": True, "msg": "SSH key removed from instance."}

    # --- overlays and clusters

    def list_overlays(self, caller: Caller) -> list[dict[str, Any]]:
        caller.require_account_key()
        self.state.require_overlays()
        with self.state.lock:
            return [overlay_row(o) for o in self.state.overlays_of_locked(caller.user)]

    def create_overlay(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        self.state.require_overlays()
        name = overlay_name(body.get("name"))
        cluster_id = int_field("cluster_id", body.get("cluster_id"), "a cluster id")
        self.state.create_overlay(caller.user, name, cluster_id)
        return {"success": True, "msg": f"Overlay network {name} created on cluster {cluster_id}."}

    def join_overlay(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /overlay/``: only for an instance on a machine of the overlay's physical cluster."""
        caller.require_account_key()
        self.state.require_overlays()
        instance_id = int_field("instance_id", body.get("instance_id"), "an instance id")
        overlay = self.state.join_overlay(caller, str(body.get("name")), instance_id)
        return {"success": True, "msg": f"Instance {instance_id} joined overlay {overlay.name}."}

    def delete_overlay(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """``DELETE /overlay/`` by ``overlay_id`` or ``overlay_name``; members leave it (they are not destroyed)."""
        caller.require_account_key()
        self.state.require_overlays()
        overlay_id, name = overlay_selector(body)
        overlay = self.state.delete_overlay(caller.user, overlay_id, name)
        return {"success": True, "msg": f"Overlay {overlay.name} deleted."}

    def list_clusters(self, caller: Caller) -> dict[str, Any]:
        """Host view: the clusters this account owns as a host. Emulated renters own none [inferred]."""
        caller.require_account_key()
        return {"clusters": {}}

    # --- account

    def current_user(self, caller: Caller) -> dict[str, Any]:
        caller.require_account_key()
        self.state.tick()
        with self.state.lock:
            return user_body(caller.user)

    def list_ssh_keys(self, caller: Caller) -> list[dict[str, Any]]:
        """``GET /ssh/``: the account's keys; 404 when it has none (show_ssh_keys.yaml)."""
        caller.require_account_key()
        with self.state.lock:
            if not caller.user.ssh_keys:
                raise MarketError(NO_SSH_KEYS_STATUS, dict(NO_SSH_KEYS_BODY))
            return [ssh_key_row(k) for k in caller.user.ssh_keys.values()]

    def create_ssh_key(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        return created_ssh_key(self.state.create_ssh_key(caller.user, ssh_key(body)))

    def update_ssh_key(self, caller: Caller, key_id: int, body: dict[str, Any]) -> dict[str, Any]:
        caller.require_account_key()
        self.state.update_ssh_key(caller.user, key_id, ssh_key(body))
        return {"success": True}

    def delete_ssh_key(self, caller: Caller, key_id: int) -> dict[str, Any]:
        caller.require_account_key()
        self.state.delete_ssh_key(caller.user, key_id)
        return {"success": True}

    # --- admin (the /_emulator/ API and tests)

    def trigger_outbid(self, instance_id: int, rival_bid: float | None = None) -> dict[str, Any]:
        return {"success": True, "rival_bid": self.state.trigger_outbid(instance_id, rival_bid)}

    def trigger_failure(self, instance_id: int, kind: FailureKind) -> dict[str, Any]:
        self.state.trigger_failure(instance_id, kind)
        return {"success": True, "kind": kind.value}

    def set_credit(self, credit: float, user_id: int | None = None) -> dict[str, Any]:
        user = self.state.set_credit(credit, user_id, self.default_user)
        return {"success": True, "user_id": user.user_id, "credit": user.credit}

    def dump(self) -> dict[str, Any]:
        """Everything a test or benchmark may audit. Carries no API key of any kind."""
        self.state.tick()
        with self.state.lock:
            return dump(self.state, self.row)
