"""A peer's create body, replayed: ray-vast 0.3.0 (PyPI) rents with ``runtype: args``, its boot script in ``args``,
its settings in ``env``, and as many identity ports (``-p 70000:70000`` and up) as the offer's ``direct_port_count``
allows, at most 64. Vast accepts that body (networking.mdx: identity ports above 70000, at most 64 open ports; an
args runtype opens no SSH port of its own), so the emulator must too.

The body's shape is rebuilt here from reading ray-vast's source (field names and sizes; no code of it is copied):
``client_id``, ``image``, ``env`` = identity ports + 7 variables, ``runtype``, ``args = ["sh", "-c", <script of
about 1.5 kB>]``, ``label = "ray-vast:<cluster>"``, ``disk`` 50. It sends no price (on-demand).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.emulator_wire import instance

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import RecordingRuntime, running_emulator, wait_until

IDENTITY_FIRST, IDENTITY_MAX = 70000, 64
BOOT_SCRIPT = "set -eu\n" + "\n".join(f"echo 'step {i}: a line of a boot script of realistic length'"
                                      for i in range(26))


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """Documented limits, as Vast; the recording runtime shows each instance's login environment."""
    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits="documented", runtime=RecordingRuntime()) as emu:
        yield emu


def ray_vast_body(direct_port_count: int, cluster: str = "demo") -> dict[str, Any]:
    identity = range(IDENTITY_FIRST, IDENTITY_FIRST + min(IDENTITY_MAX, direct_port_count))
    env = {
        "RAYVAST_HEAD_IP": "198.51.100.7",
        "RAYVAST_PORT_A": "6380",
        "RAYVAST_PORT_B": "6381",
        "RAYVAST_BOOTSTRAP_SHA256": secrets.token_hex(32),
        "RAYVAST_CA_SHA256": secrets.token_hex(32),
        "RAYVAST_CLUSTER": cluster,
        "RAYVAST_JOIN_TOKEN": secrets.token_hex(32),
    }
    return {
        "client_id": "me",
        "image": "rayproject/ray:2.60.0-py311",
        "env": {**{f"-p {p}:{p}": "1" for p in identity}, **env},
        "runtype": "args",
        "args": ["sh", "-c", BOOT_SCRIPT],
        "label": f"ray-vast:{cluster}",
        "disk": 50,
    }


@pytest.mark.parametrize("direct_port_count", [16, 64, 1000])
def test_ray_vast_create_body_is_accepted_and_maps_identity_ports(emulator: EmulatorServer,
                                                                  direct_port_count: int) -> None:
    assert 1400 < len(BOOT_SCRIPT) < 1600
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.api_key}"},
                      timeout=30) as api:
        # ray-vast's own query: direct_port_count >= 10 + CPUs, rentable, on-demand, cheapest first.
        found = api.post("/api/v0/bundles/", json={
            "num_gpus": {"eq": 1}, "direct_port_count": {"eq": direct_port_count}, "rentable": {"eq": True},
            "order": [["dph_total", "asc"]], "type": "on-demand", "limit": 1}).json()["offers"]
        [offer] = found
        body = ray_vast_body(offer["direct_port_count"])
        created = api.put(f"/api/v0/asks/{offer['id']}/", json=body)
        assert created.status_code == 200, created.text
        iid = created.json()["new_contract"]
        row = wait_until(lambda: (r := instance(api, iid)) and r["actual_status"] == "running" and r,
                         timeout_s=15, interval_s=2.1, what="the instance running")  # show: 2 s interval
    wanted = min(IDENTITY_MAX, direct_port_count)
    assert row["image_runtype"] == "args" and row["image_args"] == body["args"]
    assert row["label"] == "ray-vast:demo" and row["ssh_port"] is None
    assert "22/tcp" not in row["ports"]  # an args runtype opens no SSH port
    assert len(row["ports"]) == wanted
    for key, bindings in row["ports"].items():
        host_port = bindings[0]["HostPort"]
        assert key == f"{host_port}/tcp"  # the same number inside as outside
        assert row["direct_port_start"] <= int(host_port) <= row["direct_port_end"]
    assert [pair[0] for pair in row["extra_env"][:wanted]] == \
        [f"-p {p}:{p}" for p in range(IDENTITY_FIRST, IDENTITY_FIRST + wanted)]
    [spec] = [s for s in emulator.market.runtime.specs if s.instance_id == iid]  # type: ignore[attr-defined]
    mapped = {int(spec.env[f"VAST_TCP_PORT_{p}"]) for p in range(IDENTITY_FIRST, IDENTITY_FIRST + wanted)}
    assert mapped == {int(b[0]["HostPort"]) for b in row["ports"].values()}  # $VAST_TCP_PORT_70000 finds each port
    assert spec.env["RAYVAST_CLUSTER"] == "demo"


def test_one_more_identity_port_than_the_offer_has_is_refused(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.api_key}"},
                      timeout=30) as api:
        [offer] = api.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "direct_port_count": {"eq": 16},
                                                      "limit": 1}).json()["offers"]
        body = ray_vast_body(17)
        refused = api.put(f"/api/v0/asks/{offer['id']}/", json=body)
    assert refused.status_code == 400
    assert refused.json()["msg"].startswith("error 400/3467: Invalid args: env: 17 ports requested")
