"""One attempt on the wire: the httpx client, a wall-clock deadline over every socket operation, and the body cap.

httpx's timeouts are per socket operation, so a server that trickles its headers or body would never trip them; here
each attempt ends by its deadline whatever the server does. Failures without an answer become transport errors.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

import httpcore
import httpx

from skyward_ray.vast.endpoints import Endpoint
from skyward_ray.vast.error_map import Redactor, Reply, as_int
from skyward_ray.vast.errors import ConnectionFailedError, ProtocolError, RequestTimeoutError

# Refuse bodies larger than this (decoded): the whole 12k-offer emulator market is ~27 MB, a real search far less.
MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0  # one attempt of a quick call (reads, labels, destroys)
FIRST_CONTACT_RETRY_S = 2.0  # how long a refused connection is retried before any answer came from the server
SLOW_TIMEOUT_S = 120.0  # one attempt of a slow call (create, search, overlays): what the official client allows

NO_BODY: Any = object()  # "send no JSON body" (a GET); a write without one sends ``{}``, as the official client does

# The deadline of the current attempt, published by the calling thread (sync httpx does its I/O in it); None = no cap.
ATTEMPT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("vast_attempt_deadline", default=None)


def user_agent() -> str:
    try:
        version = metadata.version("skyward-ray")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"skyward-ray/{version}"


def encode_query(params: Mapping[str, Any]) -> dict[str, str]:
    """GET query values as the CLI sends them: strings as they are, everything else as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in params.items()}


