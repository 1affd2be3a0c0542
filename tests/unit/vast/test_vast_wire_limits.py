"""The Vast client's wall-clock deadline per attempt and its cap on body size, seen from both sides.

``test_vast_wire_robustness.py`` shows that hostile servers end in a VastError within the deadline. These tests pin
what the fix must not break or leave loose: a slow but honest answer inside the budget still succeeds, keep-alive
still reuses one connection, a rental whose headers trickle is a timeout with ``outcome_unknown`` (never re-sent),
the cap holds for declared, undeclared and gzip-inflated bodies, and nesting too deep to parse is a ProtocolError.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from support.fake_vast_http import API_KEY, INSTANCE, OFFER, RecordingClock, v1_page

from skyward_ray.errors import ConfigError
from skyward_ray.vast import transport
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.error_map import Redactor
from skyward_ray.vast.errors import ProtocolError, RequestTimeoutError, VastError

BASE_URL = "http://127.0.0.1:18080"  # MockTransport target only
PAGE = json.dumps(v1_page([INSTANCE], None)).encode()
CREATED = json.dumps({"success": True, "new_contract": 31337, "instance_api_key": "ik"}).encode()

# --- a real HTTP/1.1 server on loopback -----------------------------------------------------------------------------

Reply = Callable[[BaseHTTPRequestHandler, threading.Event], None]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gives up mid-answer is what these tests provoke; no traceback on stderr for that."""


class LoopbackServer:
    """A keep-alive HTTP/1.1 server whose every request is answered by ``reply``; counts connections and requests."""

    def __init__(self, reply: Reply) -> None:
        self.stop = threading.Event()
        self.connections = 0
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def _any(self) -> None:
                outer.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                reply(self, outer.stop)

            do_GET = do_PUT = do_POST = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[[Reply], LoopbackServer]]:
    servers: list[LoopbackServer] = []

    def start(reply: Reply) -> LoopbackServer:
        servers.append(LoopbackServer(reply))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.close()


