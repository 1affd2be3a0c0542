"""The client's pacing to Vast's documented limits: one book per process and identity, fair, scaled, overridable.

A fake clock moves only when a caller sleeps, so intervals are asserted exactly and nothing waits for real, except
the thread tests, which use the real clock with the limits scaled down (x0.01) so they take a second, not a minute.
"""

from __future__ import annotations

import itertools
import threading
import time

import httpx
import pytest
from support.fake_vast_http import (
    API_KEY,
    BASE_URL,
    QUOTA_BODY,
    FakeVastHttp,
    RecordingClock,
    json_response,
    make_client,
    text_response,
)

from skyward_ray.errors import ConfigError
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.endpoints import CREATE_INSTANCE, GET_INSTANCE, LIST_INSTANCES, SEARCH_OFFERS
from skyward_ray.vast.errors import QuotaExceededError, RateLimitedError
from skyward_ray.vast.pacing import (
    CREATE_KEY,
    DOCUMENTED_INTERVALS_S,
    RATE_SCALE_ENV,
    SEARCH_KEY,
    PaceLimits,
    Pacer,
    Ticket,
    Window,
    identity_of,
    resolve_rate_scale,
    shared_pacer,
)

ASK = "/api/v0/asks/4242/"
ONE = "/api/v0/instances/31337/"
BUNDLES = "/api/v0/bundles/"
CREATED = {"success": True, "new_contract": 555}
LIMITS = PaceLimits.documented(rate_scale=1.0)
M = LIMITS.margin_s


def slots(pacer: Pacer, key: str, n: int, limits: PaceLimits = LIMITS) -> list[float]:
    return [pacer.reserve(key, limits).slot for _ in range(n)]


def second_create() -> tuple[RecordingClock, Pacer, Ticket]:
    """A fresh pacer with one create reserved; the ticket of a second create, queued behind it."""
    clock = RecordingClock()
    pacer = Pacer("t", clock)
    pacer.reserve(CREATE_KEY, LIMITS)
    return clock, pacer, pacer.reserve(CREATE_KEY, LIMITS)


def create(client: VastClient) -> int:
    return client.create_instance(4242, image="img", disk_gb=10, label="skyray:v1:t").new_contract


# --- the documented table ---------------------------------------------------------------------------------------------


def test_the_defaults_are_the_documented_table() -> None:
    assert LIMITS.interval(CREATE_KEY) == 4.5 and LIMITS.penalty(CREATE_KEY) == 12.0
    assert LIMITS.interval("GET /api/v1/instances/") == 1.0
    assert LIMITS.interval("GET /api/v0/instances/{id}/") == 2.0
    assert LIMITS.interval("DELETE /api/v0/instances/{id}/") == 3.0
    assert LIMITS.interval("PUT /api/v0/instances/{id}/") == 1.0
    assert LIMITS.interval("PUT /api/v0/instances/bid_price/{id}/") == 5.5
    assert LIMITS.interval("POST /api/v0/ssh/") == 1.0
    assert LIMITS.interval("DELETE /api/v0/instances/{id}/ssh/{key}/") == 2.0
    assert LIMITS.window(SEARCH_KEY) == Window(10, 60.0)
    assert LIMITS.interval("GET /api/v0/overlay/") == 0.0 and not LIMITS.paced("GET /api/v0/overlay/")
    assert LIMITS.penalty("GET /api/v0/instances/{id}/") == 2.0  # no documented penalty: its interval


@pytest.mark.parametrize("key", sorted(DOCUMENTED_INTERVALS_S))
def test_each_endpoint_is_spaced_by_its_own_interval(key: str) -> None:
    clock = RecordingClock()
    pacer = Pacer("t", clock)
    start = clock.now
    step = DOCUMENTED_INTERVALS_S[key] + M
    assert slots(pacer, key, 3) == pytest.approx([start, start + step, start + 2 * step])
    assert pacer.reserve("GET /api/v0/overlay/", LIMITS).slot == start  # an undocumented endpoint is not held back


