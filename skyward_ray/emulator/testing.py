"""Test helpers for anyone who needs a Vast marketplace: ``running_emulator()`` (an :class:`EmulatorServer` stopped on
exit), a bounded poll, a manual clock, hand-made machines and scenarios, a recording runtime, and the config reader
Ray's autoscaler v2 hands a provider.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from skyward_ray.emulator.records import Machine
from skyward_ray.emulator.runtime import InstanceSpec, NoneRuntime, RuntimeFailure
from skyward_ray.emulator.scenarios import Scenario
from skyward_ray.emulator.server import EmulatorServer

T = TypeVar("T")


@contextmanager
def running_emulator(**kwargs: Any) -> Iterator[EmulatorServer]:
    """A started emulator (``EmulatorServer(**kwargs)``), stopped on exit even when the body fails."""
    server = EmulatorServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: Callable[[], T], *, timeout_s: float = 10.0, interval_s: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class ManualClock:
    """A monotonic clock that moves only when told (``advance``, ``sleep`` or setting ``now``), so a test asserts
    intervals without waiting them out. Pass it where code takes a ``now``/``clock`` callable."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def make_machine(machine_id: int, **overrides: Any) -> Machine:
    """A hand-made machine for rule tests (all fields plausible; override what the test is about)."""
    fields: dict[str, Any] = {
        "machine_id": machine_id, "host_id": machine_id + 1, "cluster_id": None, "geolocation": "California, US",
        "gpu_name": "RTX 4090", "num_gpus": 8, "gpu_ram": 24564, "gpu_arch": "nvidia", "compute_cap": 890,
        "cuda_max_good": 12.4, "driver_version": "550.127.05", "reliability2": 0.99, "verification": "verified",
        "hosting_type": 1, "disk_space": 1000.0, "inet_up": 1000.0, "inet_down": 1000.0, "gpu_price": 0.4,
        "bid_price": 0.2, "storage_cost": 0.1, "direct_port_count": 100, "direct_port_start": 40000,
        "public_ipaddr": "198.51.100.10", "cpu_name": "AMD EPYC 7763 64-Core Processor", "cpu_cores": 128,
        "cpu_ghz": 2.45, "cpu_ram": 524288, "mobo_name": "ROMED8-2T", "pci_gen": 4.0, "pcie_bw": 25.0,
        "disk_bw": 3000.0, "disk_name": "Micron 7450", "os_version": "22.04", "static_ip": True,
        "total_flops": 82.6, "dlperf": 99.0, "gpu_mem_bw": 1008.0, "gpu_max_power": 450.0, "bw_nvlink": 0.0,
        "external": False, "duration_s": 30 * 86_400.0, "inet_up_cost": 0.01, "inet_down_cost": 0.01,
    }
    fields.update(overrides)
    return Machine(**fields)


def make_scenario(*machines: Machine, credit: float = 1000.0, name: str = "custom") -> Scenario:
    """A scenario of exactly these machines and no faults."""
    return Scenario(name=name, seed=0, machines=list(machines), credit=credit)


class RecordingRuntime(NoneRuntime):
    """A records-only runtime that remembers every call, for tests of what the market asks of a host.

    ``fail_start`` makes ``start`` raise :class:`RuntimeFailure` with that message.
    """

    name = "recording"

    def __init__(self, fail_start: str | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.specs: list[InstanceSpec] = []
        self.fail_start = fail_start
        self._lock = threading.Lock()

    def _record(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((name, args))

    def names(self, instance_id: int | None = None) -> list[str]:
        """The calls made, in order (only those about ``instance_id`` when given)."""
        with self._lock:
            return [name for name, args in self.calls
                    if instance_id is None or (args and instance_id in args[:2] and name != "create_overlay")]

    def start(self, spec: InstanceSpec) -> None:
        self._record("start", spec.instance_id)
        with self._lock:
            self.specs.append(spec)
        if self.fail_start:
            raise RuntimeFailure(self.fail_start)

    def stop(self, instance_id: int) -> None:
        self._record("stop", instance_id)

    def destroy(self, instance_id: int) -> None:
        self._record("destroy", instance_id)
        super().destroy(instance_id)

    def add_authorized_key(self, instance_id: int, public_key: str) -> None:
        self._record("add_authorized_key", instance_id, public_key)

    def create_overlay(self, overlay_id: int, subnet: str) -> None:
        self._record("create_overlay", overlay_id, subnet)

    def join_overlay(self, overlay_id: int, instance_id: int, address: str, prefix_len: int) -> None:
        self._record("join_overlay", overlay_id, instance_id, address, prefix_len)
        super().join_overlay(overlay_id, instance_id, address, prefix_len)

    def delete_overlay(self, overlay_id: int) -> None:
        self._record("delete_overlay", overlay_id)

    def close(self) -> None:
        self._record("close")


class AdapterConfigReader:
    """What Ray's autoscaler v2 ``NodeProviderAdapter`` reads from the autoscaling config (its ``IConfigReader``),
    for driving a provider the way Ray's monitor does without a cluster YAML: every node type gets ``node_config``
    and one GPU."""

    def __init__(self, cluster_name: str, node_config: dict[str, Any]) -> None:
        self._cluster_name = cluster_name
        self._node_config = dict(node_config)

    def get_cached_autoscaling_config(self) -> AdapterConfigReader:
        return self

    def get_cloud_node_config(self, node_type: str) -> dict[str, Any]:
        return dict(self._node_config)

    def get_node_resources(self, node_type: str) -> dict[str, float]:
        return {"GPU": 1}

    def get_node_labels(self, node_type: str) -> dict[str, str]:
        return {}

    def get_config(self, key: str, default: Any = None) -> Any:
        return {"cluster_name": self._cluster_name, "auth": {}}.get(key, default)