def capped(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` lowered to what is left of the attempt's deadline; ``expired`` raised once nothing is left."""
    deadline = ATTEMPT_DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every blocking operation ends by the current attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, capped(timeout, httpcore.ConnectTimeout))
        return DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, handing out :class:`DeadlineStream` connections."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = capped(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = capped(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's default transport (same TLS, limits, keep-alive) over :class:`DeadlineBackend`. Proxies from the
    environment are mounted by httpx itself and keep its per-operation timeouts only."""

    def __init__(self) -> None:
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context)
        self._pool = httpcore.ConnectionPool(  # httpx's default limits
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=DeadlineBackend(),
        )


class Wire:
    """The HTTP side of a client: sends one attempt within its wall-clock timeout and returns the whole reply.

    ``timeout_s`` applies to every call when given, else 120 s for slow endpoints and 30 s for the others. Until the
    first answer, a refused connection means a wrong URL more likely than a passing fault (see :meth:`send`).
    """

    def __init__(
        self,
        base_url: str,
        base_url_source: str,
        headers: Mapping[str, str],
        redactor: Redactor,
        *,
        timeout_s: float | None,
        max_body_bytes: int,
        transport: httpx.BaseTransport | None,
    ) -> None:
        self.base_url = base_url
        self.base_url_source = base_url_source
        self.reached = False  # set by the first HTTP answer: until then a refused connection is a wrong URL
        self.timeout_s = float(timeout_s) if timeout_s is not None else DEFAULT_TIMEOUT_S
        self.slow_timeout_s = float(timeout_s) if timeout_s is not None else SLOW_TIMEOUT_S
        self.max_body_bytes = max_body_bytes
        self._redactor = redactor
        self.http = httpx.Client(
            base_url=base_url,
            headers={**headers, "User-Agent": user_agent(), "Accept": "application/json"},
            timeout=httpx.Timeout(max(self.timeout_s, self.slow_timeout_s)),
            transport=transport if transport is not None else DeadlineTransport(),
            follow_redirects=False,  # a redirect to another host would drop or leak the key; the URL must be exact
        )

    def close(self) -> None:
        self.http.close()

    def attempt_timeout(self, endpoint: Endpoint) -> float:
        return self.slow_timeout_s if endpoint.slow else self.timeout_s

    def send(
        self,
        endpoint: Endpoint,
        path: str,
        json_body: Any,
        query: dict[str, str] | None,
        on_unreachable: Callable[[], None],
    ) -> Reply:
        """One request, done within its timeout of wall-clock time: connect, send, headers and the whole body.
        ``on_unreachable`` runs when no answer ever came from this server and the connection was refused."""
        kwargs: dict[str, Any] = {"params": query}
        if json_body is not NO_BODY:
            kwargs["json"] = json_body
        timeout = self.attempt_timeout(endpoint)
        deadline = time.monotonic() + timeout  # real time: the sockets are real even when the caller's clock is not
        token = ATTEMPT_DEADLINE.set(deadline)
        try:
            request = self.http.build_request(endpoint.method, path, timeout=httpx.Timeout(timeout), **kwargs)
            response = self.http.send(request, stream=True)
            self.reached = True
            try:
                content = self._read_body(endpoint, path, response, deadline)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
            raise self._timed_out(endpoint, path, type(exc).__name__, request_sent=sent) from None
        except httpx.TransportError as exc:
            raise self._connection_failed(endpoint, path, exc, on_unreachable) from None
        except httpx.HTTPError as exc:
            scrubbed = self._redactor.scrub(str(exc))
            raise self._redactor.protocol(endpoint, path, f"{type(exc).__name__}: {scrubbed}") from None
        finally:
            ATTEMPT_DEADLINE.reset(token)
        return Reply(response.status_code, response.headers, content, response.encoding or "utf-8")

    def _read_body(self, endpoint: Endpoint, path: str, response: httpx.Response, deadline: float) -> bytes:
        """The decoded body, read in chunks so its size and the attempt's deadline hold whatever the server does."""
        limit = self.max_body_bytes
        declared = as_int(response.headers.get("Content-Length"))
        if declared is not None and declared > limit:
            raise self._too_big(endpoint, path, response.status_code, f"declares {declared} bytes")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise self._too_big(endpoint, path, response.status_code, f"exceeds {limit} bytes")
            chunks.append(chunk)
            if time.monotonic() > deadline:  # a transport without our socket deadline (a test's, a proxy's)
                raise self._timed_out(endpoint, path, "body still arriving", request_sent=True)
        return b"".join(chunks)

    def _too_big(self, endpoint: Endpoint, path: str, status: int, how: str) -> ProtocolError:
        return self._redactor.protocol(
            endpoint, path, f"HTTP {status} with a body that {how}; at most {self.max_body_bytes} are read"
        )

    def _timed_out(self, endpoint: Endpoint, path: str, why: str, *, request_sent: bool) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"{endpoint.method} {path}: no complete response within {self.attempt_timeout(endpoint):g}s ({why})",
            request_sent=request_sent,
            outcome_unknown=request_sent and endpoint.writes,
            endpoint=str(endpoint),
        )

    def _connection_failed(
        self, endpoint: Endpoint, path: str, exc: httpx.TransportError, on_unreachable: Callable[[], None]
    ) -> ConnectionFailedError:
        sent = not isinstance(exc, httpx.ConnectError)
        scrub = self._redactor.scrub
        if not sent and not self.reached:
            on_unreachable()
            return self._unreachable(endpoint, exc)
        return ConnectionFailedError(
            f"{endpoint.method} {path}: {type(exc).__name__}: {scrub(str(exc)) or 'connection failed'}",
            request_sent=sent,
            outcome_unknown=sent and endpoint.writes,
            endpoint=str(endpoint),
        )

    def _unreachable(self, endpoint: Endpoint, exc: httpx.TransportError) -> ConnectionFailedError:
        """The error that says where the URL came from, for a server that never answered."""
        source = self.base_url_source
        hint = "set $VAST_URL (or the config's api_url) for another server" if source == "the default" else (
            f"check {source}")  # fmt: skip
        scrub = self._redactor.scrub
        reason = scrub(str(exc)) or "connection failed"
        return ConnectionFailedError(
            f"cannot reach the Vast API at {scrub(self.base_url)} (from {source}): {type(exc).__name__}: "
            f"{reason}; {hint}",
            request_sent=False,
            endpoint=str(endpoint),
        )
