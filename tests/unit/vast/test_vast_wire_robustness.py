"""The Vast client against malformed, truncated, hostile and slow servers: its own errors only, no key, bounded time.

Extends the client's own tests (``test_vast_client.py``, and the random-JSON property test in
``test_vast_errors.py``) instead of repeating them:

* hypothesis-fed bodies that are *almost* right: every recorded answer truncated at every point, bytes flipped,
  encodings that lie (gzip, charset, BOM, non-UTF-8), JSON that Python parses in surprising ways (Infinity, huge
  integers, deep nesting): the call returns a result or raises a :class:`VastError`, never anything else;
* a server that echoes the key anywhere (body, error code, JSON keys, a redirect's ``Location``): no exception text,
  repr or log line (DEBUG included) carries it;
* real sockets on loopback, where time is real: a server that never answers, stalls after the headers, trickles its
  body one byte at a time, lies about its length, speaks garbage or resets. Every call ends within
  ``retry_deadline_s + timeout_s`` (plus scheduling slack), with a VastError, and a rental is sent only once.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fake_vast_http import API_KEY, INSTANCE, OFFER, OVERLAYS, SSH_KEYS, USER, RecordingClock, v1_page

from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import VastError

BASE_URL = "http://127.0.0.1:18080"  # MockTransport target only

# Each call with a body that is right for it, as recorded (see vast_fixtures).
CALLS: dict[str, tuple[Callable[[VastClient], Any], Any]] = {
    "search_offers": (lambda c: c.search_offers({}), {"offers": [OFFER, OFFER]}),
    "list_instances": (lambda c: c.list_instances(), v1_page([INSTANCE], None)),
    "get_instance": (lambda c: c.get_instance(31337), {"instances": INSTANCE}),
    "create_instance": (lambda c: c.create_instance(4242, image="i", disk_gb=10, label="l"),
                        {"success": True, "new_contract": 31337, "instance_api_key": "ik"}),
    "list_overlays": (lambda c: c.list_overlays(), OVERLAYS),
    "current_user": (lambda c: c.current_user(), USER),
    "list_ssh_keys": (lambda c: c.list_ssh_keys(), SSH_KEYS),
    "destroy_instance": (lambda c: c.destroy_instance(31337), {"success": True}),
    "set_label": (lambda c: c.set_label(31337, "x"), {"success": True}),
}


def mock_client(answer: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> VastClient:
    clock = RecordingClock()
    return VastClient(API_KEY, BASE_URL, transport=httpx.MockTransport(answer), retry_deadline_s=2,
                      sleep=clock.sleep, clock=clock, **kwargs)


def outcome(call: str, answer: Callable[[httpx.Request], httpx.Response]) -> BaseException | None:
    """Run ``call`` against ``answer``; return its VastError (None on success). Anything else fails the test."""
    client = mock_client(answer)
    try:
        CALLS[call][0](client)
    except VastError as exc:
        return exc
    finally:
        client.close()
    return None


def raw(status: int, content: bytes, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"Content-Type": "application/json", **headers})

    return answer


# --- almost-right bodies -------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=st.sampled_from(sorted(CALLS)), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_answer_is_a_protocol_error(call: str, cut: float) -> None:
    body = json.dumps(CALLS[call][1]).encode()
    truncated = body[: int(len(body) * cut)]
    error = outcome(call, raw(200, truncated))
    assert error is not None, f"{call} accepted {truncated!r}"
    assert API_KEY not in str(error)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=st.sampled_from(sorted(CALLS)), data=st.data())
def test_flipped_bytes_end_in_a_result_or_a_vast_error(call: str, data: st.DataObject) -> None:
    body = bytearray(json.dumps(CALLS[call][1]).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    outcome(call, raw(200, bytes(body)))


SURPRISES: dict[str, Callable[[bytes], Callable[[httpx.Request], httpx.Response]]] = {
    "gzip header, plain body": lambda b: raw(200, b, **{"Content-Encoding": "gzip"}),
    "gzip body, no header": lambda b: raw(200, gzip.compress(b)),
    "gzip body cut short": lambda b: raw(200, gzip.compress(b)[:-8], **{"Content-Encoding": "gzip"}),
    "charset utf-16 declared": lambda b: raw(200, b, **{"Content-Type": "application/json; charset=utf-16"}),
    "utf-16 body": lambda b: raw(200, b.decode().encode("utf-16")),
    "BOM first": lambda b: raw(200, b"\xef\xbb\xbf" + b),
    "latin-1 bytes": lambda b: raw(200, b.replace(b"RTX", b"\xe9\xff\xfe")),
    "html with 200": lambda b: raw(200, b"<html><body>Maintenance</body></html>", **{"Content-Type": "text/html"}),
    "empty 200": lambda b: raw(200, b""),
    "json null": lambda b: raw(200, b"null"),
    "NaN and Infinity": lambda b: raw(200, b.replace(b"0.99", b"NaN").replace(b"77", b"Infinity")),
    "a 400-digit number": lambda b: raw(200, b.replace(b"31337", b"9" * 400)),
    "deeply nested": lambda b: raw(200, b"[" * 100_000 + b"]" * 100_000),
    "nested in the error": lambda b: raw(500, b'{"msg": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "huge error text": lambda b: raw(400, json.dumps({"error": "x" * 100_000, "msg": "y" * 1_000_000}).encode()),
    "Retry-After absurd": lambda b: raw(429, b"{}", **{"Retry-After": "1e308"}),
    "Retry-After negative": lambda b: raw(429, b"{}", **{"Retry-After": "-5"}),
    "Retry-After date": lambda b: raw(429, b"{}", **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
    "status 299": lambda b: raw(299, b),
    "status 600": lambda b: raw(600, b),
    "redirect without Location": lambda b: raw(302, b""),
}


@pytest.mark.parametrize("surprise", sorted(SURPRISES))
@pytest.mark.parametrize("call", ["list_instances", "search_offers", "create_instance"])
def test_surprising_encodings_end_in_a_result_or_a_vast_error(call: str, surprise: str) -> None:
    started = time.monotonic()
    error = outcome(call, SURPRISES[surprise](json.dumps(CALLS[call][1]).encode()))
    assert error is None or API_KEY not in str(error)
    assert time.monotonic() - started < 10  # the fake clock makes retries free: real time is parsing only


# --- a server that echoes the key --------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def echoing_answers(draw: st.DrawFn) -> tuple[int, bytes, dict[str, str]]:
    """A response with the key somewhere: in a JSON value, a JSON key, an error code, plain text or Location."""
    status = draw(st.sampled_from([200, 301, 302, 400, 401, 403, 404, 410, 429, 500, 502, 503]))
    where = draw(st.sampled_from(["msg", "error", "json key", "text", "location", "nested", "new_contract"]))
    noise = draw(_text)
    headers: dict[str, str] = {}
    if where == "msg":
        body = json.dumps({"success": False, "error": "x", "msg": f"{noise}{API_KEY}{noise}"}).encode()
    elif where == "error":
        body = json.dumps({"success": False, "error": f"{API_KEY}", "msg": noise}).encode()
    elif where == "json key":
        body = json.dumps({"success": False, API_KEY: noise, "detail": {API_KEY: API_KEY}}).encode()
    elif where == "nested":
        body = json.dumps({"success": False, "msg": [noise, {"k": API_KEY}]}).encode()
    elif where == "new_contract":
        body = json.dumps({"success": False, "error": "invalid_price", "msg": API_KEY, "new_contract": 5}).encode()
    elif where == "location":
        body = b""
        headers["Location"] = f"https://evil.invalid/?api_key={API_KEY}&k={API_KEY}"
    else:
        body = f"{noise} Bearer {API_KEY} {noise}".encode()
        headers["Content-Type"] = "text/plain"
    return status, body, headers


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(sorted(CALLS)), answer=echoing_answers())
def test_an_echoed_key_reaches_no_error_and_no_log(call: str, answer: tuple[int, bytes, dict[str, str]],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    status, body, headers = answer
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        error = outcome(call, raw(status, body, **headers))
    texts = [caplog.text, *(f"{r.getMessage()} {r.args!r}" for r in caplog.records)]
    if error is not None:
        texts += [str(error), repr(error), str(error.args), str(vars(error))]
    for text in texts:
        assert API_KEY not in text


# --- real sockets, real time ---------------------------------------------------------------------------------------

Behaviour = Callable[[socket.socket, threading.Event], None]


def _read_request(conn: socket.socket) -> bytes:
    conn.settimeout(5)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                missing = int(line.split(b":")[1]) - len(rest)
                while missing > 0:
                    chunk = conn.recv(missing)
                    if not chunk:
                        break
                    missing -= len(chunk)
    return data


def _hold(stop: threading.Event) -> None:
    stop.wait(30)


def silent(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    _hold(stop)


def _drip(conn: socket.socket, stop: threading.Event, byte: bytes) -> None:
    """Send ``byte`` every 0.1 s until the test ends or the client hangs up."""
    while not stop.wait(0.1):
        try:
            conn.sendall(byte)
        except OSError:
            return


def headers_then_stall(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"ins")
    _hold(stop)


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    """A body that keeps coming, one byte at a time, faster than any read timeout."""
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n[")
    _drip(conn, stop, b" ")


def short_body(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"instances\": [")
    conn.close()


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"\x00\xffSSH-2.0-OpenSSH_9.2\r\nthis is not http\r\n\r\n")
    conn.close()


def close_at_once(conn: socket.socket, stop: threading.Event) -> None:
    conn.close()


def reset(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def bad_chunks(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"zz\r\n{}\r\n0\r\n\r\n")
    conn.close()


def slow_headers(conn: socket.socket, stop: threading.Event) -> None:
    """The status line and then one header byte at a time, forever."""
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    _drip(conn, stop, b"a")


BEHAVIOURS: dict[str, Behaviour] = {
    "silent": silent, "headers then stall": headers_then_stall, "trickled body": trickle,
    "short body": short_body, "garbage": garbage, "close at once": close_at_once, "reset": reset,
    "bad chunks": bad_chunks, "slow headers": slow_headers,
}


class RawServer:
    """A TCP server on loopback that treats every connection with one behaviour and counts the requests."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(32)
        self._socket.settimeout(0.1)
        self.port = self._socket.getsockname()[1]
        self.stop = threading.Event()
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="raw-server", daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self._behaviour(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)
        self._socket.close()