def test_endpoints_do_not_hold_each_other_back() -> None:
    clock = RecordingClock()
    pacer = Pacer("t", clock)
    pacer.reserve(CREATE_KEY, LIMITS)
    assert pacer.reserve("GET /api/v1/instances/", LIMITS).slot == clock.now
    assert pacer.expected_wait(CREATE_KEY, LIMITS) == pytest.approx(4.5 + M)


def test_search_gets_ten_calls_in_any_sixty_seconds() -> None:
    clock = RecordingClock()
    pacer = Pacer("t", clock)
    start = clock.now
    first = slots(pacer, SEARCH_KEY, 10)
    assert first == [start] * 10  # no interval: a burst of ten is within the budget
    assert pacer.reserve(SEARCH_KEY, LIMITS).slot == pytest.approx(start + 60 + M)
    clock.now = start + 30
    assert pacer.expected_wait(SEARCH_KEY, LIMITS) == pytest.approx(30 + M)  # the 12th waits for the 2nd to leave


def test_a_sliding_window_counts_from_each_call() -> None:
    clock = RecordingClock()
    pacer = Pacer("t", clock)
    limits = PaceLimits(intervals={}, windows={SEARCH_KEY: Window(2, 10.0)}, margin_s=0.0)
    got = []
    for _ in range(5):
        got.append(pacer.acquire(SEARCH_KEY, limits, clock.sleep))
        clock.now += 1.0
    # t=0, t=1 free; the third waits until t=10 (0+10), the fourth until t=11, the fifth until t=20
    assert got == pytest.approx([0.0, 0.0, 8.0, 0.0, 8.0])


# --- a 429 moves everyone behind the penalty ------------------------------------------------------------------------


def test_a_penalty_moves_the_waiting_slots_behind_it_in_order() -> None:
    clock = RecordingClock()
    pacer = Pacer("t", clock)
    start = clock.now
    tickets = [pacer.reserve(CREATE_KEY, LIMITS) for _ in range(3)]  # start, +4.6, +9.2; the first one starts
    pacer.wait(tickets[0], clock.sleep)
    pacer.penalise(CREATE_KEY, 12.0, LIMITS)
    assert [t.slot for t in tickets[1:]] == pytest.approx([start + 12, start + 12 + 4.5 + M])
    assert pacer.status(CREATE_KEY, LIMITS).closed_for_s == pytest.approx(12.0)
    assert pacer.status(CREATE_KEY, LIMITS).waiting == 2
    assert pacer.expected_wait(CREATE_KEY, LIMITS) == pytest.approx(12 + 2 * (4.5 + M))
    assert pacer.wait(tickets[1], clock.sleep) == pytest.approx(12.0)


