"""Instance rows as Vast sends them, and the v1 list's filters, order and cursor.

[inferred]: ``cluster_id`` on instance rows (null outside physical clusters); ``local_ipaddrs`` holds host-side
addresses only; ``ssh_host``/``ssh_port`` name the direct endpoint (the SSH proxy is not emulated).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from skyward_ray.emulator.documented import DOCKER_BRIDGE_ADDRESS, host_lan_address
from skyward_ray.emulator.records import Instance
from skyward_ray.emulator.search import LOGO, QueryError, compile_filters, driver_vers, sort_rows

# Columns stored in Vast's instance table, which ``select_filters``/``order_by`` accept; computed ones get a 400.
STORED_COLUMNS = frozenset({
    "id", "machine_id", "host_id", "bundle_id", "actual_status", "intended_status", "cur_state", "next_state",
    "status_msg", "label", "gpu_name", "verification", "image_uuid", "image_runtype", "start_date", "end_date",
    "is_bid", "geolocation", "template_id", "template_hash_id", "public_ipaddr", "ssh_host", "ssh_port",
    "disk_space", "onstart",
})
_TEXT_COLUMNS = frozenset({
    "actual_status", "intended_status", "cur_state", "next_state", "status_msg", "label", "gpu_name", "verification",
    "image_uuid", "image_runtype", "geolocation", "template_hash_id", "public_ipaddr", "ssh_host", "onstart",
})
V1_MAX_LIMIT = 25


def instance_row(inst: Instance, *, now: float, epoch_of: Callable[[float], float], overlay_addresses: list[str],
                 min_bid: float) -> dict[str, Any]:
    """The full row of ``GET /instances/{id}/`` and of a v1 list page."""
    running = inst.actual_status == "running"
    return {**_status_fields(inst, now, epoch_of, running), **_network_fields(inst, overlay_addresses, running),
            **_hardware_fields(inst, running), **_price_fields(inst, min_bid)}


def _status_fields(inst: Instance, now: float, epoch_of: Callable[[float], float], running: bool) -> dict[str, Any]:
    """Identity, status, timing and what the instance runs."""
    m = inst.machine
    uptime = (now - inst.running_since) / 60 if running and inst.running_since is not None else 0.0
    return {
        "id": inst.instance_id,
        "machine_id": m.machine_id,
        "host_id": m.host_id,
        "cluster_id": m.cluster_id,
        "bundle_id": inst.offer_id,
        "actual_status": inst.actual_status,
        "intended_status": inst.intended_status,
        "cur_state": inst.cur_state,
        "next_state": inst.next_state,
        "status_msg": inst.status_msg,
        "label": inst.label,
        "start_date": epoch_of(inst.created_at),
        "end_date": epoch_of(m.duration_s),
        "uptime_mins": round(uptime, 2),
        "duration": now - inst.created_at,
        "client_run_time": round(uptime / 60, 4),
        "host_run_time": round(uptime / 60, 4),
        "image_uuid": inst.image,
        "image_args": list(inst.args or []),
        "image_runtype": inst.runtype,
        "onstart": inst.onstart,
        "extra_env": [list(pair) for pair in inst.env_pairs],
        "jupyter_token": None,
        "template_id": None,
        "template_hash_id": None,
        "template_name": None,
    }


def _network_fields(inst: Instance, overlay_addresses: list[str], running: bool) -> dict[str, Any]:
    """How to reach it: SSH, addresses and ports (ports only while it runs)."""
    m = inst.machine
    ports = None
    if running:
        ports = {key: [{"HostIp": "0.0.0.0", "HostPort": str(port)}] for key, port in inst.port_map.items()}
    local = " ".join([*overlay_addresses, host_lan_address(m.machine_id), DOCKER_BRIDGE_ADDRESS]) + " \n"
    return {
        "ssh_host": inst.ssh_host,
        "ssh_port": inst.ssh_port,
        "ssh_idx": str(m.machine_id % 10),
        "public_ipaddr": inst.public_ipaddr if running else None,
        "local_ipaddrs": local,
        "ports": ports,
        "direct_port_start": m.direct_port_start,
        "direct_port_end": m.direct_port_end,
        "direct_port_count": m.direct_port_count,
        "machine_dir_ssh_port": inst.port_map.get("22/tcp"),
        "static_ip": m.static_ip,
    }


def _hardware_fields(inst: Instance, running: bool) -> dict[str, Any]:
    """The machine's share this instance holds."""
    m = inst.machine
    frac = inst.num_gpus / m.num_gpus
    return {
        "gpu_name": m.gpu_name,
        "num_gpus": inst.num_gpus,
        "gpu_ram": m.gpu_ram,
        "gpu_totalram": m.gpu_ram * inst.num_gpus,
        "gpu_arch": m.gpu_arch,
        "gpu_util": 0.0 if running else None,
        "gpu_temp": 38.0 if running else None,
        "gpu_frac": round(frac, 4),
        "gpu_lanes": 16,
        "gpu_mem_bw": m.gpu_mem_bw,
        "bw_nvlink": m.bw_nvlink if inst.num_gpus > 1 else 0.0,
        "cuda_max_good": m.cuda_max_good,
        "driver_version": m.driver_version,
        "driver_vers": driver_vers(m.driver_version),
        "compute_cap": m.compute_cap,
        "cpu_name": m.cpu_name,
        "cpu_arch": "amd64",
        "cpu_cores": m.cpu_cores,
        "cpu_cores_effective": round(m.cpu_cores * frac, 2),
        "cpu_ram": m.cpu_ram,
        "cpu_util": 0.0 if running else None,
        "mem_usage": 0.0 if running else None,
        "mem_limit": round(m.cpu_ram * frac / 1024, 2),
        "vmem_usage": None,
        "disk_space": inst.disk,
        "disk_usage": 0.0,
        "disk_util": 0.0,
        "disk_bw": m.disk_bw,
        "disk_name": m.disk_name,
        "inet_up": m.inet_up,
        "inet_down": m.inet_down,
        "mobo_name": m.mobo_name,
        "pci_gen": m.pci_gen,
        "pcie_bw": m.pcie_bw,
        "os_version": m.os_version,
        "volume_info": [],
    }


