"""What Vast documents about its limits and input bounds (vast-ai/docs: the OpenAPI files' ``x-rate-limit`` and
``x-input-validation``, rate-limits-and-errors.mdx, networking.mdx), and in one marked block what the emulator infers
where the documents are silent. Limit tables are keyed ``"METHOD /template/"`` as the router names endpoints.
"""

from __future__ import annotations

from typing import Any

# --- DOCUMENTED ------------------------------------------------------------------------------------------------------

# Minimum seconds between two calls of one endpoint by one identity (``x-rate-limit: threshold``).
DOCUMENTED_INTERVALS: dict[str, float] = {
    "PUT /api/v0/asks/{id}/": 4.5,  # create_instance.yaml (also "penalty: 12", see CREATE_PENALTY_S)
    "GET /api/v1/instances/": 1.0,  # show_instances.yaml
    "GET /api/v0/instances/{id}/": 2.0,  # show_instance.yaml
    "DELETE /api/v0/instances/{id}/": 3.0,  # destroy_instance.yaml
    "PUT /api/v0/instances/{id}/": 1.0,  # label_instance.yaml, manage_instance.yaml, stop_instance.yaml
    "PUT /api/v0/instances/bid_price/{id}/": 5.5,  # change_bid.yaml
    "PUT /api/v0/instances/reboot/{id}/": 1.0,  # reboot_instance.yaml
    "PUT /api/v0/instances/recycle/{id}/": 1.0,  # recycle_instance.yaml
    "POST /api/v0/ssh/": 1.0,  # create_ssh_key.yaml
    "PUT /api/v0/ssh/{id}/": 1.0,  # update_ssh_key.yaml
    "DELETE /api/v0/instances/{id}/ssh/{key}/": 2.0,  # detach_ssh.yaml
}
CREATE_ENDPOINT = "PUT /api/v0/asks/{id}/"
CREATE_PENALTY_S = 12.0  # create_instance.yaml "penalty: 12"; how it is read: see ratelimit.RateLimiter.check
SEARCH_ENDPOINT = "POST /api/v0/bundles/"
SEARCH_REQUESTS = 10  # search_offers.yaml: "requests: 10, per: minute", "Rate limit per IP address"
SEARCH_WINDOW_S = 60.0
RATE_LIMIT_TEXT = "API requests too frequent"  # rate-limits-and-errors.mdx; no Retry-After header is sent

# Create (create_instance.yaml ``x-input-validation``).
CREATE_IMAGE_MAX = 1024
CREATE_ARGS_MAX = 4096  # "Combined length of args, args_str and onstart"
CREATE_LABEL_MAX = 256
CREATE_ENV_VALUE_MAX = 256
CREATE_ENV_TOTAL_MAX = 32768
CREATE_PRICE_MIN, CREATE_PRICE_MAX = 0.001, 128.0
CREATE_DISK_MIN = 8.0
LABEL_MAX = 1024  # label_instance.yaml: PUT /instances/{id}/ {"label"}

# Ports (networking.mdx): at most 64 open ports per instance; a request above 70000 is an identity port: a random
# external port mapped to the same number inside, found in $VAST_TCP_PORT_<request>.
MAX_OPEN_PORTS = 64
IDENTITY_PORT_MIN = 70000

NO_SSH_KEYS_STATUS = 404  # show_ssh_keys.yaml: "No SSH keys found for the user."

# --- INFERRED (no source settles these; change them here and only here) -----------------------------------------

# Endpoints with no documented threshold: 0 = not limited. Our own clients pace only what is documented, so a limit
# here would refuse calls no document warned about.
UNDOCUMENTED_INTERVAL_S = 0.0
INFERRED_INTERVALS: dict[str, float] = {
    # The deprecated unpaged list: as the v1 list it replaced (one call per second).
    "GET /api/v0/instances/": 1.0,
    # Bulk create rents like the single create: same threshold and penalty.
    "POST /api/v0/asks/bulk/": 4.5,
}
PENALIZED_ENDPOINTS = frozenset({CREATE_ENDPOINT, "POST /api/v0/asks/bulk/"})
# The older search forms share the one per-address search budget with POST /bundles/.
SEARCH_ENDPOINTS = frozenset({SEARCH_ENDPOINT, "GET /api/v0/bundles/", "PUT /api/v0/search/asks/"})
# The 429 bodies' mix (the docs: "often plain text", "in certain cases JSON"); weights of a seeded draw.
# "text": "API requests too frequent: endpoint threshold=4.5"; "bare": "API requests too frequent";
# "detail": {"detail": "API requests too frequent endpoint threshold=4.5"} (the OpenAPI examples);
# "json": {"success": false, "error": "rate_limit_exceeded", "msg": ...} (destroy_instance's example).
DOCUMENTED_BODY_MIX: tuple[tuple[str, float], ...] = (("text", 0.45), ("bare", 0.35), ("detail", 0.1), ("json", 0.1))
# A refused search shows the budget as a threshold of window / requests seconds.
# Overlays unavailable (overlays_available: false): the overlay endpoints are in no OpenAPI file, so the answer of an
# account without the feature is a guess: 403 with Vast's usual error envelope.
OVERLAYS_UNAVAILABLE_STATUS = 403
OVERLAYS_UNAVAILABLE_BODY: dict[str, Any] = {
    "success": False, "error": "permission_denied",
    "msg": "Overlay networks are not available for this account.",
}
# The body of GET /ssh/ with no keys (the docs give only the description).
NO_SSH_KEYS_BODY: dict[str, Any] = {"success": False, "error": "not_found", "msg": "No SSH keys found for the user."}
# Host-side addresses in local_ipaddrs: the machine's LAN address and the docker bridge, as the docs' example
# ("10.2.202.31 172.17.0.1 \n"). The LAN address is made from the machine id in 192.168/16, outside every overlay
# subnet (10.0.0.0/8) the emulator hands out.
DOCKER_BRIDGE_ADDRESS = "172.17.0.1"
# Request ports 65536-69999 are neither real ports nor identity requests: refused.


def host_lan_address(machine_id: int) -> str:
    """[inferred] The machine's address on its host's LAN (first in ``local_ipaddrs``)."""
    return f"192.168.{(machine_id // 253) % 256}.{machine_id % 253 + 1}"
