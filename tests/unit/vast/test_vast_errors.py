"""Error types, every retry rule, the minimum interval, and that the key never leaks on an error path."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fake_vast_http import (
    API_KEY,
    ENVELOPE_401,
    ENVELOPE_BAD_ARGS,
    ENVELOPE_GONE_410,
    ENVELOPE_NO_SUCH_ASK,
    ENVELOPE_NO_SUCH_INSTANCE,
    INSTANCE,
    NO_PACING,
    QUOTA_BODY,
    RATE_LIMIT_TEXT,
    FakeVastHttp,
    RecordingClock,
    json_response,
    make_client,
    raises,
    text_response,
)

from skyward_ray.errors import SkywardError
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import (
    AuthError,
    BadRequestError,
    ConnectionFailedError,
    NotFoundError,
    OfferGoneError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    VastError,
)

ASK = "/api/v0/asks/4242/"
ONE = "/api/v0/instances/31337/"
BUNDLES = "/api/v0/bundles/"
OK_INSTANCE = {"instances": INSTANCE}
CREATED = {"success": True, "new_contract": 31337}


def create(client: VastClient) -> object:
    return client.create_instance(4242, image="img", disk_gb=10, label="skyray:v1:t:worker", price=0.3)


@pytest.fixture
def clock() -> RecordingClock:
    return RecordingClock()


@pytest.fixture
def client(fake: FakeVastHttp, clock: RecordingClock) -> VastClient:
    with make_client(fake, clock, retry_deadline_s=60.0) as vast:
        yield vast


# --- one test per error type -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "response", "error_type", "code"),
    [
        ("GET", ONE, json_response(401, ENVELOPE_401), AuthError, "auth_error"),
        ("GET", ONE, json_response(403, {"success": False, "error": "forbidden", "msg": "no permission"}), AuthError,
         "forbidden"),
        ("PUT", ONE, json_response(404, ENVELOPE_NO_SUCH_INSTANCE), NotFoundError, "no_such_instance"),
        ("PUT", ASK, json_response(404, ENVELOPE_NO_SUCH_ASK), OfferGoneError, "invalid_args"),
        ("PUT", ASK, json_response(410, ENVELOPE_GONE_410), OfferGoneError, "no_such_ask"),
        ("PUT", ONE, json_response(400, ENVELOPE_BAD_ARGS), BadRequestError, "invalid_args"),
        ("PUT", ONE, json_response(422, {"detail": "unprocessable"}), BadRequestError, None),
        ("PUT", ASK, json_response(500, {"error": "server_error", "msg": "oops"}), ServerError, "server_error"),
        ("PUT", ONE, json_response(200, {"success": False, "error": "invalid_args", "msg": "bad"}), BadRequestError,
         "invalid_args"),
        ("PUT", ONE, json_response(200, {"success": False, "error": "no_such_instance"}), NotFoundError,
         "no_such_instance"),
        ("PUT", ONE, json_response(200, {"success": False, "error": "weird"}), VastError, "weird"),
        ("PUT", ONE, httpx.Response(302, headers={"Location": "https://elsewhere.example/"}), ProtocolError, None),
    ],
)  # fmt: skip
def test_each_status_becomes_its_error_type(
    fake: FakeVastHttp,
    client: VastClient,
    method: str,
    path: str,
    response: httpx.Response,
    error_type: type[VastError],
    code: str | None,
) -> None:
    fake.on(method, path, response)
    with pytest.raises(error_type) as caught:
        if path == ASK:
            create(client)
        elif method == "GET":
            client.get_instance(31337)
        else:
            client.set_label(31337, "x")
    error = caught.value
    assert type(error) is error_type
    assert isinstance(error, SkywardError)
    assert error.status == response.status_code and error.error_code == code
    assert len(fake.requests) == 1  # none of these is retried
    assert str(error).startswith(f"{method} {path}: HTTP {response.status_code}")


def test_offer_gone_carries_the_ask_id(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("PUT", ASK, json_response(404, ENVELOPE_NO_SUCH_ASK))
    with pytest.raises(OfferGoneError) as caught:
        create(client)
    assert caught.value.ask_id == 4242 and caught.value.new_contract is None
    assert "no_such_ask" in str(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        json_response(400, {"success": False, "error": "invalid_price", "msg": "bid too low", "new_contract": 777}),
        json_response(200, {"success": False, "error": "invalid_price", "msg": "bid too low", "new_contract": "777"}),
    ],
)
def test_a_failed_create_that_still_created_says_which_instance(
    fake: FakeVastHttp, client: VastClient, response: httpx.Response, caplog: pytest.LogCaptureFixture
) -> None:
    fake.on("PUT", ASK, response)
    with caplog.at_level(logging.WARNING), pytest.raises(BadRequestError) as caught:
        create(client)
    assert caught.value.new_contract == 777
    assert "instance 777 was created anyway" in str(caught.value)
    assert any("777" in r.getMessage() for r in caplog.records)


def test_protocol_errors(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", ONE, text_response(200, "<html>maintenance</html>"))
    with pytest.raises(ProtocolError, match=r"not JSON.*maintenance"):
        client.get_instance(31337)
    fake.on("POST", BUNDLES, json_response(200, {"offers": [{"id": "not-a-number"}]}))
    with pytest.raises(ProtocolError, match=r"unexpected Offer: id: .*; machine_id: Field required"):
        client.search_offers({})
    fake.on("GET", "/api/v0/ssh/", json_response(200, {"unexpected": True}))
    with pytest.raises(ProtocolError, match="list of keys"):
        client.list_ssh_keys()


def test_transport_errors_become_timeout_and_connection_errors(fake: FakeVastHttp, clock: RecordingClock) -> None:
    fake.on("GET", ONE, raises(httpx.ReadTimeout))
    fake.on("GET", "/api/v0/instances/2/", raises(httpx.ConnectError, "connection refused"))
    with make_client(fake, clock, retry_deadline_s=0) as client:
        with pytest.raises(RequestTimeoutError) as timeout:
            client.get_instance(31337)
        with pytest.raises(ConnectionFailedError, match="connection refused") as refused:
            client.get_instance(2)
    assert timeout.value.request_sent and not timeout.value.outcome_unknown  # a read changes nothing
    assert not refused.value.request_sent


# --- retry rules -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503, 504])
def test_reads_retry_gateway_errors_with_jittered_exponential_backoff(
    fake: FakeVastHttp, client: VastClient, clock: RecordingClock, status: int
) -> None:
    fake.on("GET", ONE, *[json_response(status, {"msg": "bad gateway"})] * 4, json_response(200, OK_INSTANCE))
    assert client.get_instance(31337) is not None
    assert len(fake.requests) == 5
    assert len(clock.sleeps) == 4
    for n, slept in enumerate(clock.sleeps):
        assert 0.0 <= slept <= min(30.0, 0.5 * 2**n)


def test_backoff_is_capped(fake: FakeVastHttp) -> None:
    clock = RecordingClock()
    fake.on("GET", ONE, *[json_response(503, {})] * 12, json_response(200, OK_INSTANCE))
    with make_client(fake, clock, retry_deadline_s=10_000, backoff_base_s=1.0, backoff_cap_s=4.0) as client:
        client.get_instance(31337)
    assert len(clock.sleeps) == 12 and max(clock.sleeps) <= 4.0


def test_500_of_an_idempotent_call_is_retried(fake: FakeVastHttp, client: VastClient, clock: RecordingClock) -> None:
    """A teardown must survive one bad answer: reads and repeatable writes retry any 5xx (creates never do)."""
    fake.on("GET", ONE, json_response(500, {"msg": "oops"}), json_response(200, OK_INSTANCE))
    assert client.get_instance(31337) is not None
    assert len(fake.requests) == 2 and len(clock.sleeps) == 1


def test_reads_retry_429_text_bodies_and_connection_errors(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on(
        "GET",
        ONE,
        text_response(429, RATE_LIMIT_TEXT),
        raises(httpx.ReadTimeout),
        raises(httpx.RemoteProtocolError),
        raises(httpx.ConnectError),
        json_response(200, OK_INSTANCE),
    )
    assert client.get_instance(31337) is not None
    assert len(fake.requests) == 5


def test_retry_after_is_honoured(fake: FakeVastHttp, client: VastClient, clock: RecordingClock) -> None:
    fake.on(
        "GET",
        ONE,
        text_response(429, RATE_LIMIT_TEXT, **{"Retry-After": "7"}),
        json_response(503, {}, **{"Retry-After": "2.5"}),
        json_response(200, OK_INSTANCE),
    )
    assert client.get_instance(31337) is not None
    assert clock.sleeps == [7.0, 2.5]


def test_retry_after_beyond_the_deadline_fails_at_once_with_the_wait(fake: FakeVastHttp, clock: RecordingClock) -> None:
    fake.on("GET", ONE, text_response(429, RATE_LIMIT_TEXT, **{"Retry-After": "120"}))
    with make_client(fake, clock, retry_deadline_s=60) as client, pytest.raises(RateLimitedError) as caught:
        client.get_instance(31337)
    assert caught.value.retry_after == 120.0
    assert len(fake.requests) == 1 and clock.sleeps == []
    assert "threshold=2.0" in str(caught.value)


def test_retries_are_bounded_by_the_deadline(fake: FakeVastHttp, clock: RecordingClock) -> None:
    fake.on("GET", ONE, text_response(429, RATE_LIMIT_TEXT))
    with (
        make_client(fake, clock, retry_deadline_s=20, backoff_base_s=1.0) as client,
        pytest.raises(RateLimitedError) as caught,
    ):
        client.get_instance(31337)
    assert sum(clock.sleeps) <= 20.0
    assert caught.value.attempts == len(fake.requests) > 3
    assert f"after {caught.value.attempts} attempts" in str(caught.value)


def test_search_quota_is_never_retried(fake: FakeVastHttp, client: VastClient, clock: RecordingClock) -> None:
    fake.on("POST", BUNDLES, json_response(429, QUOTA_BODY, **{"X-RateLimit-Reset": "1764115200"}))
    with pytest.raises(QuotaExceededError) as caught:
        client.search_offers({"num_gpus": {"eq": 1}})
    assert not isinstance(caught.value, RateLimitedError)
    assert caught.value.reset_at == 1764115200.0 and caught.value.status == 429
    assert len(fake.requests) == 1 and clock.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_create_is_never_retried_after_a_5xx(fake: FakeVastHttp, client: VastClient, status: int) -> None:
    fake.on("PUT", ASK, json_response(status, {"msg": "upstream"}), json_response(200, CREATED))
    with pytest.raises(ServerError) as caught:
        create(client)
    assert len(fake.requests) == 1
    assert caught.value.outcome_unknown  # the rental may exist: find it by label


@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.RemoteProtocolError])
def test_create_is_never_retried_after_the_request_may_have_arrived(
    fake: FakeVastHttp, client: VastClient, failure: type[httpx.TransportError]
) -> None:
    fake.on("PUT", ASK, raises(failure), json_response(200, CREATED))
    with pytest.raises((RequestTimeoutError, ConnectionFailedError)) as caught:
        create(client)
    assert len(fake.requests) == 1
    assert caught.value.request_sent and caught.value.outcome_unknown


def test_create_is_retried_when_nothing_can_have_happened(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on(
        "PUT",
        ASK,
        text_response(429, RATE_LIMIT_TEXT),
        json_response(429, {"detail": "API requests too frequent endpoint threshold=4.5"}),
        raises(httpx.ConnectError),
        raises(httpx.ConnectTimeout),
        raises(httpx.PoolTimeout),
        json_response(200, CREATED),
    )
    assert create(client).new_contract == 31337
    assert len(fake.requests) == 6


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda c: c.create_overlay(5, "ovl"), "POST", "/api/v0/overlay/"),
        (lambda c: c.create_ssh_key("ssh-ed25519 AAAAC3Nz k"), "POST", "/api/v0/ssh/"),
    ],
)
def test_other_creating_writes_follow_the_same_rule(fake: FakeVastHttp, client: VastClient, call, method, path) -> None:
    fake.on(method, path, json_response(503, {}), json_response(200, {"success": True, "key": {"id": 1}}))
    with pytest.raises(ServerError):
        call(client)
    assert len(fake.requests) == 1


def test_idempotent_writes_are_retried(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on(
        "DELETE",
        ONE,
        json_response(429, {"success": False, "error": "rate_limit_exceeded", "msg": "threshold=3.0"}),
        json_response(503, {}),
        raises(httpx.ReadTimeout),
        json_response(200, {"success": True}),
    )
    assert client.destroy_instance(31337) is True
    assert len(fake.requests) == 4


def test_a_destroy_retried_after_it_worked_reports_already_gone(fake: FakeVastHttp, client: VastClient) -> None:
    """The first DELETE went through but its answer was lost; the retry's 404 still means 'gone', not an error."""
    fake.on("DELETE", ONE, raises(httpx.ReadTimeout), json_response(404, ENVELOPE_NO_SUCH_INSTANCE))
    assert client.destroy_instance(31337) is False