@pytest.fixture(params=sorted(BEHAVIOURS))
def server(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    running = RawServer(BEHAVIOURS[request.param])
    try:
        yield running
    finally:
        running.close()


TIMEOUT_S = 0.5
DEADLINE_S = 1.0
SLACK_S = 2.0  # thread scheduling on a loaded 2-core machine


@pytest.mark.parametrize("call", ["list_instances", "create_instance"])
def test_every_call_ends_within_its_deadline_with_a_vast_error(server: RawServer, call: str) -> None:
    client = VastClient(API_KEY, f"http://127.0.0.1:{server.port}", timeout_s=TIMEOUT_S,
                        retry_deadline_s=DEADLINE_S, backoff_base_s=0.05)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            CALLS[call][0](client)
            result["value"] = "returned"
        except BaseException as exc:  # judged below, in the test thread
            result["error"] = exc

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE_S + TIMEOUT_S + SLACK_S)
    elapsed = time.monotonic() - started
    hung = worker.is_alive()
    server.close()  # ends a hung call too, so the thread does not outlive the test
    worker.join(10)
    client.close()
    assert not hung, f"{call} still running after {elapsed:.1f} s (deadline {DEADLINE_S} s + timeout {TIMEOUT_S} s)"
    error = result.get("error")
    assert isinstance(error, VastError), f"{call} ended with {error!r} / {result.get('value')}"
    assert API_KEY not in str(error) and API_KEY not in repr(error)
    if call == "create_instance" and getattr(error, "request_sent", True):
        # A rental whose request left is never sent again, whatever came back (no double rental).
        assert server.connections == 1, f"the rental was sent {server.connections} times"
