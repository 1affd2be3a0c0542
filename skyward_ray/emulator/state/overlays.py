"""Overlay networks: a private /24 spanning the instances of one physical cluster, wired by the host runtime."""

from __future__ import annotations

from skyward_ray.emulator.documented import OVERLAYS_UNAVAILABLE_BODY, OVERLAYS_UNAVAILABLE_STATUS
from skyward_ray.emulator.errors import MarketError, bad_request, error
from skyward_ray.emulator.records import Caller, Overlay, User
from skyward_ray.emulator.state.core import Actions
from skyward_ray.emulator.state.lifecycle import Lifecycle


class OverlayStore(Lifecycle):
    """An overlay's address lives on each member's ``eth0`` (runtime), not in ``local_ipaddrs``."""

    def require_overlays(self) -> None:
        """The switch ``overlays_available: false``: answer as an account without overlay networks [inferred]."""
        if not self.faults.overlays_available:
            raise MarketError(OVERLAYS_UNAVAILABLE_STATUS, dict(OVERLAYS_UNAVAILABLE_BODY))

    def overlays_of_locked(self, user: User) -> list[Overlay]:
        return [o for o in self.overlays.values() if o.user_id == user.user_id]

    def create_overlay(self, user: User, name: str, cluster_id: int) -> Overlay:
        with self.lock:
            if cluster_id not in self.clusters:
                raise error(404, "not_found", f"Cluster {cluster_id} does not exist.")
            if self.overlay_by_name_locked(user, name) is not None:
                raise bad_request(f"An overlay named {name!r} already exists on this account.")
            overlay_id = self.next_overlay_id
            self.next_overlay_id += 1
            subnet = f"10.{(overlay_id >> 8) & 0xFF}.{overlay_id & 0xFF}.0/24"
            overlay = Overlay(overlay_id, name, cluster_id, user.user_id, subnet)
            self.overlays[overlay_id] = overlay
        self.run([lambda: self.runtime.create_overlay(overlay_id, subnet)])
        return overlay

    def join_overlay(self, caller: Caller, name: str, instance_id: int) -> Overlay:
        """Only an instance on a machine of the overlay's physical cluster may join."""
        actions: Actions = []
        with self.lock:
            overlay = self.overlay_by_name_locked(caller.user, name)
            if overlay is None:
                raise error(404, "not_found", f"Overlay {name!r} does not exist on this account.")
            inst = self.owned_locked(caller, instance_id)
            if inst.machine.cluster_id != overlay.cluster_id:
                raise bad_request(f"Instance {instance_id} is on machine {inst.machine.machine_id}, which is not in "
                                  f"cluster {overlay.cluster_id} of overlay {overlay.name!r}.")
            self.add_member_locked(overlay, inst)
            if inst.actual_status == "running" and not inst.booting:
                for overlay_id, address, prefix in self.pending_joins_locked(inst):
                    actions.append(lambda o=overlay_id, a=address, p=prefix:
                                   self.runtime.join_overlay(o, instance_id, a, p))
        self.run(actions)
        return overlay

    def delete_overlay(self, user: User, overlay_id: int | None, name: str | None) -> Overlay:
        """Delete by id or by name; members leave it (they are not destroyed)."""
        with self.lock:
            if overlay_id is not None:
                overlay = self.overlays.get(overlay_id)
                if overlay is not None and overlay.user_id != user.user_id:
                    overlay = None
            else:
                overlay = self.overlay_by_name_locked(user, str(name))
            if overlay is None:
                raise error(404, "not_found", "Overlay not found.")
            for member_id in overlay.members:
                inst = self.instances.get(member_id)
                if inst is not None:
                    inst.overlay_ids.remove(overlay.overlay_id)
                    inst.joined_overlays.discard(overlay.overlay_id)
            del self.overlays[overlay.overlay_id]
        self.run([lambda: self.runtime.delete_overlay(overlay.overlay_id)])
        return overlay
