"""A server that was never reached fails fast and says where: the URL (no key) and what chose it.

A refused connection or a name that does not resolve, before any answer came from the server, is most likely a wrong
URL, not a passing fault: the call gives up within a few seconds instead of retrying for a minute. Once the server has
answered, the same errors are transient again and retried until the deadline.
"""

from __future__ import annotations

import random
import socket
import time

import httpx
import pytest
from support.fake_vast_http import API_KEY, FakeVastHttp, RecordingClock, json_response, raises

from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import BASE_URL_ENV, DEFAULT_BASE_URL
from skyward_ray.vast.errors import ConnectionFailedError
from skyward_ray.vast.transport import FIRST_CONTACT_RETRY_S

PAGE = {"success": True, "instances": [], "next_token": None}


def refused_url() -> str:
    """A loopback port nobody listens on: bound (so nothing else takes it meanwhile), never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    refused_url.keep = sock  # type: ignore[attr-defined]  # closed when the next test asks for a port
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_refused_port_fails_within_seconds_naming_the_url_and_its_setting() -> None:
    url = refused_url()
    with VastClient(API_KEY, url, base_url_source="provider.api_url") as client:  # default 60 s retry deadline
        started = time.monotonic()
        with pytest.raises(ConnectionFailedError) as caught:
            client.list_instances()
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert elapsed < FIRST_CONTACT_RETRY_S + 3, elapsed  # not the minute of retries a passing fault would get
    assert f"cannot reach the Vast API at {url} (from provider.api_url)" in message
    assert "check provider.api_url" in message and "refused" in message.lower()
    assert API_KEY not in message and API_KEY not in repr(caught.value)
    assert not caught.value.request_sent


def test_the_url_from_vast_url_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    url = refused_url()
    monkeypatch.setenv(BASE_URL_ENV, url)
    with VastClient(API_KEY) as client, pytest.raises(ConnectionFailedError, match=r"\(from \$VAST_URL\)"):
        client.current_user()


def test_an_unnamed_explicit_url_is_the_base_url_argument() -> None:
    with VastClient(API_KEY, refused_url()) as client, pytest.raises(ConnectionFailedError,
                                                                     match="from the base_url argument"):  # fmt: skip
        client.list_ssh_keys()


def test_a_name_that_does_not_resolve_at_the_default_url_names_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS is mocked: the test machine has no resolver for the real name."""
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    clock = RecordingClock()
    unresolved = raises(httpx.ConnectError, "[Errno -2] Name or service not known")
    fake = FakeVastHttp().on("GET", "/api/v1/instances/", unresolved)
    client = VastClient(API_KEY, transport=httpx.MockTransport(fake.handler), clock=clock, sleep=clock.sleep,
                        rng=random.Random(3))  # fmt: skip
    with pytest.raises(ConnectionFailedError) as caught:
        client.list_instances()
    assert f"cannot reach the Vast API at {DEFAULT_BASE_URL} (from the default)" in str(caught.value)
    assert "Name or service not known" in str(caught.value) and "$VAST_URL" in str(caught.value)
    list_slot = client.pace_limits.interval("GET /api/v1/instances/") + client.pace_limits.margin_s
    assert sum(clock.sleeps) <= FIRST_CONTACT_RETRY_S + list_slot  # the last retry may wait for its paced slot
    assert 1 <= len(fake.requests) <= 10


def test_after_a_first_answer_connection_errors_are_retried_as_before() -> None:
    """The same run of refused connections that fails a first call is ridden out once the server has answered."""
    refusals = [raises(httpx.ConnectError, "[Errno 111] Connection refused")] * 8

    def client_for(fake: FakeVastHttp, clock: RecordingClock) -> VastClient:
        return VastClient(API_KEY, "http://127.0.0.1:18080", transport=httpx.MockTransport(fake.handler), clock=clock,
                          sleep=clock.sleep, rng=random.Random(7), backoff_base_s=0.5)  # fmt: skip

    clock = RecordingClock()
    first_call = FakeVastHttp().on("GET", "/api/v0/overlay/", *refusals, json_response(200, []))
    with pytest.raises(ConnectionFailedError, match="cannot reach"):
        client_for(first_call, clock).list_overlays()
    assert sum(clock.sleeps) <= FIRST_CONTACT_RETRY_S

    clock = RecordingClock()
    later = FakeVastHttp().on("GET", "/api/v0/overlay/", json_response(200, []), *refusals, json_response(200, []))
    client = client_for(later, clock)
    assert client.list_overlays() == []
    assert client.list_overlays() == []  # eight refusals later
    assert len(later.requests) == 10 and sum(clock.sleeps) > FIRST_CONTACT_RETRY_S
