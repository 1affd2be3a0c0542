"""The route table: every Vast endpoint and every admin endpoint, each with the function that serves it (a parsed
:class:`Call` in, a JSON-able body out; in a worker thread unless marked inline) and whether it reads a JSON body.
Paths match with or without the trailing slash."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skyward_ray.emulator.errors import bad_request
from skyward_ray.emulator.wire import admin
from skyward_ray.emulator.wire.kit import Call

V0 = "/api/v0"
ID = r"{id:\d+}"
KEY = r"{key:\d+}"
ADMIN_PREFIX = "/_emulator"
# Endpoints that answer without a key (gpuhunt searches anonymously).
ANONYMOUS_OK = frozenset({"POST /api/v0/bundles/", "GET /api/v0/bundles/", "PUT /api/v0/search/asks/",
                          "GET /api/v0/gpu_names/unique/"})


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    serve: Callable[[Call], Any]
    reads_body: bool = False
    inline: bool = False  # cheap and never waits on the host runtime: served on the event loop, not in a worker


def _search_get(call: Call) -> Any:
    try:
        query = json.loads(call.query.get("q", "{}"))
    except json.JSONDecodeError:
        raise bad_request("q: not valid JSON") from None
    return call.market.search(query, call.caller)


def _search_asks(call: Call) -> Any:
    query = call.body
    if isinstance(query.get("q"), dict):  # PUT /search/asks/ wraps the query
        query = query["q"]
    return call.market.search(query, call.caller)


VAST_ROUTES: tuple[Route, ...] = (
    Route("POST", f"{V0}/bundles/", lambda c: c.market.search(c.body, c.caller), True),
    Route("GET", f"{V0}/bundles/", _search_get),
    Route("PUT", f"{V0}/search/asks/", _search_asks, True),
    Route("GET", f"{V0}/gpu_names/unique/", lambda c: {"gpu_names": c.market.gpu_names()}, inline=True),
    Route("PUT", f"{V0}/asks/{ID}/", lambda c: c.market.create_instance(c.who(), c.id, c.body), True),
    Route("POST", f"{V0}/asks/bulk/", lambda c: c.market.create_instances_bulk(c.who(), c.body), True),
    Route("GET", f"{V0}/instances/filters/", lambda c: c.market.instance_filters(c.who())),
    Route("PUT", f"{V0}/instances/bid_price/{ID}/", lambda c: c.market.change_bid(c.who(), c.id, c.body), True),
    Route("PUT", f"{V0}/instances/reboot/{ID}/", lambda c: c.market.reboot_instance(c.who(), c.id)),
    Route("PUT", f"{V0}/instances/recycle/{ID}/", lambda c: c.market.reboot_instance(c.who(), c.id)),
    Route("GET", f"{V0}/instances/{ID}/ssh/", lambda c: c.market.instance_ssh_keys(c.who(), c.id)),
    Route("POST", f"{V0}/instances/{ID}/ssh/", lambda c: c.market.attach_ssh(c.who(), c.id, c.body), True),
    Route("DELETE", f"{V0}/instances/{ID}/ssh/{KEY}/",
          lambda c: c.market.detach_ssh(c.who(), c.id, c.ids["key"])),
    Route("GET", f"{V0}/instances/{ID}/", lambda c: c.market.get_instance(c.who(), c.id)),
    Route("PUT", f"{V0}/instances/{ID}/", lambda c: c.market.update_instance(c.who(), c.id, c.body), True),
    Route("DELETE", f"{V0}/instances/{ID}/", lambda c: c.market.destroy_instance(c.who(), c.id), True),
    Route("GET", f"{V0}/instances/", lambda c: c.market.list_instances_legacy(c.who())),
    Route("PUT", f"{V0}/instances/", lambda c: c.market.bulk_update(c.who(), c.body), True),
    Route("DELETE", f"{V0}/instances/", lambda c: c.market.destroy_instances(c.who(), c.body), True),
    Route("GET", "/api/v1/instances/", lambda c: c.market.list_instances(c.who(), c.query)),
    Route("GET", f"{V0}/overlay/", lambda c: c.market.list_overlays(c.who())),
    Route("POST", f"{V0}/overlay/", lambda c: c.market.create_overlay(c.who(), c.body), True),
    Route("PUT", f"{V0}/overlay/", lambda c: c.market.join_overlay(c.who(), c.body), True),
    Route("DELETE", f"{V0}/overlay/", lambda c: c.market.delete_overlay(c.who(), c.body), True),
    Route("GET", f"{V0}/clusters/", lambda c: c.market.list_clusters(c.who())),
    Route("GET", f"{V0}/users/current/", lambda c: c.market.current_user(c.who())),
    Route("GET", f"{V0}/ssh/", lambda c: c.market.list_ssh_keys(c.who())),
    Route("POST", f"{V0}/ssh/", lambda c: c.market.create_ssh_key(c.who(), c.body), True),
    Route("PUT", f"{V0}/ssh/{ID}/", lambda c: c.market.update_ssh_key(c.who(), c.id, c.body), True),
    Route("DELETE", f"{V0}/ssh/{ID}/", lambda c: c.market.delete_ssh_key(c.who(), c.id)),
)

ADMIN_ROUTES: tuple[Route, ...] = (
    Route("GET", f"{ADMIN_PREFIX}/", admin.index, inline=True),
    Route("GET", f"{ADMIN_PREFIX}/counters/", admin.counters, inline=True),
    Route("DELETE", f"{ADMIN_PREFIX}/counters/", admin.reset_counters, inline=True),
    Route("GET", f"{ADMIN_PREFIX}/faults/", admin.faults, inline=True),
    Route("PUT", f"{ADMIN_PREFIX}/faults/", admin.patch_faults, True, inline=True),
    Route("GET", f"{ADMIN_PREFIX}/rate_limits/", admin.rate_limits, inline=True),
    Route("PUT", f"{ADMIN_PREFIX}/rate_limits/", admin.set_rate_limits, True, inline=True),
    Route("POST", f"{ADMIN_PREFIX}/instances/{ID}/outbid/", admin.outbid, True),
    Route("POST", f"{ADMIN_PREFIX}/instances/{ID}/fail/", admin.fail, True),
    Route("GET", f"{ADMIN_PREFIX}/clock/", admin.clock, inline=True),
    Route("POST", f"{ADMIN_PREFIX}/clock/", admin.move_clock, True),
    Route("GET", f"{ADMIN_PREFIX}/state/", admin.state),
    Route("PUT", f"{ADMIN_PREFIX}/credit/", admin.credit, True, inline=True),
    Route("POST", f"{ADMIN_PREFIX}/users/", admin.new_user, True, inline=True),
)
