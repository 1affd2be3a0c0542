"""The market's state as one object: every resource store over one lock and one clock, as moto's per-resource
backends combine into one service backend."""

from __future__ import annotations

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.faults import FaultConfig
from skyward_ray.emulator.runtime import HostRuntime
from skyward_ray.emulator.scenarios import Scenario
from skyward_ray.emulator.state.accounts import AccountStore
from skyward_ray.emulator.state.instances import InstanceStore
from skyward_ray.emulator.state.offers import OfferBook
from skyward_ray.emulator.state.overlays import OverlayStore


class MarketBackend(InstanceStore, OverlayStore, OfferBook, AccountStore):
    """Machines, offers, renters, instances, overlays and the ledger. Thread-safe; returns records."""

    def __init__(self, scenario: Scenario | str = "default", *, seed: int = 0, api_key: str | None = None,
                 clock: Clock | None = None, runtime: HostRuntime | None = None, boot_delay_s: float = 3.0,
                 faults: FaultConfig | None = None, credit: float | None = None, runtime_workers: int = 8) -> None:
        super().__init__(scenario, seed=seed, clock=clock, runtime=runtime, boot_delay_s=boot_delay_s, faults=faults,
                         runtime_workers=runtime_workers)
        self.offer_fields = self.collect_offer_fields()
        self.default_user = self.add_user(api_key=api_key,
                                          credit=self.scenario.credit if credit is None else credit)

    def close(self) -> None:
        """Destroy what the runtime still holds for live instances, then close the runtime."""
        with self.lock:
            ids = list(self.instances)
        for instance_id in ids:
            self.safe(self.runtime.destroy, instance_id)
        self.safe(self.runtime.close)
        self.shutdown_pool()
