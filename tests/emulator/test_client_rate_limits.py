"""Our client living within Vast's documented rate limits, against the emulator enforcing them over HTTP.

Paced creates from many threads and client instances earn no 429; a 429 (which carries no ``Retry-After``) is waited
out for the endpoint's penalty and the create then goes through, exactly once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.endpoints import CREATE_INSTANCE
from skyward_ray.vast.models import Offer
from skyward_ray.vast.pacing import CREATE_KEY

IMAGE = "vastai/base-image:@vastai-automatic-tag"
# The emulator's limits and our pacing both scaled x0.1: the same rules (intervals, penalty, search window), ten times
# faster, so sixteen paced creates take about 9 s instead of 70. test_documented_pace_earns_no_429 keeps them real.
SCALE = 0.1


@pytest.fixture
def scaled() -> Iterator[EmulatorServer]:
    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits=f"x{SCALE}") as emu:
        yield emu


def admin(emu: EmulatorServer) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=30)


def create_statuses(emu: EmulatorServer) -> dict[str, int]:
    with admin(emu) as api:
        counters = api.get("/_emulator/counters/").json()
    return dict(counters["statuses"].get(CREATE_KEY, {}))


def single_gpu_offers(client: VastClient, n: int) -> list[Offer]:
    offers = client.search_offers({"num_gpus": {"eq": 1}, "rentable": {"eq": True}, "order": [["dph_total", "asc"]],
                                   "limit": 200})  # fmt: skip
    by_machine = {o.machine_id: o for o in offers}  # one per machine, so no rental takes another's GPUs
    assert len(by_machine) >= n, f"the market has only {len(by_machine)} single-GPU machines"
    return list(by_machine.values())[:n]


def rent_from_threads(clients: list[VastClient], offers: list[Offer], prefix: str) -> tuple[list[int], list[float]]:
    """One thread per offer, clients taken in turn; returns the new ids and when each create was answered."""
    ids: list[int] = []
    answered: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def rent(i: int, offer: Offer) -> None:
        try:
            got = clients[i % len(clients)].create_instance(offer.id, image=IMAGE, disk_gb=10, label=f"{prefix}-{i}")
            with lock:
                ids.append(got.new_contract)
                answered.append(time.monotonic())
        except BaseException as exc:  # collected, then asserted empty by the test thread
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=rent, args=(i, offer)) for i, offer in enumerate(offers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    return ids, sorted(answered)


def test_sixteen_creates_from_sixteen_threads_are_paced_and_earn_no_429(scaled: EmulatorServer) -> None:
    clients = [VastClient(api_key=scaled.api_key, base_url=scaled.url, rate_scale=SCALE) for _ in range(4)]
    try:
        assert len({id(c.pacer) for c in clients}) == 1  # four instances, one book
        offers = single_gpu_offers(clients[0], 16)
        started = time.monotonic()
        ids, answered = rent_from_threads(clients, offers, "paced")
        elapsed = time.monotonic() - started
        assert len(set(ids)) == 16
        statuses = create_statuses(scaled)
        assert statuses.get("429", 0) == 0, statuses
        assert sum(c.stats.get(str(CREATE_INSTANCE), 0) for c in clients) == 16  # no retry of any kind
        step = clients[0].pace_limits.interval(CREATE_KEY)
        assert elapsed >= 15 * step  # paced, not a burst
        assert elapsed <= 15 * (step + clients[0].pace_limits.margin_s) + 5.0, elapsed  # and not much slower
        assert all(b - a > 0 for a, b in itertools.pairwise(answered))
        labels = {i.label for i in clients[0].list_instances()}
        assert {f"paced-{i}" for i in range(16)} <= labels  # every rental carries its own label
    finally:
        for client in clients:
            client.close()


def test_a_429_without_retry_after_is_waited_out_and_the_create_goes_through_once(scaled: EmulatorServer) -> None:
    """A client that does not pace its creates (the override turns it off) earns a 429 on its second create and
    waits the scaled penalty (1.2 s) before retrying; the paced neighbour of the same identity then waits too."""
    with VastClient(api_key=scaled.api_key, base_url=scaled.url, rate_scale=SCALE,
                    min_interval_s={CREATE_KEY: 0}) as eager, \
            VastClient(api_key=scaled.api_key, base_url=scaled.url, rate_scale=SCALE) as paced:  # fmt: skip
        offers = single_gpu_offers(eager, 3)
        eager.create_instance(offers[0].id, image=IMAGE, disk_gb=10, label="eager-0")
        started = time.monotonic()
        second = eager.create_instance(offers[1].id, image=IMAGE, disk_gb=10, label="eager-1")
        waited = time.monotonic() - started
        penalty = eager.pace_limits.penalty(CREATE_KEY)
        assert penalty == pytest.approx(12.0 * SCALE)
        assert waited >= penalty
        assert eager.stats[str(CREATE_INSTANCE)] == 3  # the refused attempt, then the one that went through
        assert create_statuses(scaled).get("429") == 1
        with admin(scaled) as api:
            rows = api.get("/_emulator/state/").json()
        assert second.new_contract > 0 and "eager-1" in str(rows)
        paced.create_instance(offers[2].id, image=IMAGE, disk_gb=10, label="paced-after")
        assert create_statuses(scaled).get("429") == 1  # the neighbour earned none


def test_documented_pace_earns_no_429() -> None:
    """Real intervals: three creates from three threads start 4.5 s apart and none is refused."""
    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits="documented") as emu, \
            VastClient(api_key=emu.api_key, base_url=emu.url, rate_scale=1.0) as client:  # fmt: skip
        offers = single_gpu_offers(client, 3)
        started = time.monotonic()
        ids, _ = rent_from_threads([client], offers, "documented")
        elapsed = time.monotonic() - started
        assert len(set(ids)) == 3 and create_statuses(emu).get("429", 0) == 0
        assert 9.0 <= elapsed <= 9.0 + 2 * client.pace_limits.margin_s + 5.0