# --- minimum interval ------------------------------------------------------------------------------------------------


def test_min_interval_spaces_requests_of_one_endpoint(fake: FakeVastHttp, clock: RecordingClock) -> None:
    fake.on("GET", ONE, json_response(200, OK_INSTANCE))
    fake.on("POST", BUNDLES, json_response(200, {"offers": []}))
    with make_client(fake, clock, min_interval_s={**NO_PACING, "GET /api/v0/instances/{id}/": 2.0}) as client:
        for _ in range(3):
            client.get_instance(31337)
        client.search_offers({})  # another endpoint: not held back
    margin = client.pace_limits.margin_s
    assert clock.sleeps == pytest.approx([2.0 + margin, 2.0 + margin])


def test_min_interval_default_and_per_endpoint_override(fake: FakeVastHttp, clock: RecordingClock) -> None:
    fake.on("GET", ONE, json_response(200, OK_INSTANCE))
    fake.on("POST", BUNDLES, json_response(200, {"offers": []}))
    with make_client(fake, clock, min_interval_s={**NO_PACING, "*": 1.0, "POST /api/v0/bundles/": 6.0}) as client:
        client.search_offers({})
        client.get_instance(31337)
        client.get_instance(31337)
        client.search_offers({})
    margin = client.pace_limits.margin_s
    assert clock.sleeps == pytest.approx([1.0 + margin, 5.0])  # the second search had already waited 1.1 s of its 6.1


