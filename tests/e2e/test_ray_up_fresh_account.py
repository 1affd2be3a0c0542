"""A real ``ray up`` on a fresh Vast account: no SSH key registered, so Vast answers ``GET /api/v0/ssh/`` with 404.

The emulator (Vast's documented limits and shapes, netns hosts) starts with an account that has no keys; ``ray up``
must register the cluster's key, rent the head and set it up, and ``ray down`` must leave nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from support.emulated_ray_cluster import emulated_cluster

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(600)


def ssh_keys(url: str, api_key: str) -> httpx.Response:
    return httpx.get(f"{url}/api/v0/ssh/", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)


def test_ray_up_on_an_account_without_ssh_keys(netns_host: None, netns_kit: NetnsKit, tmp_path: Path) -> None:
    prefix = netns_kit.unique_prefix()
    with emulated_cluster(tmp_path, prefix=prefix, public_subnet=netns_kit.free_public_subnet(),
                          name=f"fresh-{prefix}") as cluster:
        emulator = cluster.emulator
        before = ssh_keys(emulator.url, emulator.api_key)
        assert before.status_code == 404, f"not a fresh account: {before.status_code} {before.text[:200]}"
        cluster.up().check()
        after = ssh_keys(emulator.url, emulator.api_key)
        assert after.status_code == 200 and len(after.json()) == 1, after.text[:300]
        assert len(emulator.live_instances()) == 1
        cluster.down().check()
        assert emulator.live_instances() == []
    assert not netns_kit.leftovers(prefix)
