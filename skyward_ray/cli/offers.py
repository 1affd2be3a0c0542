"""``skyward-ray offers``: what a cluster would rent right now, and at what price, without renting anything.

It runs the same searches and the same planner as the provider (:mod:`skyward_ray.placement`), so what it shows is
what ``ray up`` would choose: the physical cluster, each node's offer and price, the total $/h and the runners-up.
When nothing fits it searches again with only the GPU filter, so the explanation can say which option emptied the
result and how far it would have to move. Vast allows 10 searches per minute per address: a run makes one search per
allocation type (two for spot-if-available), plus as many broad ones when nothing fits, and the client paces them
within that budget. ``VAST_URL`` points it at the emulator; the key is resolved as the client does
(``VAST_API_KEY``, then the vastai CLI's key files).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any

from skyward_ray.errors import ConfigError
from skyward_ray.placement import (
    DEFAULT_SEARCH_LIMIT,
    Allocation,
    NoPlacementError,
    PlacementOptions,
    PlacementRequest,
    Plan,
    build_queries,
    explain,
    plan,
)
from skyward_ray.placement.explanation import Style
from skyward_ray.placement.planner import DEFAULT_RUNNERS_UP
from skyward_ray.provider.config import NO_OVERLAY_REASON
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import resolve_api_key
from skyward_ray.vast.errors import CredentialsError
from skyward_ray.vast.models import Offer

_OPTION_FLAGS = (
    "min_reliability",
    "geolocation",
    "bid_multiplier",
    "docker_image",
    "disk_gb",
    "verified_only",
    "datacenter_only",
    "min_cuda",
    "min_inet_down",
    "max_bid",
    "max_hourly_cost",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "offers",
        help="show the placement a cluster would get now: cluster, offers, prices, runners-up",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--gpu", required=True, help='accelerator, e.g. "RTX 4090", "H100" (all H100 variants)')
    parser.add_argument("--count-per-node", type=int, default=1, metavar="N", help="GPUs per node (default 1)")
    parser.add_argument("--nodes", type=int, default=1, metavar="N", help="number of nodes (default 1)")
    parser.add_argument("--allocation", default=Allocation.SPOT_IF_AVAILABLE.value,
                        help="on-demand, spot or spot-if-available (default)")
    parser.add_argument("--gpu-variants", action="store_true", help='also accept variants ("RTX 4090" -> 4090D)')
    parser.add_argument("--geolocation", help='country code or region: "US", "EU", "DE,FR", "APAC"...')
    parser.add_argument("--min-reliability", type=float, help="minimum host reliability, 0 to 1 (default 0.95)")
    parser.add_argument("--bid-multiplier", type=float, help="bid = min_bid x this (default 1.2)")
    parser.add_argument("--max-bid", type=float, help="highest bid per node, $/h")
    parser.add_argument("--max-hourly-cost", type=float, help="cap on the total, $/h")
    parser.add_argument("--disk-gb", type=int, help="disk per node in GB (default 100)")
    parser.add_argument("--min-cuda", type=float, help="minimum host CUDA version (default 12.0)")
    parser.add_argument("--min-inet-down", type=float, help="minimum download bandwidth, Mb/s")
    parser.add_argument("--docker-image", help="the image to run (its CUDA version becomes a floor)")
    parser.add_argument("--verified-only", action=argparse.BooleanOptionalAction, default=None,
                        help="only verified hosts (default yes)")
    parser.add_argument("--datacenter-only", action=argparse.BooleanOptionalAction, default=None,
                        help="only datacenter hosts (default no)")
    parser.add_argument("--no-overlay", action="store_true",
                        help="a single node on any host, not on a physical cluster (with --nodes 1 only)")
    parser.add_argument("--exclude-machine", type=int, action="append", default=[], metavar="ID",
                        help="never use this machine id (repeatable)")
    parser.add_argument("--limit", type=int, default=DEFAULT_SEARCH_LIMIT, help="offers per search")
    parser.add_argument("--runners-up", type=int, default=DEFAULT_RUNNERS_UP, help="other clusters to show")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(func=run)


def _options(args: argparse.Namespace) -> PlacementOptions:
    values: dict[str, Any] = {name: getattr(args, name) for name in _OPTION_FLAGS if getattr(args, name) is not None}
    if args.no_overlay:
        values["use_overlay"] = False
    if args.exclude_machine:
        values["excluded_machines"] = args.exclude_machine
    return PlacementOptions.from_config(values)


SEARCH_BUDGET_PER_MINUTE = 10  # Vast's documented search limit per client address


def _search(client: VastClient, queries: Iterable[dict[str, Any]], spent: list[int]) -> list[Offer]:
    """Every query's offers; ``spent[0]`` counts the searches (each counts against Vast's 10 per minute)."""
    offers: list[Offer] = []
    for query in queries:
        spent[0] += 1
        offers.extend(client.search_offers(query))
    return offers


def _have_api_key() -> bool:
    """Search works without an account; use the key when one is configured (Vast's limits are kinder to it)."""
    try:
        resolve_api_key()
    except CredentialsError:
        return False
    return True


# The fields of a placement error that this command sets by a flag of another name.
_FIELD_FLAGS = {"count": "--nodes", "gpus_per_node": "--count-per-node", "accelerator": "--gpu",
                "allocation": "--allocation", "include_variants": "--gpu-variants"}


def _flag_error(exc: ConfigError) -> ConfigError:
    """The same error, naming the flag the user typed instead of the placement field behind it."""
    field, sep, rest = exc.message.partition(": ")
    if not sep:
        return exc
    name = field.rsplit(".", 1)[-1]
    flag = _FIELD_FLAGS.get(name) or ("--" + name.replace("_", "-") if name in _OPTION_FLAGS else None)
    return ConfigError(f"{flag}: {rest}") if flag else exc


def _inputs(args: argparse.Namespace) -> tuple[PlacementOptions, PlacementRequest]:
    try:
        if args.no_overlay and args.nodes > 1:
            raise ConfigError(f"--no-overlay: is not allowed with --nodes {args.nodes}: {NO_OVERLAY_REASON}; "
                              "allowed: --no-overlay with --nodes 1, or several nodes with the overlay (the default)")
        options = _options(args)
        request = PlacementRequest.single(
            args.gpu,
            nodes=args.nodes,
            gpus_per_node=args.count_per_node,
            allocation=args.allocation,
            include_variants=args.gpu_variants,
        )
    except ConfigError as exc:
        raise _flag_error(exc) from None
    return options, request


def run(args: argparse.Namespace) -> int:
    options, request = _inputs(args)
    with VastClient(anonymous=not _have_api_key()) as client:
        spent = [0]
        offers = _search(client, build_queries(request, options, limit=args.limit), spent)
        try:
            result = plan(request, options, offers, runners_up=args.runners_up)
        except NoPlacementError:
            broad = _search(client, build_queries(request, options, limit=args.limit, broad=True), spent)
            explanation = explain(request, options, [*offers, *broad])
            if not args.json:
                raise NoPlacementError(explanation, Style.CLI) from None
            error = {"stage": explanation.stage, "group": explanation.group, "reason": explanation.reason,
                     "suggestions": list(explanation.suggestions_for(Style.CLI)),
                     "message": explanation.render(Style.CLI)}
            print(json.dumps({"plan": None, "error": error, "searches": spent[0]}, indent=2))
            return 2
        searches = spent[0]
    if args.json:
        print(json.dumps({"plan": result.summary(), "offers_searched": len(offers), "searches": searches}, indent=2))
    else:
        print(render(request, result, searched=len(offers), searches=searches))
    return 0


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def render(request: PlacementRequest, result: Plan, *, searched: int, searches: int | None = None) -> str:
    """The plan as people read it: where, each node, the total, the image and the runners-up."""
    if result.cluster_id is not None:
        where = f"physical cluster {result.cluster_id}" + (f" ({result.country})" if result.country else "")
    else:
        where = "any hosts (no physical cluster needed)"
    lines = [f"{request.describe()} on {where}: ${result.total_per_hour:.4f}/h in total"]
    rows = [["#", "group", "offer", "machine", "gpus", "gpu", "$/h", "kind", "reliability", "location"]]
    for number, node in enumerate(result.nodes, start=1):
        offer = node.offer
        rows.append([
            str(number), node.group, str(offer.id), str(offer.machine_id), str(offer.num_gpus), offer.gpu_name,
            f"{node.price_per_hour:.4f}", "bid" if node.is_bid else "on-demand", f"{offer.effective_reliability:.3f}",
            offer.geolocation or "-",
        ])
    lines += _table(rows)
    lines.append(f"image: {result.image} ({result.image_source.value})")
    if result.runners_up:
        lines.append("runners-up:")
        for option in result.runners_up:
            country = f" ({option.country})" if option.country else ""
            lines.append(f"  cluster {option.cluster_id}{country}: ${option.total_per_hour:.4f}/h "
                         f"on {option.machines} machine{'s' if option.machines != 1 else ''}")
    spent = f" in {searches} search{'es' if searches != 1 else ''} (Vast allows {SEARCH_BUDGET_PER_MINUTE} per " \
        "minute)" if searches is not None else ""
    lines.append(f"searched {searched} offers{spent}")
    return "\n".join(lines)