def slowly(body: bytes, pieces: int, pause_s: float) -> Reply:
    """A correct answer whose body arrives in ``pieces`` parts ``pause_s`` apart."""

    def reply(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            if stop.wait(pause_s):
                return
            handler.wfile.write(body[start : start + step])
            handler.wfile.flush()

    return reply


GIVE_UP_S = 10.0  # every hostile source ends by itself after this, so a client that hangs fails instead of blocking


def trickled_headers(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    until = time.monotonic() + GIVE_UP_S
    while not stop.wait(0.05) and time.monotonic() < until:
        try:
            handler.wfile.write(b"a")
            handler.wfile.flush()
        except OSError:
            return


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()``'s result or its exception, and the real seconds it took."""
    started = time.monotonic()
    try:
        result: Any = fn()
    except Exception as exc:  # judged by the caller
        result = exc
    return result, time.monotonic() - started


def test_a_slow_honest_answer_inside_the_budget_succeeds_and_the_connection_is_reused(serve: Any) -> None:
    server = serve(slowly(PAGE, pieces=4, pause_s=0.1))  # ~0.4 s of a 3 s budget
    with VastClient(API_KEY, server.url, timeout_s=3, retry_deadline_s=0) as client:
        first, _ = timed(client.list_instances)
        second, _ = timed(client.list_instances)
    assert [i.id for i in first] == [INSTANCE["id"]], first
    assert [i.id for i in second] == [INSTANCE["id"]], second
    assert (server.requests, server.connections) == (2, 1)  # keep-alive survives the deadline-capped transport


def test_a_body_that_outlasts_the_attempt_is_a_timeout_even_though_every_read_is_quick(serve: Any) -> None:
    server = serve(slowly(PAGE, pieces=40, pause_s=0.05))  # each read ~0.05 s, the whole body ~2 s
    with VastClient(API_KEY, server.url, timeout_s=0.5, retry_deadline_s=0) as client:
        error, elapsed = timed(client.list_instances)
    assert isinstance(error, RequestTimeoutError), error
    assert error.request_sent and not error.outcome_unknown  # a read changes nothing on the server
    assert elapsed < 0.5 + 1.0, f"took {elapsed:.2f} s"


def test_a_rental_whose_headers_trickle_times_out_once_with_outcome_unknown(serve: Any) -> None:
    server = serve(trickled_headers)
    with VastClient(API_KEY, server.url, timeout_s=0.5, retry_deadline_s=5, backoff_base_s=0.01) as client:
        error, elapsed = timed(lambda: client.create_instance(4242, image="i", disk_gb=10, label="l"))
    assert isinstance(error, RequestTimeoutError), error
    assert error.request_sent and error.outcome_unknown
    assert server.requests == 1  # the rental may have happened: never sent twice
    assert elapsed < 0.5 + 1.0, f"took {elapsed:.2f} s"  # not retried, so not the 5 s retry deadline either


def test_an_idempotent_read_retries_trickled_headers_until_the_retry_deadline(serve: Any) -> None:
    server = serve(trickled_headers)
    with VastClient(API_KEY, server.url, timeout_s=0.3, retry_deadline_s=1.0, backoff_base_s=0.01) as client:
        error, elapsed = timed(client.list_instances)
    assert isinstance(error, RequestTimeoutError), error
    assert error.attempts >= 2 and server.requests == error.attempts
    assert elapsed < 1.0 + 0.3 + 1.0, f"took {elapsed:.2f} s"


def test_the_attempt_deadline_does_not_outlive_the_call(serve: Any) -> None:
    server = serve(trickled_headers)
    with VastClient(API_KEY, server.url, timeout_s=0.2, retry_deadline_s=0) as client:
        assert isinstance(timed(client.list_instances)[0], RequestTimeoutError)
    assert transport.ATTEMPT_DEADLINE.get() is None  # later I/O in this thread is not capped by a stale deadline


# --- the body cap (MockTransport: no sockets needed) ----------------------------------------------------------------


def mock(answer: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> tuple[VastClient, list[int]]:
    seen: list[int] = []

    def counted(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        return answer(request)

    clock = RecordingClock()
    kwargs.setdefault("retry_deadline_s", 5)
    client = VastClient(API_KEY, BASE_URL, transport=httpx.MockTransport(counted), sleep=clock.sleep, clock=clock,
                        **kwargs)
    return client, seen


class Chunks(httpx.SyncByteStream):
    """A body without Content-Length, produced as it is read (as a chunked response would be)."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[bytes]:
        yield from self._parts


def search_body(offers: int) -> bytes:
    return json.dumps({"offers": [OFFER] * offers}).encode()


def test_a_body_at_the_cap_is_read_and_one_byte_more_is_refused_without_retry() -> None:
    body = search_body(3)
    fits, seen = mock(lambda r: httpx.Response(200, content=body), max_body_bytes=len(body))
    with fits:
        assert len(fits.search_offers({})) == 3
    over, seen = mock(lambda r: httpx.Response(200, content=body), max_body_bytes=len(body) - 1)
    with over, pytest.raises(ProtocolError, match="at most") as caught:
        over.search_offers({})
    assert str(len(body)) in str(caught.value) and len(seen) == 1  # named, and a ProtocolError is not retried


def test_an_undeclared_endless_body_is_cut_at_the_cap() -> None:
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        yield b'{"offers": ['
        while len(produced) < 1000:  # 4 MB, far past the cap
            produced.append(1)
            yield b" " * 4096

    client, _ = mock(lambda r: httpx.Response(200, stream=Chunks(endless())), max_body_bytes=64 * 1024)
    with client, pytest.raises(ProtocolError, match="exceeds 65536 bytes"):
        client.search_offers({})
    assert len(produced) <= 64 * 1024 // 4096 + 1  # stopped reading at the cap, not at the end of memory


def test_a_gzip_bomb_is_measured_decoded() -> None:
    bomb = gzip.compress(b'{"offers": [' + b" " * (4 * 1024 * 1024) + b"]}")
    assert len(bomb) < 64 * 1024
    client, _ = mock(lambda r: httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"}),
                     max_body_bytes=1024 * 1024)
    with client, pytest.raises(ProtocolError, match="exceeds"):
        client.search_offers({})


def test_a_body_still_arriving_at_the_deadline_over_any_transport_is_a_timeout() -> None:
    def dribble() -> Iterator[bytes]:
        yield b'{"offers": ['
        until = time.monotonic() + GIVE_UP_S
        while time.monotonic() < until:
            time.sleep(0.02)
            yield b" "

    client, seen = mock(lambda r: httpx.Response(200, stream=Chunks(dribble())), timeout_s=0.3)
    with client:
        error, elapsed = timed(lambda: client.create_instance(4242, image="i", disk_gb=10, label="l"))
    assert isinstance(error, RequestTimeoutError) and error.outcome_unknown, error
    assert len(seen) == 1 and elapsed < 0.3 + 1.0, (len(seen), elapsed)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64"])
def test_max_body_bytes_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_body_bytes"):
        VastClient(API_KEY, BASE_URL, max_body_bytes=bad)


# --- nesting ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 400, 500])
def test_nesting_too_deep_to_parse_is_a_vast_error_that_names_the_status(status: int) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000
    client, _ = mock(lambda r: httpx.Response(status, content=deep), retry_deadline_s=0)
    with client, pytest.raises(VastError) as caught:
        client.list_instances()
    assert f"HTTP {status}" in str(caught.value)
    if status == 200:
        assert isinstance(caught.value, ProtocolError)


def test_a_recursion_error_anywhere_in_judging_the_reply_is_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_deep(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    client, _ = mock(lambda r: httpx.Response(200, content=PAGE))
    monkeypatch.setattr(Redactor, "checked", too_deep)
    with client, pytest.raises(ProtocolError, match="nested too deeply"):
        client.list_instances()


def test_a_refused_body_does_not_poison_the_next_call_on_the_same_client(serve: Any) -> None:
    big = search_body(50)

    def reply(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        body = big if handler.path.startswith("/api/v0/bundles/") else PAGE
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server = serve(reply)
    with VastClient(API_KEY, server.url, timeout_s=3, retry_deadline_s=0, max_body_bytes=len(PAGE) + 10) as client:
        assert isinstance(timed(lambda: client.search_offers({}))[0], ProtocolError)
        listed = client.list_instances()  # a reused half-read connection would parse the leftover offers instead
    assert [i.id for i in listed] == [INSTANCE["id"]]
    assert server.connections == 2  # the refused response's connection was closed, not pooled