def _price_fields(inst: Instance, min_bid: float) -> dict[str, Any]:
    """Prices, the listing and its reliability."""
    m = inst.machine
    return {
        "dph_base": inst.dph_base,
        "dph_total": round(inst.hourly_price, 6),
        "is_bid": inst.is_bid,
        "min_bid": min_bid,
        "storage_cost": inst.storage_cost,
        "storage_total_cost": round(inst.storage_hourly, 6),
        "vram_costperhour": None,
        "credit_balance": None,
        "credit_discount": None,
        "credit_discount_max": 0.4,
        "rentable": True,
        "verification": m.verification,
        "reliability2": m.reliability2,
        "score": None,
        "dlperf": round(m.dlperf * inst.num_gpus, 3),
        "total_flops": round(m.total_flops * inst.num_gpus, 2),
        "geolocation": m.geolocation,
        "country_code": m.country_code,
        "external": m.external,
        "hosting_type": m.hosting_type,
        "time_remaining": "",
        "time_remaining_isbid": "",
        "logo": LOGO,
        "webpage": None,
    }


def _coerce_column(field: str, value: Any) -> Any:
    """Instance columns: text stays text, ``is_bid`` is boolean, the rest numeric (numeric strings coerced)."""
    if value is None or field in _TEXT_COLUMNS:
        return value if value is None else str(value)
    if field == "is_bid":
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("true", "1", "false", "0"):
            return str(value).strip().lower() in ("true", "1")
        raise QueryError(f"{field}: {value!r} is not a boolean; allowed: true, false")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    try:
        return float(str(value))
    except ValueError:
        raise QueryError(f"{field}: {value!r} is not a number") from None


def _stored_getter(name: str) -> tuple[str, Any]:
    if name not in STORED_COLUMNS:
        raise QueryError(f"Error in query parameters: {name} is not a valid search key", "invalid_request")
    return name, lambda row, ctx, key=name: row.get(key)


