"""Vast's documented rate limits over HTTP, at their documented values: intervals per endpoint and identity (key +
client address), the create penalty, the per-address search window, 429 bodies without ``Retry-After``, and the
switch (``rate_limits=``, the admin API).

The limiter's clock is a fake one the test moves (``rate_clock``), so "4.5 s later" costs no waiting; everything else
is the real server on loopback. A second client address is 127.0.0.2 (still loopback): the server also listens there
because its runtime names that bind address, and the client binds its socket to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from skyward_ray.emulator.documented import DOCUMENTED_INTERVALS
from skyward_ray.emulator.runtime import NoneRuntime
from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import ManualClock, running_emulator

OTHER_ADDRESS = "127.0.0.2"
TEXT_BODIES = ("API requests too frequent", "API requests too frequent: endpoint threshold=")


class SecondAddressRuntime(NoneRuntime):
    @property
    def api_bind_host(self) -> str | None:
        return OTHER_ADDRESS


@pytest.fixture
def fake_time() -> ManualClock:
    return ManualClock()


@pytest.fixture
def documented(fake_time: ManualClock) -> Iterator[EmulatorServer]:
    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits="documented", rate_clock=fake_time,
                          runtime=SecondAddressRuntime()) as emu:
        yield emu


def client(emu: EmulatorServer, *, key: str | None = None, address: str = "127.0.0.1") -> httpx.Client:
    headers = {"Authorization": f"Bearer {key or emu.api_key}"}
    return httpx.Client(base_url=f"http://{OTHER_ADDRESS}:{emu.port}", headers=headers, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture
def api(documented: EmulatorServer) -> Iterator[httpx.Client]:
    with client(documented) as c:
        yield c


def admin(emu: EmulatorServer) -> httpx.Client:
    return httpx.Client(base_url=emu.admin_url, timeout=30)


def is_limited(response: httpx.Response) -> bool:
    if response.status_code != 429:
        return False
    assert "Retry-After" not in response.headers  # rate-limits-and-errors.mdx: Vast sets none
    return True


# (method, path, body) for every documented endpoint the emulator serves; ids need not exist (a 404 still counts).
CALLS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "GET /api/v1/instances/": ("GET", "/api/v1/instances/", None),
    "GET /api/v0/instances/{id}/": ("GET", "/api/v0/instances/7/", None),
    "DELETE /api/v0/instances/{id}/": ("DELETE", "/api/v0/instances/7/", {}),
    "PUT /api/v0/instances/{id}/": ("PUT", "/api/v0/instances/7/", {"label": "x"}),
    "PUT /api/v0/instances/bid_price/{id}/": ("PUT", "/api/v0/instances/bid_price/7/", {"price": 1.0}),
    "PUT /api/v0/instances/reboot/{id}/": ("PUT", "/api/v0/instances/reboot/7/", {}),
    "PUT /api/v0/instances/recycle/{id}/": ("PUT", "/api/v0/instances/recycle/7/", {}),
    "POST /api/v0/ssh/": ("POST", "/api/v0/ssh/", {"ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey t@t"}),
    "PUT /api/v0/ssh/{id}/": ("PUT", "/api/v0/ssh/7/", {"ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey t@t"}),
    "DELETE /api/v0/instances/{id}/ssh/{key}/": ("DELETE", "/api/v0/instances/7/ssh/3/", {}),
}


def call(c: httpx.Client, endpoint: str) -> httpx.Response:
    method, path, body = CALLS[endpoint]
    return c.request(method, path, json=body)


@pytest.mark.parametrize("endpoint", sorted(set(DOCUMENTED_INTERVALS) - {"PUT /api/v0/asks/{id}/"}))
def test_each_documented_interval_per_endpoint_and_identity(documented: EmulatorServer, api: httpx.Client,
                                                            fake_time: ManualClock, endpoint: str) -> None:
    interval = DOCUMENTED_INTERVALS[endpoint]
    assert not is_limited(call(api, endpoint))
    assert is_limited(call(api, endpoint))
    fake_time.advance(interval - 0.05)
    refused = call(api, endpoint)
    assert is_limited(refused)  # a refused call does not restart the interval, but it is still inside it
    other_key = admin(documented).post("/users/", json={"credit": 5}).json()["api_key"]
    with client(documented, key=other_key) as another_key, client(documented, address=OTHER_ADDRESS) as elsewhere:
        assert not is_limited(call(another_key, endpoint))  # identity = key + client address
        assert not is_limited(call(elsewhere, endpoint))
    other = "GET /api/v1/instances/" if endpoint != "GET /api/v1/instances/" else "GET /api/v0/instances/{id}/"
    assert not is_limited(call(api, other))  # each endpoint has its own interval
    fake_time.advance(0.05)
    assert not is_limited(call(api, endpoint))  # exactly the interval after the last accepted call


def test_create_interval_and_penalty(documented: EmulatorServer, api: httpx.Client, fake_time: ManualClock) -> None:
    offers = api.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 8}).json()["offers"]
    asks = iter(o["id"] for o in offers)

    def create(c: httpx.Client = api) -> httpx.Response:
        return c.put(f"/api/v0/asks/{next(asks)}/", json={"image": "vastai/base-image"})

    assert create().status_code == 200
    fake_time.advance(4.5)
    assert create().status_code == 200  # at the documented pace: never refused
    fake_time.advance(1.0)
    early = create()
    assert is_limited(early)  # inside 4.5 s: refused, and the identity earns the 12 s penalty
    fake_time.advance(11.9)
    assert is_limited(create())  # 12.9 s after the last accepted create, but inside the penalty: refused again,
    fake_time.advance(11.9)  # and that refusal restarts the 12 s
    assert is_limited(create())
    with client(documented, address=OTHER_ADDRESS) as elsewhere:
        assert create(elsewhere).status_code == 200  # another identity is not penalised
    fake_time.advance(12.0)
    assert create().status_code == 200  # 12 s after the last refused create
    rented = [row["label"] for row in admin(documented).get("/state/").json()["instances"]]
    assert len(rented) == 4


def test_search_budget_is_ten_a_minute_per_client_address(documented: EmulatorServer, api: httpx.Client,
                                                          fake_time: ManualClock) -> None:
    for _ in range(10):
        assert not is_limited(api.post("/api/v0/bundles/", json={"limit": 1}))
        fake_time.advance(5.0)  # 10 searches over 45 s
    eleventh = api.post("/api/v0/bundles/", json={"limit": 1})
    assert is_limited(eleventh)
    other_key = admin(documented).post("/users/", json={"credit": 5}).json()["api_key"]
    with client(documented, key=other_key) as another_key:
        assert is_limited(another_key.post("/api/v0/bundles/", json={"limit": 1}))  # per address, whatever the key
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as anonymous:
        assert is_limited(anonymous.post(f"http://{OTHER_ADDRESS}:{documented.port}/api/v0/bundles/",
                                         json={"limit": 1}))
    assert is_limited(api.get("/api/v0/bundles/", params={"q": "{}"}))  # the older forms share the budget
    with client(documented, address=OTHER_ADDRESS) as elsewhere:
        assert not is_limited(elsewhere.post("/api/v0/bundles/", json={"limit": 1}))
    fake_time.advance(10.0)  # the first search is now 60 s old: the window slides past it
    assert not is_limited(api.post("/api/v0/bundles/", json={"limit": 1}))
    assert is_limited(api.post("/api/v0/bundles/", json={"limit": 1}))  # the second is 55 s old


def test_429_bodies_are_vasts_mix_and_never_carry_retry_after(api: httpx.Client) -> None:
    api.get("/api/v0/instances/1/")
    forms: set[str] = set()
    for _ in range(120):
        limited = api.get("/api/v0/instances/1/")
        assert is_limited(limited)
        if limited.headers["content-type"].startswith("text/plain"):
            assert limited.text in ("API requests too frequent", "API requests too frequent: endpoint threshold=2.0")
            forms.add("bare" if limited.text == "API requests too frequent" else "text")
        else:
            body = limited.json()
            if "detail" in body:
                assert body == {"detail": "API requests too frequent endpoint threshold=2.0"}
                forms.add("detail")
            else:
                assert body == {"success": False, "error": "rate_limit_exceeded",
                                "msg": "API requests too frequent endpoint threshold=2.0"}
                forms.add("json")
    assert forms == {"text", "bare", "detail", "json"}


def test_undocumented_endpoints_are_not_limited_and_the_legacy_list_has_its_inferred_interval(
        api: httpx.Client, fake_time: ManualClock) -> None:
    assert all(not is_limited(api.get("/api/v0/users/current/")) for _ in range(5))
    assert all(not is_limited(api.get("/api/v0/overlay/")) for _ in range(5))
    assert not is_limited(api.get("/api/v0/instances/", params={"owner": "me"}))
    assert is_limited(api.get("/api/v0/instances/", params={"owner": "me"}))
    fake_time.advance(1.0)
    assert not is_limited(api.get("/api/v0/instances/", params={"owner": "me"}))


def test_the_switch_in_the_admin_api(documented: EmulatorServer, api: httpx.Client, fake_time: ManualClock) -> None:
    control = admin(documented)
    table = control.get("/rate_limits/").json()
    assert table["mode"] == "documented" and table["identity"] == "API key + client address"
    assert table["intervals_s"]["PUT /api/v0/asks/{id}/"] == 4.5 and table["create_penalty_s"] == 12.0
    assert table["search"]["requests"] == 10 and table["search"]["window_s"] == 60.0
    assert table["inferred"]["intervals_s"]["GET /api/v0/instances/"] == 1.0
    assert control.get("/faults/").json()["rate_limit"]["mode"] == "documented"

    assert control.put("/rate_limits/", json={"mode": "off"}).json()["mode"] == "off"
    assert all(not is_limited(api.get("/api/v0/instances/1/")) for _ in range(3))

    scaled = control.put("/rate_limits/", json={"mode": "x0.1"}).json()
    assert scaled["intervals_s"]["GET /api/v0/instances/{id}/"] == 0.2 and scaled["search"]["window_s"] == 6.0
    api.get("/api/v0/instances/1/")
    assert is_limited(api.get("/api/v0/instances/1/"))
    fake_time.advance(0.2)
    assert not is_limited(api.get("/api/v0/instances/1/"))

    bad = control.put("/rate_limits/", json={"mode": "fast"})
    assert bad.status_code == 400 and "'fast' is not allowed; allowed: documented | off | x<scale>" in bad.json()["msg"]
    assert control.put("/rate_limits/", json={"speed": 1}).status_code == 400
    assert control.put("/faults/", json={"rate_limit": {"mode": "documented"}}).json()["rate_limit"]["mode"] == \
        "documented"


def test_documented_is_the_default_and_a_bad_switch_is_refused() -> None:
    with running_emulator(seed=0) as emu:
        assert emu.market.faults.rate_limit.mode == "documented"
        assert emu.ready_line()["rate_limits"] == "documented"
    with pytest.raises(ValueError, match=r"rate_limits: 'x0' is not allowed; allowed: documented \| off"):
        EmulatorServer(rate_limits="x0")


def test_our_paced_client_earns_no_429_at_the_documented_pace() -> None:
    """Three creates back to back through our client at the documented limits: its pacer spaces them 4.5 s apart."""
    from skyward_ray.vast.client import VastClient

    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits="documented") as emu, \
            httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.api_key}"}) as raw, \
            VastClient(api_key=emu.api_key, base_url=emu.url, rate_scale=1.0) as paced:
        offers = raw.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 3}).json()["offers"]
        for offer in offers:
            paced.create_instance(offer["id"], image="vastai/base-image", disk_gb=10, label="paced")
        statuses = raw.get(f"{emu.admin_url}/counters/").json()["statuses"]
        assert statuses["PUT /api/v0/asks/{id}/"] == {"200": 3}