def test_min_interval_applies_to_retries_too(fake: FakeVastHttp, clock: RecordingClock) -> None:
    fake.on("GET", ONE, json_response(503, {}, **{"Retry-After": "1"}), json_response(200, OK_INSTANCE))
    with make_client(fake, clock, min_interval_s=3.0) as client:  # a floor above the documented 2 s
        client.get_instance(31337)
    margin = client.pace_limits.margin_s
    assert clock.sleeps == pytest.approx([1.0, 2.0 + margin])  # Retry-After, then the rest of the 3 s interval


def test_min_interval_queues_concurrent_threads(fake: FakeVastHttp) -> None:
    """Real clock, tiny interval: five threads cannot all start at once."""
    starts: list[float] = []
    lock = threading.Lock()

    def answer(request: httpx.Request) -> httpx.Response:
        with lock:
            starts.append(time.monotonic())
        return json_response(200, OK_INSTANCE)

    fake.on("GET", ONE, answer)
    client = VastClient(API_KEY, "http://127.0.0.1:18080", transport=httpx.MockTransport(fake.handler),
                        min_interval_s={**NO_PACING, "*": 0.05})  # fmt: skip
    threads = [threading.Thread(target=client.get_instance, args=(31337,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    client.close()
    starts.sort()
    assert len(starts) == 5
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(starts))


# --- the key never leaks ---------------------------------------------------------------------------------------------


def _echo_key(request: httpx.Request) -> httpx.Response:
    """A hostile or buggy server that echoes the key in every text it sends."""
    message = f"bad key {API_KEY} from {request.url}?api_key={API_KEY}"
    return json_response(400, {"success": False, "error": f"invalid_args {API_KEY}", "msg": message})


LEAKY_RESPONSES = {
    "envelope": _echo_key,
    "text-429": lambda r: text_response(429, f"too frequent for {API_KEY}", **{"Retry-After": "999"}),
    "text-500": lambda r: text_response(500, f"Traceback ... key={API_KEY}"),
    "401": lambda r: json_response(
        401, {"success": False, "error": "auth_error", "msg": f"Invalid user key {API_KEY}"}
    ),
    "non-json-200": lambda r: text_response(200, f"<html>{API_KEY}</html>"),
    "redirect": lambda r: httpx.Response(301, headers={"Location": f"https://x.example/?api_key={API_KEY}"}),
    "bad-model": lambda r: json_response(200, {"instances": {"id": API_KEY}}),
    "connect-error": raises(httpx.ConnectError, f"could not connect with {API_KEY}"),
    "read-timeout": raises(httpx.ReadTimeout, f"timed out {API_KEY}"),
    "quota": lambda r: json_response(429, {**QUOTA_BODY, "msg": f"quota for {API_KEY}"}),
}


@pytest.mark.parametrize("name", sorted(LEAKY_RESPONSES))
def test_no_error_message_repr_or_log_contains_the_key(
    fake: FakeVastHttp, clock: RecordingClock, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.on("GET", ONE, LEAKY_RESPONSES[name])
    with make_client(fake, clock, retry_deadline_s=3) as client:
        with pytest.raises(VastError) as caught:
            client.get_instance(31337)
        shown = [str(client), repr(client)]
    error = caught.value
    shown += [str(error), repr(error), error.message, *(str(v) for v in vars(error).values())]
    shown += [caplog.text, *(record.getMessage() for record in caplog.records)]
    shown += [str(record.args) for record in caplog.records]
    assert not [text for text in shown if API_KEY in text]
    assert error.message  # something useful is still said


def test_the_key_does_not_leak_through_the_failed_create_path(
    fake: FakeVastHttp, client: VastClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.on("PUT", ASK, json_response(400, {"error": "invalid_price", "msg": f"{API_KEY}", "new_contract": 9}))
    with pytest.raises(BadRequestError) as caught:
        create(client)
    assert API_KEY not in str(caught.value) and API_KEY not in caplog.text


# --- robustness: whatever the server answers, the caller gets a result or a VastError -------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["instances", "offers", "next_token", "id", "success", "error", "msg", "new_contract", "x"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)
_CALLS = {
    "get_instance": lambda c: c.get_instance(1),
    "list_instances": lambda c: c.list_instances(),
    "search_offers": lambda c: c.search_offers({}),
    "create_instance": lambda c: c.create_instance(1, image="i", disk_gb=1, label="l"),
    "destroy_instance": lambda c: c.destroy_instance(1),
    "list_overlays": lambda c: c.list_overlays(),
    "current_user": lambda c: c.current_user(),
    "list_ssh_keys": lambda c: c.list_ssh_keys(),
    "list_instance_ssh_keys": lambda c: c.list_instance_ssh_keys(1),
}


@settings(max_examples=200, deadline=None)
@given(
    call=st.sampled_from(sorted(_CALLS)),
    status=st.sampled_from([200, 200, 200, 400, 404, 429, 500, 503]),
    body=_json | st.text(max_size=20).map(lambda t: ("raw", t)),
)
def test_malformed_answers_end_in_a_result_or_a_vast_error(call: str, status: int, body: object) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(body, tuple):
            return text_response(status, body[1])
        # json.dumps, not httpx's encoder: Python's JSON (and so the wire we may get) allows Infinity and NaN.
        return httpx.Response(status, content=json.dumps(body), headers={"Content-Type": "application/json"})

    clock = RecordingClock()
    client = VastClient(
        API_KEY, "http://127.0.0.1:18080", transport=httpx.MockTransport(answer), retry_deadline_s=1,
        sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    try:
        _CALLS[call](client)
    except VastError as exc:
        assert API_KEY not in str(exc)
    finally:
        client.close()
