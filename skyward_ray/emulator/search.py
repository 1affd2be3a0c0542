"""Offers and the bundles search: the offer rule, offer rows, and the query language of ``POST /api/v0/bundles/``.

Queries map fields to ``{op: value}`` (eq/neq/gt/gte/lt/lte/in/notin, ANDed; null is a value; numeric strings are
coerced). [inferred]: default ``limit`` 64, default order ``score`` descending, 5 GB priced without
``allocated_storage``, an unknown field is a 400, offers are not bundled.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from skyward_ray.emulator.records import Machine

DEFAULT_LIMIT = 64
DEFAULT_STORAGE_GB = 5.0
OFFER_ID_BASE = 100  # offer id = machine_id * 100 + num_gpus: stable, and the machine is recoverable from the id
LOGO = "/static/logos/vastai_small2.png"


class QueryError(ValueError):
    """A malformed query; the HTTP layer answers 400 with ``error`` (Vast's code) and this message."""

    def __init__(self, message: str, error: str = "invalid_args") -> None:
        super().__init__(message)
        self.error = error


# ---------------------------------------------------------------------------------------------------------------
# The offer rule


def offer_counts(free_gpus: int) -> list[int]:
    """THE OFFER RULE [inferred]: a machine with F free GPUs shows one offer per count in {1, 2, 4, 8, ...} <= F and
    one for F itself. An offer stays rentable while its machine has >= num_gpus free GPUs; the placement code and
    the provider rely on exactly this."""
    counts: list[int] = []
    n = 1
    while n <= free_gpus:
        counts.append(n)
        n *= 2
    if free_gpus >= 1 and free_gpus not in counts:
        counts.append(free_gpus)
    return counts


def offer_id(machine_id: int, num_gpus: int) -> int:
    return machine_id * OFFER_ID_BASE + num_gpus


def split_offer_id(ask_id: int) -> tuple[int, int]:
    """(machine_id, num_gpus) of an offer id."""
    return divmod(ask_id, OFFER_ID_BASE)


def driver_vers(version: str) -> int:
    """Vast's integer form of a driver version: ``535.86.05`` -> 535086005."""
    parts = [*version.split("."), "0", "0"][:3]
    return int("".join(part.zfill(3) for part in parts))


def build_offer_rows(machine: Machine, market_epoch: float) -> list[dict[str, Any]]:
    """The static part of every current offer of ``machine`` (what does not depend on the caller or the query)."""
    if not machine.listed:
        return []
    return [{**_offer_gpus(machine, n), **_offer_host(machine, n), **_offer_listing(machine, n, market_epoch)}
            for n in offer_counts(machine.free_gpus)]


def _offer_gpus(m: Machine, n: int) -> dict[str, Any]:
    """The offer's ids and its ``n`` GPUs."""
    ask = offer_id(m.machine_id, n)
    frac = n / m.num_gpus
    dlperf = round(m.dlperf * n, 3)
    return {
        "id": ask,
        "ask_contract_id": ask,
        "bundle_id": ask,
        "bundled_results": None,
        "machine_id": m.machine_id,
        "host_id": m.host_id,
        "cluster_id": m.cluster_id,
        "gpu_name": m.gpu_name,
        "num_gpus": n,
        "gpu_ram": m.gpu_ram,
        "gpu_total_ram": m.gpu_ram * n,
        "gpu_frac": round(frac, 4),
        "gpu_arch": m.gpu_arch,
        "gpu_ids": list(range(n)),
        "gpu_lanes": 16,
        "gpu_mem_bw": m.gpu_mem_bw,
        "gpu_max_power": m.gpu_max_power,
        "gpu_max_temp": 83.0,
        "gpu_display_active": False,
        "compute_cap": m.compute_cap,
        "cuda_max_good": m.cuda_max_good,
        "bw_nvlink": m.bw_nvlink if n > 1 else 0.0,
        "driver_version": m.driver_version,
        "driver_vers": driver_vers(m.driver_version),
        "total_flops": round(m.total_flops * n, 2),
        "dlperf": dlperf,
    }


def _offer_host(m: Machine, n: int) -> dict[str, Any]:
    """The host's share that comes with ``n`` of its GPUs: CPU, RAM, disk, network."""
    frac = n / m.num_gpus
    return {
        "cpu_name": m.cpu_name,
        "cpu_cores": m.cpu_cores,
        "cpu_cores_effective": round(m.cpu_cores * frac, 2),
        "cpu_ghz": m.cpu_ghz,
        "cpu_ram": m.cpu_ram,
        "cpu_arch": "amd64",
        "has_avx": 1,
        "mobo_name": m.mobo_name,
        "os_version": m.os_version,
        "ubuntu_version": m.os_version,
        "pci_gen": m.pci_gen,
        "pcie_bw": m.pcie_bw,
        "disk_space": round(m.disk_space * frac, 1),
        "disk_bw": m.disk_bw,
        "disk_name": m.disk_name,
        "vms_enabled": False,
        "is_vm_deverified": False,
        "resource_type": "gpu",
        "inet_up": m.inet_up,
        "inet_down": m.inet_down,
        "inet_up_cost": m.inet_up_cost,
        "inet_down_cost": m.inet_down_cost,
        "internet_up_cost_per_tb": round(m.inet_up_cost * 1000, 2),
        "internet_down_cost_per_tb": round(m.inet_down_cost * 1000, 2),
        "direct_port_count": m.direct_port_count,
        "public_ipaddr": m.public_ipaddr,
        "static_ip": m.static_ip,
        "geolocation": m.geolocation,
        "geolocode": zlib.crc32(m.country_code.encode()) & 0xFFFFFF,
    }


def _offer_listing(m: Machine, n: int, market_epoch: float) -> dict[str, Any]:
    """Price, reliability, verification and how long the listing lasts."""
    dph_base = round(m.gpu_price * n, 4)
    score = round(round(m.dlperf * n, 3) / max(dph_base, 0.01) * m.reliability2 ** 4 / 10, 4)
    return {
        "dph_base": dph_base,
        "min_bid": round(m.bid_price * n, 4),
        "storage_cost": m.storage_cost,
        "rentable": True,
        "reliability": m.reliability2,
        "reliability2": m.reliability2,
        "reliability_mult": round(m.reliability2 ** 4, 4),
        "expected_reliability": m.reliability2,
        "score": score,
        "verification": m.verification,
        "vericode": m.vericode,
        "external": m.external,
        "hosting_type": m.hosting_type,
        "start_date": market_epoch - 86_400,
        "end_date": market_epoch + m.duration_s,
        "credit_discount_max": 0.4,
        "logo": LOGO,
        "webpage": None,
        "_cc": m.country_code,  # private: stripped before the row leaves the emulator
    }


# ---------------------------------------------------------------------------------------------------------------
# Query compilation


@dataclass
class SearchContext:
    """What a search depends on besides the offers: the caller, the pricing mode and the time."""

    now_epoch: float
    storage_gb: float
    is_bid: bool
    rented_machines: frozenset[int]


Getter = Callable[[dict[str, Any], SearchContext], Any]

_BOOL_FIELDS = frozenset({
    "verified", "datacenter", "rentable", "rented", "external", "static_ip", "gpu_display_active", "vms_enabled",
    "is_bid", "is_vm_deverified",
})
_STR_FIELDS = frozenset({
    "gpu_name", "gpu_arch", "cpu_name", "cpu_arch", "mobo_name", "os_version", "ubuntu_version", "disk_name",
    "verification", "geolocation", "public_ipaddr", "resource_type", "logo", "webpage",
})
_OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
# Keys that sit beside the fields and steer the search instead of filtering.
CONTROL_KEYS = frozenset({
    "order", "limit", "type", "allocated_storage", "disable_bundling", "extra_ids", "gpu_option", "show_incompatible",
    "sort_option", "template_id", "target_reliability", "q", "select_cols",
})
# Aliases the server rewrites (vastai/data/query.py) and the CLI's own aliases.
_ALIASES = {
    "dphtotal": "dph_total", "dph": "dph_total", "gpu_totalram": "gpu_total_ram", "cuda_vers": "cuda_max_good",
    "display_active": "gpu_display_active", "dlperf_usd": "dlperf_per_dphtotal", "flops_usd": "flops_per_dphtotal",
    "ubuntu_version": "os_version",
}


def offer_price(row: dict[str, Any], ctx: SearchContext) -> float:
    """``dph_total``: the GPU price (``min_bid`` for bid searches) plus storage for ``allocated_storage`` GB."""
    base = row["min_bid"] if ctx.is_bid else row["dph_base"]
    return base + row["storage_cost"] * ctx.storage_gb / 30 / 24


def _virtual_getters() -> dict[str, Getter]:
    return {
        "dph_total": offer_price,
        "dph_total_adj": offer_price,
        "verified": lambda r, c: r["vericode"] == 1,
        "datacenter": lambda r, c: r["hosting_type"] == 1,
        "geolocation": lambda r, c: r["_cc"],
        "duration": lambda r, c: r["end_date"] - c.now_epoch,
        "reliability": lambda r, c: r["reliability2"],
        "rented": lambda r, c: r["machine_id"] in c.rented_machines,
        "is_bid": lambda r, c: c.is_bid,
        "dlperf_per_dphtotal": lambda r, c: r["dlperf"] / max(offer_price(r, c), 1e-6),
        "flops_per_dphtotal": lambda r, c: r["total_flops"] / max(offer_price(r, c), 1e-6),
        "storage_total_cost": lambda r, c: r["storage_cost"] * c.storage_gb / 30 / 24,
    }


_VIRTUAL = _virtual_getters()


def field_getter(name: str, known_fields: Iterable[str]) -> tuple[str, Getter]:
    """(canonical name, getter) for a query field; QueryError when the field does not exist."""
    canonical = _ALIASES.get(name, name)
    if canonical in _VIRTUAL:
        return canonical, _VIRTUAL[canonical]
    if canonical in known_fields:
        return canonical, lambda r, c, key=canonical: r.get(key)
    raise QueryError(f"{name} is not a valid search key")


def _coerce(field: str, value: Any) -> Any:
    """Bring a query value to the column's type: numeric strings to numbers, "true"/"false" to booleans."""
    if value is None:
        return None
    if field == "geolocation":
        return str(value).strip()[-2:].upper()
    if field == "gpu_name" and isinstance(value, str):
        return value.replace("_", " ")
    if field in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise QueryError(f"{field}: {value!r} is not a boolean; allowed: true, false")
    if field in _STR_FIELDS:
        return str(value)
    if field == "driver_version" and isinstance(value, str) and "." in value:
        return driver_vers(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    try:
        return float(str(value).strip())
    except ValueError:
        raise QueryError(f"{field}: {value!r} is not a number") from None


def _predicate(op: str, expected: Any) -> Callable[[Any], bool]:
    if op == "eq":
        return lambda v: v == expected
    if op == "neq":
        return lambda v: v != expected
    if op in ("in", "notin"):
        values = set(expected)
        return (lambda v: v in values) if op == "in" else (lambda v: v not in values)
    if expected is None:
        raise QueryError(f"operator {op} needs a value, not null")
    if op == "gt":
        return lambda v: v is not None and v > expected
    if op == "gte":
        return lambda v: v is not None and v >= expected
    if op == "lt":
        return lambda v: v is not None and v < expected
    return lambda v: v is not None and v <= expected  # lte


def compile_filters(query: dict[str, Any], getter_for: Callable[[str], tuple[str, Getter]],
                    coerce: Callable[[str, Any], Any] = _coerce) -> list[Callable[[dict[str, Any], Any], bool]]:
    """Turn ``{field: {op: value}}`` into predicates on (row, context). Shared by bundles and the v1 instance list
    (each with its own ``coerce``: the columns differ)."""
    checks: list[Callable[[dict[str, Any], Any], bool]] = []
    for name, spec in query.items():
        field, getter = getter_for(name)
        if not isinstance(spec, dict):
            spec = {"eq": spec}  # a bare value means equality (some hand-written clients send it)
        for op, raw in spec.items():
            if op not in _OPERATORS:
                raise QueryError(f"{name}: operator {op!r} is unknown; allowed: {', '.join(sorted(_OPERATORS))}")
            if op in ("in", "notin"):
                if not isinstance(raw, list | tuple):
                    raw = [raw]
                expected: Any = [coerce(field, item) for item in raw]
            else:
                if isinstance(raw, list | dict):
                    raise QueryError(f"{name}: operator {op} takes one value, got {raw!r}")
                expected = coerce(field, raw)
            test = _predicate(op, expected)
            checks.append(lambda row, ctx, g=getter, t=test: t(g(row, ctx)))
    return checks


def _sort_value(value: Any) -> tuple[int, Any]:
    if isinstance(value, str):
        return (1, value)
    return (0, float(value))


def sort_rows(rows: list[dict[str, Any]], order: list[tuple[Getter, bool]], ctx: Any,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Stable multi-key sort, nulls always last whatever the direction; only the first ``limit`` rows when given
    (a heap instead of a full sort: searches over 10,000 offers usually want 64)."""
    if not order:
        return rows[:limit] if limit is not None else list(rows)
    if len(order) == 1:
        getter, descending = order[0]
        present: list[tuple[tuple[int, Any], dict[str, Any]]] = []
        absent: list[dict[str, Any]] = []
        for row in rows:
            value = getter(row, ctx)
            if value is None:
                absent.append(row)
            else:
                present.append((_sort_value(value), row))
        if limit is not None and limit < len(present):
            pick = heapq.nlargest if descending else heapq.nsmallest
            top = pick(limit, present, key=lambda item: item[0])
        else:
            top = sorted(present, key=lambda item: item[0], reverse=descending)
        ordered = [row for _, row in top] + absent
        return ordered[:limit] if limit is not None else ordered
    for getter, descending in reversed(order):
        keyed = [(getter(r, ctx), r) for r in rows]
        present_rows = [(v, r) for v, r in keyed if v is not None]
        present_rows.sort(key=lambda item: _sort_value(item[0]), reverse=descending)
        rows = [r for _, r in present_rows] + [r for v, r in keyed if v is None]
    return rows[:limit] if limit is not None else rows


@dataclass
class OfferQuery:
    checks: list[Callable[[dict[str, Any], Any], bool]]
    order: list[tuple[Getter, bool]]
    limit: int
    is_bid: bool
    reserved: bool
    storage_gb: float


def parse_order(raw: Any, getter_for: Callable[[str], tuple[str, Getter]]) -> list[tuple[Getter, bool]]:
    if raw is None:
        return []
    if isinstance(raw, list | tuple) and len(raw) == 2 and all(isinstance(x, str) for x in raw) and \
            raw[1].lower() in ("asc", "desc"):
        raw = [raw]  # a single [field, dir] pair
    if not isinstance(raw, list | tuple):
        raise QueryError(f"order: {raw!r} is not a list of [field, 'asc'|'desc'] pairs")
    order = []
    for item in raw:
        if isinstance(item, str):
            item = [item, "asc"]
        if not isinstance(item, list | tuple) or not item or len(item) > 2:
            raise QueryError(f"order: {item!r} is not a [field, 'asc'|'desc'] pair")
        direction = str(item[1]).lower() if len(item) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise QueryError(f"order: direction {item[1]!r} is unknown; allowed: asc, desc")
        _, getter = getter_for(str(item[0]))
        order.append((getter, direction == "desc"))
    return order


def compile_offer_query(query: Any, known_fields: Iterable[str]) -> OfferQuery:
    if not isinstance(query, dict):
        raise QueryError(f"the search query must be a JSON object, got {type(query).__name__}")
    fields = frozenset(known_fields)

    def getter_for(name: str) -> tuple[str, Getter]:
        return field_getter(name, fields)

    kind = str(query.get("type") or "on-demand").lower()
    if kind not in ("on-demand", "ondemand", "bid", "interruptible", "reserved"):
        raise QueryError(f"type: {kind!r} is unknown; allowed: on-demand, ondemand, bid, reserved")
    limit_raw = query.get("limit")
    try:
        limit = DEFAULT_LIMIT if limit_raw in (None, "") else int(float(limit_raw))
    except (TypeError, ValueError):
        raise QueryError(f"limit: {limit_raw!r} is not an integer") from None
    if limit <= 0:
        limit = DEFAULT_LIMIT
    storage_raw = query.get("allocated_storage")
    if isinstance(storage_raw, dict):  # {"gte": 50} also seen
        storage_raw = next(iter(storage_raw.values()), None)
    try:
        storage = DEFAULT_STORAGE_GB if storage_raw is None else float(storage_raw)
    except (TypeError, ValueError):
        raise QueryError(f"allocated_storage: {storage_raw!r} is not a number") from None
    filters = {k: v for k, v in query.items() if k not in CONTROL_KEYS}
    checks = compile_filters(filters, getter_for)
    if storage_raw is not None:
        checks.append(lambda row, ctx, gb=storage: row["disk_space"] >= gb)
    target = query.get("target_reliability")
    if target is not None:
        floor = _coerce("expected_reliability", target)
        checks.append(lambda row, ctx, f=floor: row["expected_reliability"] >= f)
    order_raw = query.get("order", [["score", "desc"]])
    return OfferQuery(
        checks=checks,
        order=parse_order(order_raw, getter_for),
        limit=limit,
        is_bid=kind in ("bid", "interruptible"),
        reserved=kind == "reserved",
        storage_gb=storage,
    )


def finish_offer(row: dict[str, Any], ctx: SearchContext, rank: int, reserved: bool) -> dict[str, Any]:
    """A copy of the static row with everything that depends on the caller, the pricing mode and the time."""
    out = {k: v for k, v in row.items() if k != "_cc"}
    total = offer_price(row, ctx)
    storage_hour = row["storage_cost"] * ctx.storage_gb / 30 / 24
    gpu_hour = row["min_bid"] if ctx.is_bid else row["dph_base"]
    out.update({
        "rn": rank,
        "dph_total": round(total, 6),
        "dph_total_adj": round(total, 6),
        "storage_total_cost": round(storage_hour, 6),
        "vram_costperhour": round(total / max(row["gpu_total_ram"] / 1024, 1), 6),
        "is_bid": ctx.is_bid,
        "rented": row["machine_id"] in ctx.rented_machines,
        "duration": row["end_date"] - ctx.now_epoch,
        "time_remaining": "",
        "time_remaining_isbid": "",
        "dlperf_per_dphtotal": round(row["dlperf"] / max(total, 1e-6), 3),
        "flops_per_dphtotal": round(row["total_flops"] / max(total, 1e-6), 3),
        "search": {"gpuCostPerHour": gpu_hour, "diskHour": round(storage_hour, 6), "totalHour": round(total, 6),
                   "discountTotalHour": 0.0, "discountedTotalPerHour": round(total, 6)},
        "instance": {"gpuCostPerHour": gpu_hour, "diskHour": round(storage_hour, 6), "totalHour": round(total, 6),
                     "discountTotalHour": 0.0, "discountedTotalPerHour": round(total, 6)},
    })
    if reserved:
        out.update({"discount_rate": 0.2, "discounted_hourly": round(gpu_hour * 0.8, 6),
                    "discounted_dph_total": round(total * 0.8, 6)})
    return out