def test_a_ticket_sleeping_when_the_penalty_comes_sleeps_again() -> None:
    clock, pacer, late = second_create()

    def sleep_and_get_refused(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 1:
            pacer.penalise(CREATE_KEY, 12.0, LIMITS)  # another caller's create was refused while we slept

    waited = pacer.wait(late, sleep_and_get_refused)
    assert waited == pytest.approx(4.5 + M + 12.0)


# --- one book per process and identity --------------------------------------------------------------------------------


def test_clients_of_one_identity_share_one_book(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RATE_SCALE_ENV, raising=False)
    clock = RecordingClock()
    fake = FakeVastHttp().on("PUT", ASK, json_response(200, CREATED))
    first = make_client(fake, clock, rate_scale=1.0)
    second = make_client(fake, clock, rate_scale=1.0)
    assert first.pacer is second.pacer
    create(first)
    create(second)  # another instance, same server and key: queued behind the first
    assert clock.sleeps == pytest.approx([4.5 + M])
    other = VastClient("another-key", BASE_URL, transport=httpx.MockTransport(fake.handler), clock=clock,
                       sleep=clock.sleep)  # fmt: skip
    assert other.pacer is not first.pacer
    create(other)
    assert clock.sleeps == pytest.approx([4.5 + M])  # another identity is not held back


def test_the_identity_never_holds_the_key() -> None:
    identity = identity_of(BASE_URL + "/", API_KEY)
    assert API_KEY not in identity and identity.startswith(BASE_URL + "#")
    assert identity != identity_of(BASE_URL, API_KEY + "x")
    assert shared_pacer(identity) is shared_pacer(identity)
    assert API_KEY not in repr(make_client(FakeVastHttp()).pacer.identity)


def test_threads_and_clients_queue_fairly_with_no_burst() -> None:
    """Real clock, limits scaled x0.01 so eight creates from eight threads and two clients take about a second."""
    starts: list[float] = []
    lock = threading.Lock()

    def answer(request: httpx.Request) -> httpx.Response:
        with lock:
            starts.append(time.monotonic())
        return json_response(200, CREATED)

    fake = FakeVastHttp().on("PUT", ASK, answer)
    key = f"threads-{time.monotonic_ns()}"  # a book of its own, whatever else the process did
    clients = [VastClient(key, BASE_URL, transport=httpx.MockTransport(fake.handler), rate_scale=0.01)
               for _ in range(2)]  # fmt: skip
    threads = [threading.Thread(target=create, args=(clients[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    step = clients[0].pace_limits.interval(CREATE_KEY) + clients[0].pace_limits.margin_s
    starts.sort()
    assert len(starts) == 8
    assert all(b - a >= step - 0.01 for a, b in itertools.pairwise(starts)), starts
    for client in clients:
        client.close()


# --- scale and overrides ----------------------------------------------------------------------------------------------


def test_rate_scale_scales_every_interval_penalty_and_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RATE_SCALE_ENV, raising=False)
    limits = PaceLimits.documented(rate_scale=0.1)
    assert limits.interval(CREATE_KEY) == pytest.approx(0.45)
    assert limits.penalty(CREATE_KEY) == pytest.approx(1.2)
    assert limits.window(SEARCH_KEY) == Window(10, pytest.approx(6.0))
    assert limits.margin_s == M  # latency jitter does not shrink with the server's limits
    client = make_client(FakeVastHttp(), rate_scale=0.1)
    assert client.pace_limits.interval("GET /api/v0/instances/{id}/") == pytest.approx(0.2)


def test_rate_scale_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RATE_SCALE_ENV, "0.5")
    assert resolve_rate_scale() == 0.5
    assert make_client(FakeVastHttp(), rate_scale=None).pace_limits.interval(CREATE_KEY) == pytest.approx(2.25)
    assert resolve_rate_scale(2.0) == 2.0  # an explicit value wins
    monkeypatch.delenv(RATE_SCALE_ENV)
    assert resolve_rate_scale() == 1.0


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "nan", "inf"])
def test_a_bad_rate_scale_in_the_environment_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(RATE_SCALE_ENV, bad)
    with pytest.raises(ConfigError, match=rf"\$SKYWARD_VAST_RATE_SCALE = '{bad}' is not allowed: use a number > 0"):
        make_client(FakeVastHttp(), rate_scale=None)


@pytest.mark.parametrize("bad", [0, -0.5, True, float("nan")])
def test_a_bad_rate_scale_argument_is_one_clear_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"rate_scale = .* is not allowed: use a number > 0"):
        make_client(FakeVastHttp(), rate_scale=bad)