def parse_json_param(name: str, raw: str | None, default: Any) -> Any:
    """v1 list parameters arrive JSON-encoded (``limit=25``, ``select_filters=%7B...``); plain text is tolerated."""
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if name in ("after_token",):
            return raw
        raise QueryError(f"{name}: {raw!r} is not valid JSON") from None


def _encode_token(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": values}).encode()).decode().rstrip("=")


def _decode_token(token: str) -> list[Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        values = data["after"]
        if not isinstance(values, list):
            raise ValueError
        return values
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError):
        raise QueryError("the after_token is not one this server issued", "invalid_token") from None


def _order_key(row: dict[str, Any], order: list[tuple[str, bool]]) -> list[Any]:
    return [row.get(col) for col, _ in order]


def _after(row: dict[str, Any], order: list[tuple[str, bool]], cursor: list[Any]) -> bool:
    """Whether ``row`` sorts strictly after the cursor (keyset pagination; nulls last in every direction)."""
    for (col, descending), mark in zip(order, cursor, strict=False):
        value = row.get(col)
        if value == mark:
            continue
        if value is None:
            return True
        if mark is None:
            return False
        a, b = (value, mark) if not isinstance(value, str) and not isinstance(mark, str) else (str(value), str(mark))
        return a < b if descending else a > b
    return False


def list_page(rows: list[dict[str, Any]], params: dict[str, str]) -> dict[str, Any]:
    """One page of ``GET /api/v1/instances/`` over the caller's instance rows."""
    limit_raw = parse_json_param("limit", params.get("limit"), V1_MAX_LIMIT)
    try:
        limit = int(limit_raw)
    except (TypeError, ValueError):
        raise QueryError(f"limit: {limit_raw!r} is not an integer") from None
    limit = 5 if limit <= 0 else min(limit, V1_MAX_LIMIT)
    filters = parse_json_param("select_filters", params.get("select_filters"), {})
    if not isinstance(filters, dict):
        raise QueryError("select_filters must be a JSON object")
    order_raw = parse_json_param("order_by", params.get("order_by"), [{"col": "id", "dir": "asc"}])
    if isinstance(order_raw, dict):
        order_raw = [order_raw]
    order: list[tuple[str, bool]] = []
    for item in order_raw or []:
        col = item.get("col") if isinstance(item, dict) else None
        direction = str(item.get("dir", "asc")).lower() if isinstance(item, dict) else "asc"
        if not isinstance(col, str):
            raise QueryError(f"order_by: {item!r} is not {{'col': ..., 'dir': 'asc'|'desc'}}")
        _stored_getter(col)
        if direction not in ("asc", "desc"):
            raise QueryError(f"order_by: direction {direction!r} is unknown; allowed: asc, desc")
        order.append((col, direction == "desc"))
    if not any(col == "id" for col, _ in order):
        order.append(("id", False))  # the tiebreaker Vast always appends
    select_cols = parse_json_param("select_cols", params.get("select_cols"), ["*"])
    checks = compile_filters(filters, _stored_getter, _coerce_column)
    matched = [row for row in rows if all(check(row, None) for check in checks)]
    matched = sort_rows(matched, [(lambda r, c, k=col: r.get(k), desc) for col, desc in order], None)
    token = params.get("after_token")
    if token:
        cursor = _decode_token(token)
        matched_after = [row for row in matched if _after(row, order, cursor)]
    else:
        matched_after = matched
    page = matched_after[:limit]
    next_token = _encode_token(_order_key(page[-1], order)) if len(matched_after) > limit else None
    label_counts: dict[str, int] = {}
    for row in matched:
        label = row.get("label") or ""
        label_counts[label] = label_counts.get(label, 0) + 1
    if isinstance(select_cols, list) and select_cols and "*" not in select_cols:
        page = [{"id": row["id"], **{col: row.get(col) for col in select_cols}} for row in page]
    return {
        "success": True,
        "instances_found": len(page),
        "total_instances": len(matched),
        "label_counts": label_counts,
        "next_token": next_token,
        "instances": page,
    }
