"""A fake of the Vast API at the HTTP level, for the client's unit tests: recorded-shape bodies, a scripted server
behind ``httpx.MockTransport`` (no socket is opened), and a clock that records the client's sleeps.

The bodies carry Vast's quirks as its API, the official CLI, SkyPilot and dstack show them: numbers as strings,
``HostPort`` as text, trailing whitespace, ``local_ipaddrs`` as text, v1 ``extra_env`` pairs.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import httpx

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.endpoints import ENDPOINTS
from skyward_ray.vast.pacing import DOCUMENTED_INTERVALS_S, DOCUMENTED_WINDOWS

# A fake key, long and distinctive so a leak anywhere is found by a plain substring search.
API_KEY = "vk-TEST-4f1c9a7e2b6d4c08a3e5f7b9d1c3e5a7-DO-NOT-LEAK"
BASE_URL = "http://127.0.0.1:18080"  # only ever a MockTransport target

OFFER = {
    "id": 4242,
    "ask_contract_id": 4242,
    "bundle_id": 99,
    "machine_id": "1234",
    "host_id": 77,
    "cluster_id": 5,
    "gpu_name": "RTX 4090",
    "num_gpus": "2",
    "gpu_ram": 24564,
    "gpu_total_ram": 49128,
    "cuda_max_good": "12.8",
    "compute_cap": 890,
    "dph_total": "0.8123",
    "dph_base": 0.75,
    "min_bid": 0.41,
    "storage_cost": 0.15,
    "reliability": 0.99,
    "reliability2": 0.995,
    "verification": "verified",
    "vericode": 1,
    "hosting_type": 1,
    "geolocation": "California, US ",
    "inet_up": 850.5,
    "inet_down": 920.1,
    "disk_space": 512.0,
    "direct_port_count": 100,
    "cpu_cores": None,
    "cpu_cores_effective": 16.0,
    "cpu_ram": 128000,
    "public_ipaddr": "203.0.113.7 ",
    "rentable": True,
    "rented": False,
    "is_bid": False,
    "score": 312.4,
    "search": {"gpuCostPerHour": 0.75, "diskHour": 0.0021, "totalHour": 0.7521},
}

INSTANCE = {
    "id": 31337,
    "machine_id": 1234,
    "host_id": 77,
    "bundle_id": 99,
    "actual_status": "running",
    "intended_status": "running",
    "cur_state": "running",
    "next_state": "running",
    "status_msg": "success, running vastai/base-image",
    "label": "skyray:v1:demo:head",
    "ssh_host": "ssh5.vast.ai",
    "ssh_port": "31338",
    "ssh_idx": "5",
    "public_ipaddr": "203.0.113.7\n",
    "local_ipaddrs": "10.0.0.2 172.17.0.3\n",
    "ports": {
        "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}, {"HostIp": "::", "HostPort": "41022"}],
        "8265/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41023"}],
        "8080/tcp": [],
    },
    "gpu_name": "RTX 4090",
    "num_gpus": 2,
    "dph_total": "0.8123",
    "min_bid": 0.41,
    "is_bid": False,
    "geolocation": "California, US",
    "start_date": 1764050000.5,
    "image_uuid": "rayproject/ray:2.60.0-py311-gpu",
    "image_runtype": "ssh ssh_direc ssh_proxy",
    "onstart": "echo hello",
    "extra_env": [["-p 8265:8265", "1"], ["-n skyray-demo", "1"], ["RAY_USAGE_STATS_ENABLED", "0"]],
    "direct_port_count": 100,
    "jupyter_token": "abc123",
    "time_remaining": "",
}


def instance(**overrides: Any) -> dict[str, Any]:
    """A fresh copy of the recorded instance with some fields changed."""
    row = copy.deepcopy(INSTANCE)
    row.update(overrides)
    return row


def offer(**overrides: Any) -> dict[str, Any]:
    """A fresh copy of the recorded offer with some fields changed."""
    row = copy.deepcopy(OFFER)
    row.update(overrides)
    return row


def v1_page(rows: list[dict[str, Any]], next_token: str | None, total: int | None = None) -> dict[str, Any]:
    """One page of the paged instance list (``GET /api/v1/instances/``)."""
    return {
        "success": True,
        "instances_found": len(rows),
        "total_instances": total if total is not None else len(rows),
        "label_counts": {"skyray:v1:demo:head": 1, "": 0},
        "next_token": next_token,
        "instances": rows,
    }


OVERLAYS = [
    {"overlay_id": 11, "name": "skyray-demo", "internal_subnet": "10.0.0.0/24", "cluster_id": 5, "instances": [31337]},
    {"overlay_id": 12, "name": "other", "subnet": "10.0.1.0/24", "cluster_id": 6, "instances": None},
]

USER = {
    "id": 501,
    "email": "someone@example.org",
    "username": "someone",
    "fullname": "Some One",
    "credit": "25.0",
    "balance": 0.0,
    "can_pay": True,
    "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKQ someone@laptop",
    "api_key": API_KEY,
    "sid": "xyz",
}

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr8f0o6p8cbE4i8cW9zAl8ZLxkq7tE2n3p1kA7s6tQ1 skyward@laptop"

SSH_KEYS = [
    {"id": 7, "user_id": 501, "key": PUBLIC_KEY, "created_at": "2026-11-01T10:00:00", "deleted_at": None},
]

ENVELOPE_401 = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
ENVELOPE_NO_SUCH_INSTANCE = {"success": False, "error": "no_such_instance", "msg": "Instance 31337 not found."}
ENVELOPE_NO_SUCH_ASK = {
    "success": False,
    "error": "invalid_args",
    "msg": "error 404/3603: no_such_ask Instance type by id 4242 is not available.",
    "ask_id": 4242,
}
ENVELOPE_GONE_410 = {"error": "no_such_ask", "msg": "Offer 4242 is no longer available."}
ENVELOPE_BAD_ARGS = {"success": False, "error": "invalid_args", "msg": "error 400/3467: Invalid args: disk"}
QUOTA_BODY = {"success": False, "error": "search_quota_exceeded", "msg": "Daily search quota exceeded."}
RATE_LIMIT_TEXT = "API requests too frequent endpoint threshold=2.0"


Responder = httpx.Response | Callable[[httpx.Request], httpx.Response]


class FakeVastHttp:
    """A scripted Vast API server behind ``httpx.MockTransport`` (the client's wire, not the client).

    Responses are queued per ``"METHOD /path/"``; each request takes the next one and the last one repeats. An
    entry may be a response or a callable (which may raise an httpx transport error). Every request is recorded.
    """

    def __init__(self) -> None:
        self._queues: dict[str, deque[Responder]] = defaultdict(deque)
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *responses: Responder) -> FakeVastHttp:
        self._queues[f"{method} {path}"].extend(responses)
        return self

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = f"{request.method} {request.url.path}"
        queue = self._queues.get(key)
        if not queue:
            raise AssertionError(f"unexpected request {key}")
        item = queue.popleft() if len(queue) > 1 else queue[0]
        return item(request) if callable(item) else item

    def sent(self, method: str | None = None, path: str | None = None) -> list[httpx.Request]:
        return [
            r for r in self.requests if (method is None or r.method == method) and (path is None or r.url.path == path)
        ]

    @staticmethod
    def body(request: httpx.Request) -> Any:
        return json.loads(request.content) if request.content else None


def raises(exc_type: type[httpx.TransportError], message: str = "boom") -> Callable[[httpx.Request], httpx.Response]:
    """A responder that fails the way httpx reports transport problems."""

    def respond(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)

    return respond


def json_response(status: int, body: Any, **headers: str) -> httpx.Response:
    """An answer with a JSON body."""
    return httpx.Response(status, json=body, headers=headers)


def text_response(status: int, text: str, **headers: str) -> httpx.Response:
    """An answer with a plain-text body (as Vast's gateway and rate limiter send)."""
    return httpx.Response(status, text=text, headers={"Content-Type": "text/plain", **headers})


class RecordingClock(ManualClock):
    """The manual clock, also recording each sleep the client asks for, so waits are asserted, not waited."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


# Every endpoint unpaced: tests about parsing, errors and retries assert their own waits, and the documented pacing
# would add sleeps that have nothing to do with them. Pacing has its own tests (tests/unit/vast/test_vast_pacing.py).
NO_PACING: dict[str, float] = {
    "*": 0.0,
    **{str(e): 0.0 for e in ENDPOINTS},
    **dict.fromkeys(DOCUMENTED_INTERVALS_S, 0.0),
    **dict.fromkeys(DOCUMENTED_WINDOWS, 0.0),
}


def make_client(fake: FakeVastHttp, clock: RecordingClock | None = None, **kwargs: Any) -> VastClient:
    """A client on the fake's transport and a recording clock, unpaced unless the test sets pacing."""
    clock = clock or RecordingClock()
    if "min_interval_s" not in kwargs and "rate_scale" not in kwargs:
        kwargs["min_interval_s"] = NO_PACING
    return VastClient(
        API_KEY,
        BASE_URL,
        transport=httpx.MockTransport(fake.handler),
        sleep=clock.sleep,
        clock=clock,
        **kwargs,
    )