def test_min_interval_overrides_one_endpoint_and_a_number_is_a_floor() -> None:
    limits = PaceLimits.documented(rate_scale=1.0, min_interval_s={CREATE_KEY: 6.0, SEARCH_KEY: 0})
    assert limits.interval(CREATE_KEY) == 6.0  # not scaled, not the documented 4.5
    assert not limits.paced(SEARCH_KEY)  # 0 stops pacing it (its window too)
    assert limits.interval("GET /api/v1/instances/") == 1.0  # the others keep the table
    floor = PaceLimits.documented(rate_scale=1.0, min_interval_s=1.5)
    assert floor.interval("GET /api/v1/instances/") == 1.5 and floor.interval(CREATE_KEY) == 4.5
    assert floor.interval("GET /api/v0/overlay/") == 1.5
    with pytest.raises(ConfigError, match="min_interval_s key 'GET /nope/' is not allowed"):
        PaceLimits.documented(min_interval_s={"GET /nope/": 1.0})
    with pytest.raises(ConfigError, match=r"min_interval_s\['\*'\] = -1 is not allowed"):
        PaceLimits.documented(min_interval_s=-1)


def test_expected_wait_tells_a_caller_how_long_the_next_create_waits() -> None:
    clock = RecordingClock()
    client = make_client(FakeVastHttp().on("PUT", ASK, json_response(200, CREATED)), clock, rate_scale=1.0)
    assert client.expected_wait() == 0.0
    create(client)
    assert client.expected_wait() == pytest.approx(4.5 + M)
    assert client.expected_wait(LIST_INSTANCES) == 0.0
    status = client.pacing_status(CREATE_INSTANCE)
    assert status.key == CREATE_KEY and status.next_slot_in_s == pytest.approx(4.5 + M) and status.waiting == 0


# --- 429s ------------------------------------------------------------------------------------------------------------


def test_a_create_refused_without_retry_after_waits_the_penalty_with_jitter_then_succeeds() -> None:
    clock = RecordingClock()
    fake = FakeVastHttp().on("PUT", ASK, text_response(429, "API requests too frequent"), json_response(200, CREATED))
    client = make_client(fake, clock, rate_scale=1.0)
    assert create(client) == 555
    assert len(fake.sent("PUT", ASK)) == 2  # refused before processing, so safe to send again
    assert len(clock.sleeps) == 1 and 12.0 <= clock.sleeps[0] <= 12.0 + 3.0 + 1e-9
    assert client.pacing_status().closed_for_s == 0.0  # the penalty is over by the time the retry went out


@pytest.mark.parametrize("body", ["API requests too frequent endpoint threshold=2.0", '{"detail": "too frequent"}'])
def test_a_read_refused_without_retry_after_waits_at_least_its_interval(body: str) -> None:
    clock = RecordingClock()
    ok = {"instances": {"id": 31337}}
    fake = FakeVastHttp().on("GET", ONE, text_response(429, body), json_response(200, ok))
    client = make_client(fake, clock, rate_scale=1.0)
    assert client.get_instance(31337) is not None
    assert len(clock.sleeps) >= 1 and sum(clock.sleeps) >= 2.0
    assert sum(clock.sleeps) <= 2.0 + 0.5 + M + 1e-9  # interval + jitter (+ at most the pacing margin)


def test_a_429_closes_the_endpoint_to_every_caller_of_the_identity() -> None:
    clock = RecordingClock()
    fake = FakeVastHttp().on("PUT", ASK, text_response(429, "API requests too frequent"))
    refused = make_client(fake, clock, rate_scale=1.0, retry_deadline_s=0)
    with pytest.raises(RateLimitedError):
        create(refused)
    neighbour = make_client(FakeVastHttp().on("PUT", ASK, json_response(200, CREATED)), clock, rate_scale=1.0)
    assert neighbour.pacing_status().closed_for_s == pytest.approx(12.0)
    create(neighbour)
    assert clock.sleeps == pytest.approx([12.0])


def test_retry_after_when_present_is_honoured() -> None:
    clock = RecordingClock()
    fake = FakeVastHttp().on("PUT", ASK, text_response(429, "slow down", **{"Retry-After": "20"}),
                         json_response(200, CREATED))  # fmt: skip
    client = make_client(fake, clock, rate_scale=1.0)
    create(client)
    assert clock.sleeps == pytest.approx([20.0])


