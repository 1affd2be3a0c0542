"""What the emulated marketplace is made of: GPU models with Vast's exact spellings and plausible prices, and
Vast-style location texts. The emulator's own table (it must not share code with our client or placement).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    name: str  # exactly as Vast spells it, spaces included ("RTX 4090", "A100 SXM4", "RTX 6000Ada")
    gpu_ram_mb: int
    compute_cap: int  # CC x 100
    arch: str  # "nvidia" | "amd"
    price_per_gpu: tuple[float, float]  # on-demand $/h per GPU (low, high)
    counts: tuple[tuple[int, float], ...]  # GPUs per machine, with weights
    tflops: float  # per GPU (fp32-ish, for total_flops)
    mem_bw: float  # GB/s
    max_power: float  # W
    datacenter_bias: float  # P(hosting_type == 1)
    weight: float  # share of machines in a generated market
    nvlink: float = 0.0


# Prices follow public Vast listings of 2025-2026 (order of magnitude, not a quote).
GPU_MODELS: tuple[GpuModel, ...] = (
    GpuModel("RTX 4090", 24564, 890, "nvidia", (0.25, 0.60), ((1, 4), (2, 3), (4, 2), (8, 2)),
             82.6, 1008, 450, 0.2, 16),
    GpuModel("RTX 3090", 24576, 860, "nvidia", (0.13, 0.35), ((1, 4), (2, 3), (4, 2), (8, 1)),
             35.6, 936, 350, 0.15, 12),
    GpuModel("RTX 3080", 10240, 860, "nvidia", (0.07, 0.18), ((1, 5), (2, 2), (4, 1)), 29.8, 760, 320, 0.05, 7),
    GpuModel("RTX 3080 Ti", 12288, 860, "nvidia", (0.09, 0.22), ((1, 4), (2, 2), (4, 1)), 34.1, 912, 350, 0.05, 4),
    GpuModel("RTX 4080", 16376, 890, "nvidia", (0.15, 0.35), ((1, 4), (2, 2), (4, 1)), 48.7, 717, 320, 0.1, 5),
    GpuModel("RTX 5090", 32607, 1200, "nvidia", (0.45, 0.95), ((1, 4), (2, 2), (4, 1), (8, 1)),
             104.8, 1792, 575, 0.2, 6),
    GpuModel("RTX A5000", 24564, 860, "nvidia", (0.15, 0.35), ((1, 3), (2, 2), (4, 2), (8, 1)), 27.8, 768, 230, 0.4, 4),
    GpuModel("RTX A6000", 49140, 860, "nvidia", (0.35, 0.80), ((1, 3), (2, 2), (4, 2), (8, 2)), 38.7, 768, 300, 0.5, 5),
    GpuModel("RTX 6000Ada", 49140, 890, "nvidia", (0.60, 1.10), ((1, 2), (2, 2), (4, 2), (8, 2)),
             91.1, 960, 300, 0.6, 3),
    GpuModel("A40", 46068, 860, "nvidia", (0.35, 0.70), ((1, 2), (2, 2), (4, 2), (8, 2)), 37.4, 696, 300, 0.7, 3),
    GpuModel("L4", 23034, 890, "nvidia", (0.20, 0.45), ((1, 3), (2, 2), (4, 1), (8, 1)), 30.3, 300, 72, 0.7, 2),
    GpuModel("L40S", 46068, 890, "nvidia", (0.60, 1.10), ((1, 2), (2, 2), (4, 2), (8, 3)), 91.6, 864, 350, 0.8, 4),
    GpuModel("A10", 23028, 860, "nvidia", (0.20, 0.45), ((1, 3), (2, 2), (4, 1)), 31.2, 600, 150, 0.7, 2),
    GpuModel("A100 PCIE", 40960, 800, "nvidia", (0.70, 1.40), ((1, 3), (2, 2), (4, 2), (8, 2)),
             19.5, 1555, 250, 0.8, 4),
    GpuModel("A100 SXM4", 81920, 800, "nvidia", (0.90, 1.80), ((1, 1), (2, 1), (4, 2), (8, 5)),
             19.5, 2039, 400, 0.9, 5, 600),
    GpuModel("H100 PCIE", 81559, 900, "nvidia", (1.40, 2.40), ((1, 3), (2, 2), (4, 1), (8, 1)),
             51.2, 2000, 350, 0.9, 3),
    GpuModel("H100 SXM", 81559, 900, "nvidia", (1.50, 3.00), ((1, 1), (2, 1), (4, 1), (8, 6)),
             66.9, 3350, 700, 0.95, 5, 900),
    GpuModel("H200", 143771, 900, "nvidia", (2.50, 4.00), ((1, 1), (8, 4)), 66.9, 4800, 700, 1.0, 2, 900),
    GpuModel("Tesla V100", 16384, 700, "nvidia", (0.15, 0.40), ((1, 3), (2, 1), (4, 1), (8, 2)),
             15.7, 900, 300, 0.5, 2, 300),
    GpuModel("Tesla T4", 15360, 750, "nvidia", (0.07, 0.18), ((1, 3), (2, 1), (4, 1)), 8.1, 320, 70, 0.5, 2),
    GpuModel("GTX 1080 Ti", 11264, 610, "nvidia", (0.05, 0.12), ((1, 3), (2, 1), (4, 1)), 11.3, 484, 250, 0.0, 2),
    GpuModel("RX 7900 XTX", 24560, 1100, "amd", (0.20, 0.40), ((1, 3), (2, 1)), 61.4, 960, 355, 0.1, 1),
)


GPU_BY_NAME: dict[str, GpuModel] = {model.name: model for model in GPU_MODELS}

# (location text as Vast shows it, ending in the country code; weight). US first: most of Vast's supply is there.
LOCATIONS: tuple[tuple[str, float], ...] = (
    ("California, US", 8), ("Texas, US", 6), ("New York, US", 4), ("Washington, US", 3), ("Oregon, US", 3),
    ("Virginia, US", 4), ("Illinois, US", 3), ("Georgia, US", 2), ("Utah, US", 2), ("Florida, US", 2),
    ("Quebec, CA", 3), ("Ontario, CA", 2),
    ("Hesse, DE", 3), ("Bavaria, DE", 2), ("North Holland, NL", 3), ("Île-de-France, FR", 2), ("England, GB", 3),
    ("Stockholm County, SE", 2), ("Uusimaa, FI", 1), ("Mazovia, PL", 2), ("Madrid, ES", 1), ("Lombardy, IT", 1),
    ("Prague, CZ", 1), ("Oslo, NO", 1), ("Romania, RO", 1), ("Kyiv City, UA", 1), ("Estonia, EE", 1),
    ("Yutakachō, Shinagawa District, Tokyo, JP", 2), ("Osaka, JP", 1), ("Seoul, KR", 2), ("Singapore, SG", 2),
    ("Hong Kong, HK", 2), ("Taipei City, TW", 1), ("Maharashtra, IN", 1), ("Vietnam, VN", 1), ("Thailand, TH", 1),
    ("New South Wales, AU", 1), ("São Paulo, BR", 1), ("Chile, CL", 1),
)

CPU_MODELS: tuple[tuple[str, int, float], ...] = (  # (name, cores, GHz)
    ("AMD EPYC 7763 64-Core Processor", 128, 2.45),
    ("AMD EPYC 7B13 64-Core Processor", 128, 2.45),
    ("AMD EPYC 9554 64-Core Processor", 128, 3.1),
    ("Intel Xeon Platinum 8480+", 112, 2.0),
    ("Intel Xeon Gold 6338", 64, 2.0),
    ("AMD Ryzen 9 7950X 16-Core Processor", 32, 4.5),
    ("AMD Ryzen Threadripper PRO 5975WX 32-Cores", 64, 3.6),
    ("Intel Core i9-13900K", 32, 3.0),
    ("Intel Xeon E5-2698 v4", 40, 2.2),
)

MOBOS = ("ROMED8-2T", "H12DSi-N6", "WRX80 Creator", "X13DEG-OAD", "PRIME X670E-PRO", "Z790 AORUS", "SYS-4029GP")

DRIVERS = ("535.183.01", "550.127.05", "560.35.03", "570.124.04", "575.57.08")
