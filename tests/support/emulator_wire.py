"""Raw HTTP calls to a running emulator for the emulator tests (plain httpx, so they check what is on the wire):
search, rent, read an instance, and the admin API's faults and clock."""

from __future__ import annotations

from typing import Any

import httpx

FROZEN_BOOT_S = 30.0  # boot delay of the frozen-clock emulator fixture


def set_faults(client: httpx.Client, **patch: Any) -> dict[str, Any]:
    """Change the emulator's fault settings; returns them as they now are."""
    response = client.put("/_emulator/faults/", json=patch)
    assert response.status_code == 200, response.text
    return response.json()


def advance(client: httpx.Client, seconds: float) -> None:
    """Move the emulator's market clock forward."""
    response = client.post("/_emulator/clock/", json={"advance": seconds})
    assert response.status_code == 200, response.text


def first_offer(client: httpx.Client, **filters: Any) -> dict[str, Any]:
    """The cheapest offer whose fields equal ``filters``."""
    query = {key: {"eq": value} for key, value in filters.items()}
    response = client.post("/api/v0/bundles/", json={**query, "order": [["dph_total", "asc"]], "limit": 1})
    assert response.status_code == 200, response.text
    return response.json()["offers"][0]


def rent(client: httpx.Client, offer: dict[str, Any], **body: Any) -> int:
    """Rent ``offer``; returns the new instance id."""
    response = client.put(f"/api/v0/asks/{offer['id']}/", json={"image": "vastai/base-image", **body})
    assert response.status_code == 200, response.text
    return int(response.json()["new_contract"])


def instance(client: httpx.Client, instance_id: int) -> dict[str, Any] | None:
    """One instance as ``GET /api/v0/instances/{id}/`` shows it (None once it is gone)."""
    response = client.get(f"/api/v0/instances/{instance_id}/")
    assert response.status_code == 200, response.text
    return response.json()["instances"]