def test_a_penalty_beyond_the_deadline_ends_the_call() -> None:
    clock = RecordingClock()
    fake = FakeVastHttp().on("PUT", ASK, text_response(429, "API requests too frequent"))
    client = make_client(fake, clock, rate_scale=1.0, retry_deadline_s=10)
    with pytest.raises(RateLimitedError):
        create(client)
    assert len(fake.sent("PUT", ASK)) == 1 and clock.sleeps == []


def test_the_daily_search_quota_stays_a_hard_error() -> None:
    clock = RecordingClock()
    fake = FakeVastHttp().on("POST", BUNDLES, json_response(429, QUOTA_BODY, **{"X-RateLimit-Reset": "1764979200"}))
    client = make_client(fake, clock, rate_scale=1.0)
    with pytest.raises(QuotaExceededError):
        client.search_offers({})
    assert len(fake.sent()) == 1 and clock.sleeps == []
    assert client.pacing_status(SEARCH_OFFERS).closed_for_s == 0.0


def test_the_retry_deadline_counts_from_the_slot_not_from_the_queue() -> None:
    """The fourth create waits 13.8 s for its slot, then still gets its retry after a 429."""
    clock = RecordingClock()
    refused = text_response(429, "API requests too frequent")
    fake = FakeVastHttp().on("PUT", ASK, *[json_response(200, CREATED)] * 3, refused, json_response(200, CREATED))
    client = make_client(fake, clock, rate_scale=1.0, retry_deadline_s=16)
    for _ in range(4):
        create(client)
    assert len(fake.sent("PUT", ASK)) == 5


def test_pacing_covers_every_endpoint_key_the_client_sends() -> None:
    client = make_client(FakeVastHttp(), rate_scale=1.0)
    assert client.pace_limits.interval(str(GET_INSTANCE)) == 2.0
    assert client.pace_limits.interval(str(CREATE_INSTANCE)) == 4.5


def test_every_start_counts_whatever_the_callers_limits() -> None:
    """Vast counts every call of the identity: an unpaced caller's start still spaces a paced one."""
    clock = RecordingClock()
    pacer = Pacer("t", clock)
    unpaced = PaceLimits.documented(rate_scale=1.0, min_interval_s={CREATE_KEY: 0})
    start = clock.now
    assert pacer.reserve(CREATE_KEY, unpaced).slot == start
    clock.now += 1.0
    assert pacer.reserve(CREATE_KEY, unpaced).slot == start + 1.0  # not held back itself
    assert pacer.reserve(CREATE_KEY, LIMITS).slot == pytest.approx(start + 1.0 + 4.5 + M)
    pacer.penalise(CREATE_KEY, 12.0, LIMITS)
    assert pacer.reserve(CREATE_KEY, unpaced).slot == pytest.approx(clock.now + 12.0)  # a penalty binds everyone


def test_search_is_budgeted_per_address_whatever_the_key() -> None:
    """Vast counts searches per client address: two keys in one process share the ten-per-minute budget."""
    clock = RecordingClock()
    fake = FakeVastHttp().on("POST", BUNDLES, json_response(200, {"offers": []}))
    fake.on("PUT", ASK, json_response(200, CREATED))
    one = make_client(fake, clock, rate_scale=1.0)
    other = VastClient("another-key", BASE_URL, transport=httpx.MockTransport(fake.handler), clock=clock,
                       sleep=clock.sleep, rate_scale=1.0)  # fmt: skip
    for client in (one, other) * 5:
        client.search_offers({})
    assert clock.sleeps == []
    assert one.expected_wait(SEARCH_OFFERS) == other.expected_wait(SEARCH_OFFERS) == pytest.approx(60 + M)
    create(one)
    create(other)  # creates are per key: the other key is not held back
    assert clock.sleeps == []


def test_a_caller_interrupted_while_waiting_leaves_the_queue() -> None:
    _, pacer, ticket = second_create()

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pacer.wait(ticket, interrupted)
    assert pacer.status(CREATE_KEY, LIMITS).waiting == 0
