"""Seeded market generator and the named scenarios.

The same (scenario, seed) always gives the same machines, ids and prices, so a failing test can be replayed.
``default`` also carries fixed "anchor" supply (a US physical cluster of RTX 4090 machines with reliability >= 0.98,
and high-reliability offers of every GPU model) so every documented example can be placed whatever the random seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from skyward_ray.emulator.catalog import CPU_MODELS, DRIVERS, GPU_BY_NAME, GPU_MODELS, LOCATIONS, MOBOS, GpuModel
from skyward_ray.emulator.faults import FaultConfig, RateLimitConfig
from skyward_ray.emulator.records import Machine

SCENARIOS = ("default", "scarce", "chaos", "bench")
DEFAULT_CREDIT = 1000.0

_CUDA_BY_DRIVER = {"535": 12.2, "550": 12.4, "560": 12.6, "570": 12.8, "575": 12.9}


@dataclass
class Scenario:
    name: str
    seed: int
    machines: list[Machine]
    faults: FaultConfig = field(default_factory=FaultConfig)
    credit: float = DEFAULT_CREDIT


def _documentation_ips() -> Iterator[str]:
    """Fake public addresses, only from the documentation ranges (never routable, never connected to)."""
    while True:
        for prefix in ("198.51.100", "203.0.113"):
            for host in range(1, 255):
                yield f"{prefix}.{host}"


def _model_fields(model: GpuModel) -> dict[str, Any]:
    """What a machine takes from its GPU model as is."""
    return {"gpu_name": model.name, "gpu_ram": model.gpu_ram_mb, "gpu_arch": model.arch,
            "compute_cap": model.compute_cap, "total_flops": model.tflops, "gpu_mem_bw": model.mem_bw,
            "gpu_max_power": model.max_power}


class _Generator:
    def __init__(self, seed: int, name: str) -> None:
        self.rng = random.Random(f"skyward-emulator:{name}:{seed}")
        self._machine_ids = iter(self.rng.sample(range(10_000, 99_999), 20_000))
        self._host_ids = iter(self.rng.sample(range(1_000, 300_000), 20_000))
        self._cluster_ids = iter(range(self.rng.randrange(100, 900), 10**6))
        self._ips = _documentation_ips()
        self.machines: list[Machine] = []

    def _pick_weighted(self, items: tuple[tuple[object, float], ...]) -> object:
        values, weights = zip(*items, strict=True)
        return self.rng.choices(values, weights=weights)[0]

    def model(self) -> GpuModel:
        return self.rng.choices(GPU_MODELS, weights=[m.weight for m in GPU_MODELS])[0]

    def location(self) -> str:
        return str(self._pick_weighted(LOCATIONS))

    def machine(self, model: GpuModel, *, location: str, num_gpus: int | None = None, host_id: int | None = None,
                public_ip: str | None = None, cluster_id: int | None = None, datacenter: bool | None = None,
                reliability: float | None = None, verified: bool | None = None) -> Machine:
        rng = self.rng
        n = num_gpus if num_gpus is not None else int(self._pick_weighted(model.counts))  # type: ignore[arg-type]
        dc = datacenter if datacenter is not None else rng.random() < model.datacenter_bias
        if reliability is None:
            reliability = 0.6 + 0.399 * rng.betavariate(6, 1.3)
        verification = self._verification(dc, verified)
        gpu_price = round(rng.uniform(*model.price_per_gpu), 4)
        bid_price = round(gpu_price * rng.uniform(0.3, 0.7), 4)
        driver = rng.choice(DRIVERS)
        cpu_name, cpu_cores, cpu_ghz = rng.choice(CPU_MODELS)
        port_count = rng.choice((16, 32, 64, 100, 200, 500, 1000))
        dlperf_factor = rng.uniform(0.85, 1.05)
        machine = Machine(
            machine_id=next(self._machine_ids),
            host_id=host_id if host_id is not None else next(self._host_ids),
            cluster_id=cluster_id,
            geolocation=location,
            num_gpus=n,
            **_model_fields(model),
            cuda_max_good=_CUDA_BY_DRIVER[driver.split(".")[0]] if model.arch == "nvidia" else 0.0,
            driver_version=driver,
            reliability2=round(min(max(reliability, 0.6), 0.999), 4),
            verification=verification,
            hosting_type=1 if dc else 0,
            disk_space=float(n * rng.choice((64, 128, 256, 512, 1024))),
            inet_up=float(rng.choice((10_000, 5_000, 2_000)) if dc else rng.choice((100, 300, 500, 800, 1000))),
            inet_down=float(rng.choice((10_000, 5_000, 2_000)) if dc else rng.choice((300, 500, 900, 1000, 2000))),
            gpu_price=gpu_price,
            bid_price=bid_price,
            storage_cost=round(rng.uniform(0.05, 0.3), 3),
            direct_port_count=port_count,
            direct_port_start=rng.randrange(10_000, 60_000 - port_count),
            public_ipaddr=public_ip or next(self._ips),
            cpu_name=cpu_name,
            cpu_cores=cpu_cores,
            cpu_ghz=cpu_ghz,
            cpu_ram=n * rng.choice((32, 64, 128)) * 1024,
            mobo_name=rng.choice(MOBOS),
            pci_gen=rng.choice((3.0, 4.0, 4.0, 5.0)),
            pcie_bw=round(rng.uniform(6, 50), 1),
            disk_bw=round(rng.uniform(800, 7000), 1),
            disk_name=rng.choice(("Samsung SSD 990 PRO", "SAMSUNG MZQL23T8HCLS", "KINGSTON SFYRD4000G", "Micron 7450")),
            os_version=rng.choice(("20.04", "22.04", "22.04", "24.04")),
            static_ip=dc or rng.random() < 0.4,
            dlperf=round(model.tflops * dlperf_factor * 1.2, 2),
            bw_nvlink=model.nvlink if n > 1 else 0.0,
            external=rng.random() < 0.04,
            duration_s=rng.uniform(3, 180) * 86_400,
            inet_up_cost=round(rng.uniform(0.0, 0.02), 4),
            inet_down_cost=round(rng.uniform(0.0, 0.02), 4),
        )
        self.machines.append(machine)
        return machine

    def _verification(self, datacenter: bool, verified: bool | None) -> str:
        """Datacenters are nearly always verified, other hosts mostly; a few are deverified."""
        if verified is not None:
            return "verified" if verified else "unverified"
        roll = self.rng.random()
        if (datacenter and roll < 0.95) or roll < 0.7:
            return "verified"
        return "unverified" if roll < 0.95 else "deverified"

    def standalone(self, count: int) -> None:
        """Hosts with 1-3 machines each at one place, sharing one public address, as home and small hosts do."""
        made = 0
        while made < count:
            location, host_id, ip = self.location(), next(self._host_ids), next(self._ips)
            model = self.model()
            for _ in range(min(self.rng.choice((1, 1, 1, 2, 3)), count - made)):
                self.machine(model, location=location, host_id=host_id, public_ip=ip)
                made += 1

    def cluster(self, model: GpuModel, size: int, *, location: str | None = None, gpus_per_machine: int | None = None,
                min_reliability: float = 0.95) -> int:
        """A physical cluster: one datacenter host, one place, machines on a shared fast LAN."""
        cluster_id, host_id = next(self._cluster_ids), next(self._host_ids)
        location = location or self.location()
        n = gpus_per_machine or int(self._pick_weighted(tuple((c, w) for c, w in model.counts if c >= 2)
                                                         or model.counts))  # type: ignore[arg-type]
        for _ in range(size):
            self.machine(model, location=location, num_gpus=n, host_id=host_id, cluster_id=cluster_id,
                         datacenter=True, verified=True,
                         reliability=self.rng.uniform(min_reliability, 0.999))
        return cluster_id

    def random_clusters(self, count: int) -> None:
        datacenter_models = [m for m in GPU_MODELS if m.datacenter_bias >= 0.2]
        for _ in range(count):
            self.cluster(self.rng.choice(datacenter_models), self.rng.randint(2, 16))

    def anchors(self) -> None:
        """Fixed supply every documented example needs (see the module docstring)."""
        self.cluster(GPU_BY_NAME["RTX 4090"], 6, location="Texas, US", gpus_per_machine=4, min_reliability=0.985)
        self.cluster(GPU_BY_NAME["H100 SXM"], 4, location="Virginia, US", gpus_per_machine=8, min_reliability=0.98)
        self.cluster(GPU_BY_NAME["A100 SXM4"], 4, location="Hesse, DE", gpus_per_machine=8, min_reliability=0.97)
        self.cluster(GPU_BY_NAME["RTX 3090"], 3, location="Seoul, KR", gpus_per_machine=4, min_reliability=0.95)
        for model in GPU_MODELS:
            for location, n in (("California, US", 1), ("New York, US", max(c for c, _ in model.counts))):
                self.machine(model, location=location, num_gpus=n, reliability=self.rng.uniform(0.97, 0.998),
                             verified=True)


def build_scenario(name: str, seed: int = 0) -> Scenario:
    """The machines (and fault switches) of a named scenario; see :data:`SCENARIOS`."""
    if name not in SCENARIOS:
        raise ValueError(f"scenario: {name!r} is unknown; allowed: {', '.join(SCENARIOS)}")
    gen = _Generator(seed, name)
    faults = FaultConfig()
    credit = DEFAULT_CREDIT
    if name in ("default", "chaos"):
        gen.anchors()
        gen.random_clusters(4)
        gen.standalone(260)
    elif name == "scarce":
        gen.cluster(GPU_BY_NAME["RTX 4090"], 2, location="California, US", gpus_per_machine=1, min_reliability=0.9)
        gen.standalone(25)
        credit = 50.0
    elif name == "bench":
        gen.anchors()
        gen.random_clusters(40)
        gen.standalone(5000)
    if name == "chaos":
        faults = FaultConfig(
            rate_limit=RateLimitConfig(enabled=True, body="mixed"),  # documented limits, every 429 body form
            error_5xx_rate=0.03,
            lost_response_rate=0.01,
            latency_ms=15,
            latency_jitter_ms=30,
            latency_spike_rate=0.02,
            latency_spike_ms=1500,
            offer_taken_rate=0.1,
            outbid_rate_per_hour=0.5,
            host_failure_rate_per_hour=0.2,
            boot_failure_rate=0.05,
            price_drift_pct_per_hour=5.0,
        )
    return Scenario(name=name, seed=seed, machines=gen.machines, faults=faults, credit=credit)

