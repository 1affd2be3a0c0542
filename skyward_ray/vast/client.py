"""A typed, thread-safe client for the Vast.ai REST API (httpx + pydantic + tenacity). Never imports Ray.

It sends what the official client (vastai 1.9.1) sends: ``Authorization: Bearer``, a JSON body with every
PUT/POST/DELETE (``{}`` when empty), GET query values JSON-encoded, every path with its trailing ``/``. Responses are
parsed into :mod:`skyward_ray.vast.models`; failures become the types of :mod:`skyward_ray.vast.errors`.

Retries live in ONE place (:meth:`VastClient._call`), decided per endpoint by its :class:`RetryPolicy`:

================  ======================================================================================
``IDEMPOTENT``    reads, search, and writes whose repetition changes nothing (set label/state/bid, destroy,
                  delete overlay, join overlay, attach key): retried on 429, any 5xx, timeouts and
                  connection errors. A repeated destroy or overlay delete that finds nothing is "already gone";
                  a repeated join the server refuses surfaces as its error (check ``list_overlays()``).
``ONCE``          writes that create something (``PUT /asks`` = a rental, ``POST /overlay/``, ``POST /ssh/``):
                  retried only when nothing can have happened: a 429 (refused before processing) or a failure
                  before the request left (connect error/timeout, no pooled connection). Never after a 5xx,
                  a read timeout or a broken connection, because the first request may have rented a machine;
                  the error then says ``outcome_unknown`` and callers find the result by its label or name.
================  ======================================================================================

Backoff is exponential with full jitter (``uniform(0, min(cap, base * 2**n))``); a positive ``Retry-After`` in
seconds replaces it. A 429 without ``Retry-After`` (Vast sends none) waits at least the endpoint's documented
interval, 12 s for a create (its penalty), plus jitter, and closes the endpoint for that long to every caller of the
identity (:meth:`Pacer.penalise`). No retry starts after ``retry_deadline_s``, counted from the call's first slot;
a wait beyond it ends the call with a :class:`RateLimitedError` (carrying ``retry_after`` when sent).
``search_quota_exceeded`` is never retried. A call therefore ends within about its pacing wait +
``retry_deadline_s`` + one attempt's timeout (the last attempt may start just before the deadline).

Each attempt is bounded in wall-clock time (connect, send, headers and the whole body), not per socket read, so a
server that trickles its headers or body cannot hold a call past it: ``timeout_s`` when given, else 120 s for slow
calls (create, search, overlays: what the official client allows every call) and 30 s for the others. A body larger
than ``max_body_bytes`` (64 MiB decoded by default) or too deeply nested to parse is a :class:`ProtocolError`.

Pacing (:mod:`skyward_ray.vast.pacing`): every attempt first takes a slot from the process-wide book of its identity
(server + key hash), shared by every client and thread, spaced by Vast's documented per-endpoint intervals (create
4.5 s, search 10 per 60 s, list 1 s, ...) so that steady operation earns no 429. ``rate_scale`` (default
``$SKYWARD_VAST_RATE_SCALE``, else 1) scales the table for a test server with scaled limits; ``min_interval_s``
overrides it per endpoint template (keys of :data:`ENDPOINTS`, e.g. ``"GET /api/v1/instances/"``; ``"*"`` or a plain
number is a floor for every endpoint). :meth:`VastClient.expected_wait` says how long the next create would queue.

Thread safety: one client may be shared by any number of threads. httpx's pool is thread-safe; the limiter and the
counters take a short lock that is never held during I/O or sleeps.
"""

from __future__ import annotations

import contextvars
import enum
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

import httpcore
import httpx
import tenacity
from pydantic import BaseModel, ValidationError

from skyward_ray.errors import ConfigError
from skyward_ray.vast.credentials import ApiKey, redact, resolve_api_key, resolve_base_url_and_source
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
    TransportError,
    VastError,
)
from skyward_ray.vast.models import (
    ActionResult,
    CreatedInstance,
    Instance,
    InstancePage,
    InstanceSshKeys,
    Offer,
    Overlay,
    SshKey,
    User,
    tolerant_instance,
    validate_overlay_name,
)
from skyward_ray.vast.pacing import (
    PER_ADDRESS_KEYS,
    LaneStatus,
    PaceLimits,
    Pacer,
    identity_of,
    per_address,
    shared_pacer,
)

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_LABEL_CHARS = 1024  # a relabel (PUT /instances/{id}/) with a longer label is refused with a 400
MAX_CREATE_LABEL_CHARS = 256  # a rental (PUT /asks/{id}/) with a longer label is refused with a 400
MAX_ONSTART_CHARS = 4048  # Vast's documented onstart limit
MAX_PAGE_SIZE = 25  # GET /api/v1/instances/ never returns more per page
DESTROY_CHUNK = 64  # what the CLI sends per bulk destroy
RUNTYPE_TOKENS = frozenset(
    {
        "ssh",
        "ssh_proxy",
        "ssh_direc",
        "ssh_direct",
        "jupyter",
        "jupyter_proxy",
        "jupyter_direc",
        "jupyter_direct",
        "args",
    }
)
_BODY_SNIPPET_CHARS = 300
# Refuse bodies larger than this (decoded): the whole 12k-offer emulator market is ~27 MB, a real search far less.
MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0  # one attempt of a quick call (reads, labels, destroys)
FIRST_CONTACT_RETRY_S = 2.0  # how long a refused connection is retried before any answer came from the server
SLOW_TIMEOUT_S = 120.0  # one attempt of a slow call (create, search, overlays): what the official client allows


def _user_agent() -> str:
    try:
        version = metadata.version("skyward-ray")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"skyward-ray/{version}"


class RetryPolicy(enum.Enum):
    """Which failures of an endpoint may be retried (see the module docstring)."""

    IDEMPOTENT = "idempotent"
    ONCE = "once"


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint: the unit of rate limiting, retry policy and request counting."""

    method: str
    template: str
    retry: RetryPolicy = RetryPolicy.IDEMPOTENT
    writes: bool = False  # a failure after sending may have changed state
    slow: bool = False  # Vast may take long to answer: the attempt gets the official client's 120 s

    def __str__(self) -> str:
        return f"{self.method} {self.template}"

    def path(self, **ids: int) -> str:
        return self.template.format(**ids)


SEARCH_OFFERS = Endpoint("POST", "/api/v0/bundles/", slow=True)
CREATE_INSTANCE = Endpoint("PUT", "/api/v0/asks/{id}/", RetryPolicy.ONCE, writes=True, slow=True)
GET_INSTANCE = Endpoint("GET", "/api/v0/instances/{id}/")
LIST_INSTANCES = Endpoint("GET", "/api/v1/instances/")
LIST_INSTANCES_V0 = Endpoint("GET", "/api/v0/instances/")
UPDATE_INSTANCE = Endpoint("PUT", "/api/v0/instances/{id}/", writes=True)  # label, state
DESTROY_INSTANCE = Endpoint("DELETE", "/api/v0/instances/{id}/", writes=True)
DESTROY_INSTANCES = Endpoint("DELETE", "/api/v0/instances/", writes=True)
CHANGE_BID = Endpoint("PUT", "/api/v0/instances/bid_price/{id}/", writes=True)
LIST_OVERLAYS = Endpoint("GET", "/api/v0/overlay/")
CREATE_OVERLAY = Endpoint("POST", "/api/v0/overlay/", RetryPolicy.ONCE, writes=True, slow=True)
JOIN_OVERLAY = Endpoint("PUT", "/api/v0/overlay/", writes=True, slow=True)
DELETE_OVERLAY = Endpoint("DELETE", "/api/v0/overlay/", writes=True)
CURRENT_USER = Endpoint("GET", "/api/v0/users/current/")
LIST_SSH_KEYS = Endpoint("GET", "/api/v0/ssh/")
CREATE_SSH_KEY = Endpoint("POST", "/api/v0/ssh/", RetryPolicy.ONCE, writes=True)
ATTACH_SSH_KEY = Endpoint("POST", "/api/v0/instances/{id}/ssh/", writes=True)
LIST_INSTANCE_SSH_KEYS = Endpoint("GET", "/api/v0/instances/{id}/ssh/")

ENDPOINTS: tuple[Endpoint, ...] = (
    SEARCH_OFFERS, CREATE_INSTANCE, GET_INSTANCE, LIST_INSTANCES, LIST_INSTANCES_V0, UPDATE_INSTANCE,
    DESTROY_INSTANCE, DESTROY_INSTANCES, CHANGE_BID, LIST_OVERLAYS, CREATE_OVERLAY, JOIN_OVERLAY, DELETE_OVERLAY,
    CURRENT_USER, LIST_SSH_KEYS, CREATE_SSH_KEY, ATTACH_SSH_KEY, LIST_INSTANCE_SSH_KEYS,
)  # fmt: skip
_ENDPOINT_KEYS = frozenset(str(e) for e in ENDPOINTS)


def _is_retryable(endpoint: Endpoint, exc: BaseException) -> bool:
    """THE retry rule (see the module docstring)."""
    if isinstance(exc, QuotaExceededError):
        return False
    if isinstance(exc, RateLimitedError):
        return True
    if isinstance(exc, TransportError):
        return endpoint.retry is RetryPolicy.IDEMPOTENT or not exc.request_sent
    if isinstance(exc, ServerError):
        # Any 5xx of an idempotent call is safe to repeat (a teardown must survive one bad answer); a call that
        # creates something is never repeated after a 5xx, whose outcome is unknown.
        return endpoint.retry is RetryPolicy.IDEMPOTENT and (exc.status or 0) >= 500
    return False


def _parse_seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: Vast sends seconds when it sends anything
    return seconds if seconds is not None and seconds >= 0 else None


def _encode_query(params: Mapping[str, Any]) -> dict[str, str]:
    """GET query values as the CLI sends them: strings as they are, everything else as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in params.items()}


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _strings(item)


_NO_BODY = object()


_NOTED_SHAPES: set[tuple[str, tuple[str, ...]]] = set()
_NOTED_LOCK = threading.Lock()


def _failed_shapes(row: Any, exc: ValidationError) -> list[str]:
    """``"name (type)"`` of each top-level field that failed: no values, they may be secrets."""
    if not isinstance(row, dict):
        return [f"row ({type(row).__name__})"]
    names = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    return [f"{name} ({type(row[name]).__name__})" if name in row else name for name in sorted(names)] or ["row"]


def _note_shape(endpoint: Endpoint, problems: tuple[str, ...], what: str) -> None:
    """Log an unexpected row shape once per process (a refresh every few seconds would repeat it forever)."""
    with _NOTED_LOCK:
        first = (str(endpoint), problems) not in _NOTED_SHAPES
        _NOTED_SHAPES.add((str(endpoint), problems))
    log.log(logging.WARNING if first else logging.DEBUG, "%s: %s: %s", endpoint, what, ", ".join(problems))


@dataclass
class _CallState:
    """What the attempts of one logical call share: the retry deadline, set once the first attempt has its slot."""

    deadline: float = math.inf
    first_slot: float = 0.0


# --- every socket operation bounded by the attempt's wall-clock deadline ----------------------------------------------
#
# httpx's timeouts are per socket operation: a server that sends its headers or body one byte at a time never trips
# them. Our transport's streams cap each connect/read/write at what is left of the current attempt's deadline, which
# the calling thread publishes here (sync httpx does its I/O in the calling thread). Unset means no cap.
_ATTEMPT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("vast_attempt_deadline", default=None)


def _capped(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` lowered to what is left of the attempt's deadline; ``expired`` raised once nothing is left."""
    deadline = _ATTEMPT_DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every blocking operation ends by the current attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _capped(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, handing out :class:`_DeadlineStream` connections."""

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
        timeout = _capped(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _capped(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's default transport (same TLS, limits, keep-alive) over :class:`_DeadlineBackend`. Proxies from the
    environment are mounted by httpx itself and keep its per-operation timeouts only."""

    def __init__(self) -> None:
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context)
        self._pool = httpcore.ConnectionPool(  # httpx's default limits
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_DeadlineBackend(),
        )


@dataclass(frozen=True)
class _Reply:
    """What came back, fully read: httpx's streamed response keeps no ``content``/``text`` of its own."""

    status: int
    headers: httpx.Headers
    content: bytes
    encoding: str

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


class VastClient:
    """The Vast REST API as typed methods. Use as a context manager or call :meth:`close`.

    ``api_key``/``base_url`` default to what :mod:`skyward_ray.vast.credentials` resolves (``VAST_API_KEY``,
    ``VAST_URL``, the key files); ``base_url_source`` names the setting an explicit ``base_url`` came from (e.g.
    ``"provider.api_url"``) for the error that says a server was never reachable. ``rate_scale`` and
    ``min_interval_s`` shape the pacing (see the module docstring). ``sleep``, ``clock`` and ``rng`` exist so tests
    can check waits without waiting; clients sharing a clock, server and key share one pacer.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout_s: float | None = None,
        retry_deadline_s: float = 60.0,
        min_interval_s: float | Mapping[str, float] = 0.0,
        rate_scale: float | None = None,
        base_url_source: str | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        anonymous: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        for name, value in (("timeout_s", timeout_s), ("backoff_cap_s", backoff_cap_s)):
            if value is not None and not value > 0:
                raise ConfigError(f"{name} = {value!r} is not allowed: use seconds > 0")
        for name, value in (("retry_deadline_s", retry_deadline_s), ("backoff_base_s", backoff_base_s)):
            if not value >= 0:
                raise ConfigError(f"{name} = {value!r} is not allowed: use seconds >= 0")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
            raise ConfigError(f"max_body_bytes = {max_body_bytes!r} is not allowed: use a byte count > 0")
        # Anonymous clients may only search offers (Vast serves bundles without a key): no key is resolved or sent.
        self._key = ApiKey("") if anonymous else ApiKey(resolve_api_key(api_key))
        self._base_url, self._base_url_source = resolve_base_url_and_source(base_url, base_url_source)
        self._reached = False  # set by the first HTTP answer: until then a refused connection is a wrong URL
        # One explicit timeout for every call, else the official client's 120 s for slow calls and 30 s for others.
        self._timeout_s = float(timeout_s) if timeout_s is not None else DEFAULT_TIMEOUT_S
        self._slow_timeout_s = float(timeout_s) if timeout_s is not None else SLOW_TIMEOUT_S
        self._max_body_bytes = max_body_bytes
        self._deadline_s = float(retry_deadline_s)
        self._backoff_base_s = float(backoff_base_s)
        self._backoff_cap_s = float(backoff_cap_s)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._limits = PaceLimits.documented(
            rate_scale=rate_scale, min_interval_s=min_interval_s, known_keys=_ENDPOINT_KEYS
        )
        self._pacer = shared_pacer(identity_of(self._base_url, self._key.reveal()), clock)
        self._address_pacer = shared_pacer(per_address(self._base_url), clock)  # search: per address, any key
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self._base_url,
            headers={
                **({} if anonymous else {"Authorization": f"Bearer {self._key.reveal()}"}),
                "User-Agent": _user_agent(),
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(max(self._timeout_s, self._slow_timeout_s)),
            transport=transport if transport is not None else _DeadlineTransport(),
            follow_redirects=False,  # a redirect to another host would drop or leak the key; the URL must be exact
        )

    # --- lifecycle -----------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VastClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VastClient(base_url={self._base_url!r}, api_key={self._key!r})"

    # --- pacing ------------------------------------------------------------------------------------------------------

    @property
    def pacer(self) -> Pacer:
        """The process-wide book this client queues on (shared with every client of the same server and key);
        search, which Vast limits per client address, queues on the server's book whatever the key."""
        return self._pacer

    @property
    def pace_limits(self) -> PaceLimits:
        """The intervals, penalties and windows this client paces by (documented, scaled, overridden)."""
        return self._limits

    def expected_wait(self, endpoint: Endpoint | str = CREATE_INSTANCE) -> float:
        """Seconds a call of ``endpoint`` made now would wait for its slot (default: the next create)."""
        return self._pacer_for(str(endpoint)).expected_wait(str(endpoint), self._limits)

    def pacing_status(self, endpoint: Endpoint | str = CREATE_INSTANCE) -> LaneStatus:
        """Callers queued on ``endpoint``, the wait for a new one, and what is left of a 429 penalty."""
        return self._pacer_for(str(endpoint)).status(str(endpoint), self._limits)

    def _pacer_for(self, key: str) -> Pacer:
        return self._address_pacer if key in PER_ADDRESS_KEYS else self._pacer

    @property
    def stats(self) -> dict[str, int]:
        """HTTP requests sent (retries included) per endpoint template, e.g. ``{"GET /api/v1/instances/": 3}``."""
        with self._stats_lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats.clear()

    # --- offers and rentals --------------------------------------------------------------------------------------

    def search_offers(self, query: dict[str, Any]) -> list[Offer]:
        """``POST /api/v0/bundles/`` with ``query`` as the body, sent as given: no default filters are added.

        An offer that does not parse is dropped with a warning (as gpuhunt does): one broken row must not stop a
        rental. If every row is broken, the answer is not what we think it is: :class:`ProtocolError`.
        """
        if not isinstance(query, dict):
            raise ConfigError(f"query {query!r} is not allowed: use a dict of Vast's search DSL")
        body = self._call(SEARCH_OFFERS, json_body=query)
        rows = body if isinstance(body, list) else self._field(body, "offers", SEARCH_OFFERS, list)
        offers: list[Offer] = []
        first_problem: ProtocolError | None = None
        shapes: set[str] = set()
        for row in rows:
            try:
                offers.append(Offer.model_validate(row))
            except ValidationError as exc:
                shapes.update(_failed_shapes(row, exc))
                if first_problem is None:
                    try:
                        self._parse(Offer, row, SEARCH_OFFERS)
                    except ProtocolError as problem:
                        first_problem = problem
        if first_problem is not None:
            if not offers:
                raise first_problem  # not one row we understand: the answer is not what we think it is
            _note_shape(
                SEARCH_OFFERS,
                tuple(sorted(shapes)),
                f"dropped {len(rows) - len(offers)} of {len(rows)} offers that did not parse",
            )
        return offers

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str,
        env: Mapping[str, str] | None = None,
        onstart: str | None = None,
        price: float | None = None,
        runtype: str | None = "ssh_direc ssh_proxy",
        args: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> CreatedInstance:
        """Rent offer ``offer_id`` (``PUT /api/v0/asks/{id}/``). ``price`` is the bid in $/h for the whole offer;
        None rents on-demand. ``extra`` adds or overrides body keys (``user``, ``target_state``...).

        Never retried after a 5xx or a timeout (no double rental): such an error has ``outcome_unknown`` and the
        caller finds any rental by its label. A failed create that still names an instance sets ``new_contract``
        on the error; the caller must destroy it. A 429 is retried (Vast refuses before processing), after the
        endpoint's 12 s penalty; creates are paced 4.5 s apart for the whole process, so a caller may queue here
        (:meth:`expected_wait` says for how long). The attempt may take 120 s, as the official client allows.

        Why one offer per request and not the bulk create (``POST /api/v0/asks/bulk/`` with ``"ids": [...]``, what
        the official client sends for a list of offers): that request carries ONE body, so every rental in it gets
        the same label, and ours are distinct from the first request (each holds its node's tags and the nonce
        that finds it after an unknown outcome). Its answer is undocumented, so a partial success (one offer gone,
        one bid too low) cannot be told apart reliably, and a timeout would leave several rentals outcome-unknown at
        once with nothing to tell them apart; its rate limit is undocumented too. Renting one by one at the
        documented pace costs 4.5 s per node (16 nodes in about 70 s) and keeps both guarantees.
        """
        offer = self._positive_id("offer_id", offer_id)
        if not isinstance(image, str) or not image.strip():
            raise ConfigError(f"image {image!r} is not allowed: use a Docker image reference")
        if isinstance(disk_gb, bool) or not isinstance(disk_gb, int | float) or disk_gb <= 0:
            raise ConfigError(f"disk_gb = {disk_gb!r} is not allowed: use GB > 0")
        self._check_label(label, MAX_CREATE_LABEL_CHARS)
        env_body = self._check_env(env)
        if onstart is not None and (not isinstance(onstart, str) or len(onstart) > MAX_ONSTART_CHARS):
            raise ConfigError(f"onstart is not allowed: use text of at most {MAX_ONSTART_CHARS} characters")
        if price is not None:
            self._check_price(price)
        if runtype is not None:
            tokens = runtype.split() if isinstance(runtype, str) else []
            if not tokens or not set(tokens) <= RUNTYPE_TOKENS:
                raise ConfigError(
                    f"runtype {runtype!r} is not allowed: use space-separated tokens from {sorted(RUNTYPE_TOKENS)}"
                )
        if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
            raise ConfigError(f"args {args!r} is not allowed: use a list of strings")
        body: dict[str, Any] = {
            "client_id": "me",
            "image": image,
            "env": env_body,
            "price": price,
            "disk": disk_gb,
            "label": label,
            "extra": None,
            "onstart": onstart,
            "image_login": None,
            "python_utf8": False,
            "lang_utf8": False,
            "use_jupyter_lab": False,
            "jupyter_dir": None,
            "force": False,
            "cancel_unavail": False,
            "template_hash_id": None,
            "user": None,
        }
        if runtype:
            body["runtype"] = runtype
        if args is not None:
            body["args"] = args
        if extra:
            body.update(extra)
        self._refuse_secret(body, "the create_instance request (label, env, onstart, args, extra)")
        result = self._call(CREATE_INSTANCE, ids={"id": offer}, json_body=body)
        if not isinstance(result, dict) or result.get("new_contract") is None:
            raise self._protocol(CREATE_INSTANCE, CREATE_INSTANCE.path(id=offer), "no new_contract in a success body")
        return self._parse(CreatedInstance, result, CREATE_INSTANCE)

    # --- reading instances ---------------------------------------------------------------------------------------

    def get_instance(self, instance_id: int) -> Instance | None:
        """One instance, or None when Vast says it does not exist (``{"instances": null}`` or a 404 envelope)."""
        iid = self._positive_id("instance_id", instance_id)
        try:
            body = self._call(GET_INSTANCE, ids={"id": iid}, params={"owner": "me"})
        except NotFoundError as exc:
            if exc.error_code is None:
                raise  # not Vast's answer (an HTML 404 from a wrong base URL): do not report the node as gone
            return None
        row = self._field(body, "instances", GET_INSTANCE, (dict, type(None)))
        if row is None:
            return None
        parsed = self._instance_rows([row], GET_INSTANCE)
        if not parsed:
            return self._parse(Instance, row, GET_INSTANCE)  # raises the ProtocolError that says why
        return parsed[0]

    def list_instances(
        self, select_filters: dict[str, Any] | None = None, page_size: int = MAX_PAGE_SIZE
    ) -> list[Instance]:
        """Every instance of the account (``GET /api/v1/instances/``), following ``next_token`` to the last page.

        ``select_filters`` uses stored columns only (``actual_status``, ``label``, ``id``...), as Vast requires.
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ConfigError(f"page_size = {page_size!r} is not allowed: use an integer from 1 to {MAX_PAGE_SIZE}")
        if select_filters is not None and not isinstance(select_filters, dict):
            raise ConfigError(
                f"select_filters {select_filters!r} is not allowed: use a dict such as "
                '{"actual_status": {"in": ["running"]}}'
            )
        params: dict[str, Any] = {
            "select_filters": select_filters or {},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": page_size,
        }
        instances: list[Instance] = []
        seen_tokens: set[str] = set()
        while True:
            body = self._call(LIST_INSTANCES, params=params)
            rows = self._field(body, "instances", LIST_INSTANCES, (list, type(None))) or []
            page = self._parse(InstancePage, {**body, "instances": []}, LIST_INSTANCES)
            instances.extend(self._instance_rows(rows, LIST_INSTANCES))
            if not page.next_token:
                return instances
            if page.next_token in seen_tokens:
                raise self._protocol(LIST_INSTANCES, LIST_INSTANCES.template, "next_token repeats an earlier page")
            seen_tokens.add(page.next_token)
            params["after_token"] = page.next_token

    def list_instances_v0(self) -> list[Instance]:
        """The deprecated unpaged list (``GET /api/v0/instances/?owner=me``), for servers without v1."""
        body = self._call(LIST_INSTANCES_V0, params={"owner": "me"})
        rows = self._field(body, "instances", LIST_INSTANCES_V0, (list, type(None))) or []
        return self._instance_rows(rows, LIST_INSTANCES_V0)

    # --- changing instances --------------------------------------------------------------------------------------

    def destroy_instance(self, instance_id: int) -> bool:
        """Destroy one instance. False when Vast says it was already gone (404), so repeating is safe."""
        iid = self._positive_id("instance_id", instance_id)
        try:
            self._call(DESTROY_INSTANCE, ids={"id": iid}, json_body={})
        except NotFoundError as exc:
            if exc.error_code is None:
                raise
            return False
        return True

    def destroy_instances(self, instance_ids: Iterable[int]) -> None:
        """Bulk destroy (``DELETE /api/v0/instances/``), 64 ids per request as the CLI does."""
        ids = list(dict.fromkeys(self._positive_id("instance_ids", i) for i in instance_ids))
        for start in range(0, len(ids), DESTROY_CHUNK):
            self._call(DESTROY_INSTANCES, json_body={"instance_ids": ids[start : start + DESTROY_CHUNK]})

    def set_label(self, instance_id: int, label: str) -> ActionResult:
        iid = self._positive_id("instance_id", instance_id)
        self._check_label(label)
        self._refuse_secret(label, "label")
        return self._action(UPDATE_INSTANCE, {"label": label}, iid)

    def change_bid(self, instance_id: int, price: float) -> ActionResult:
        """Set the bid of an interruptible instance ($/h for the whole instance, like ``min_bid``)."""
        iid = self._positive_id("instance_id", instance_id)
        self._check_price(price)
        return self._action(CHANGE_BID, {"client_id": "me", "price": price}, iid)

    def stop_instance(self, instance_id: int) -> ActionResult:
        return self._action(UPDATE_INSTANCE, {"state": "stopped"}, self._positive_id("instance_id", instance_id))

    def start_instance(self, instance_id: int) -> ActionResult:
        return self._action(UPDATE_INSTANCE, {"state": "running"}, self._positive_id("instance_id", instance_id))

    # --- overlays ------------------------------------------------------------------------------------------------

    def list_overlays(self) -> list[Overlay]:
        body = self._call(LIST_OVERLAYS)
        rows = body if isinstance(body, list) else self._field(body, "overlays", LIST_OVERLAYS, list)
        return [self._parse(Overlay, row, LIST_OVERLAYS) for row in rows]

    def create_overlay(self, cluster_id: int, name: str) -> ActionResult:
        """Create overlay ``name`` on physical cluster ``cluster_id``. Vast returns no id: list to find it."""
        cid = self._positive_id("cluster_id", cluster_id)
        body = {"cluster_id": cid, "name": validate_overlay_name(name)}
        return self._action(CREATE_OVERLAY, body)

    def join_overlay(self, name: str, instance_id: int) -> ActionResult:
        iid = self._positive_id("instance_id", instance_id)
        return self._action(JOIN_OVERLAY, {"name": validate_overlay_name(name), "instance_id": iid})

    def delete_overlay(self, overlay_id: int | None = None, name: str | None = None) -> bool:
        """Delete an overlay by id or by name (exactly one). False when Vast says it was already gone."""
        if (overlay_id is None) == (name is None):
            raise ConfigError(
                f"delete_overlay(overlay_id={overlay_id!r}, name={name!r}) is not allowed: "
                "give exactly one of overlay_id and name"
            )
        if overlay_id is not None:
            body: dict[str, Any] = {"overlay_id": self._positive_id("overlay_id", overlay_id)}
        else:
            body = {"overlay_name": validate_overlay_name(name or "")}
        try:
            self._call(DELETE_OVERLAY, json_body=body)
        except NotFoundError as exc:
            if exc.error_code is None:
                raise
            return False
        return True

    # --- account -------------------------------------------------------------------------------------------------

    def current_user(self) -> User:
        """The account (``credit`` is the money left). Also the cheapest check that the key works."""
        return self._parse(User, self._call(CURRENT_USER), CURRENT_USER)

    def list_ssh_keys(self) -> list[SshKey]:
        """The account's keys; Vast answers 404 "No SSH keys found for the user" for none, which is an empty list."""
        try:
            body = self._call(LIST_SSH_KEYS)
        except NotFoundError as exc:
            if "<html" in exc.message.lower() or "<!doctype" in exc.message.lower():
                raise  # a web page, not Vast's answer: the base URL is wrong
            return []
        if isinstance(body, dict):
            body = body.get("ssh_keys", body.get("keys"))
        if not isinstance(body, list):
            raise self._protocol(LIST_SSH_KEYS, LIST_SSH_KEYS.template, "expected a list of keys")
        return [self._parse(SshKey, row, LIST_SSH_KEYS) for row in body]

    def create_ssh_key(self, public_key: str) -> SshKey:
        """Register an account key; Vast puts account keys on instances created afterwards."""
        body = self._call(CREATE_SSH_KEY, json_body={"ssh_key": self._check_public_key(public_key)})
        row = body.get("key", body) if isinstance(body, dict) else body
        return self._parse(SshKey, row, CREATE_SSH_KEY)

    def attach_ssh_key(self, instance_id: int, public_key: str) -> ActionResult:
        """Add a key to a running instance (keys registered after its creation do not reach it by themselves)."""
        iid = self._positive_id("instance_id", instance_id)
        return self._action(ATTACH_SSH_KEY, {"ssh_key": self._check_public_key(public_key)}, iid)

    def list_instance_ssh_keys(self, instance_id: int) -> list[SshKey]:
        iid = self._positive_id("instance_id", instance_id)
        body = self._call(LIST_INSTANCE_SSH_KEYS, ids={"id": iid})
        return self._parse(InstanceSshKeys, body, LIST_INSTANCE_SSH_KEYS).ssh_keys

    # --- the request pipeline ------------------------------------------------------------------------------------

    def _call(
        self,
        endpoint: Endpoint,
        *,
        ids: Mapping[str, int] | None = None,
        json_body: Any = _NO_BODY,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one logical request with THE retry rules; return the decoded JSON body of the success."""
        path = endpoint.path(**(ids or {}))
        if json_body is _NO_BODY and endpoint.method != "GET":
            json_body = {}  # the CLI sends a JSON body with every PUT/POST/DELETE
        query = _encode_query(params) if params else None
        call = _CallState()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: _is_retryable(endpoint, exc)),
            wait=lambda state: self._backoff(endpoint, state),
            stop=lambda state: self._clock() + state.upcoming_sleep >= call.deadline,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._attempt, endpoint, path, json_body, query, call)
        except VastError as exc:
            exc.attempts = int(retrying.statistics.get("attempt_number", 1))
            log.debug("%s failed: %s", endpoint, exc)
            raise

    def _backoff(self, endpoint: Endpoint, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, VastError) and exc.retry_after:
            return exc.retry_after  # "Retry-After: 0" falls through to the jitter, so it cannot cause a tight loop
        if isinstance(exc, RateLimitedError):
            # Vast sends no Retry-After: stay away at least the endpoint's interval (its penalty for creates), plus
            # jitter so that callers refused together do not come back together.
            penalty = self._limits.penalty(str(endpoint))
            if penalty > 0:
                spread = min(self._backoff_cap_s, max(self._backoff_base_s, penalty / 4))
                return penalty + self._rng.uniform(0.0, spread)
        ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** (state.attempt_number - 1))
        return self._rng.uniform(0.0, ceiling)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("retrying in %.2fs (attempt %d failed): %s", state.upcoming_sleep, state.attempt_number, exc)

    def _attempt(
        self, endpoint: Endpoint, path: str, json_body: Any, query: dict[str, str] | None, call: _CallState
    ) -> Any:
        """One request, done within its timeout of wall-clock time: connect, send, headers and the whole body."""
        self._pacer_for(str(endpoint)).acquire(str(endpoint), self._limits, self._sleep)
        if call.deadline == math.inf:  # the retry deadline counts from the first slot, not from the queue
            call.first_slot = self._clock()
            call.deadline = call.first_slot + self._deadline_s
        with self._stats_lock:
            self._stats[str(endpoint)] += 1
        started = self._clock()
        kwargs: dict[str, Any] = {"params": query}
        if json_body is not _NO_BODY:
            kwargs["json"] = json_body
        timeout = self._attempt_timeout(endpoint)
        deadline = time.monotonic() + timeout  # real time: the sockets are real even when the clock is not
        token = _ATTEMPT_DEADLINE.set(deadline)
        try:
            request = self._http.build_request(endpoint.method, path, timeout=httpx.Timeout(timeout), **kwargs)
            response = self._http.send(request, stream=True)
            self._reached = True
            try:
                content = self._read_body(endpoint, path, response, deadline)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
            raise self._timed_out(endpoint, path, type(exc).__name__, request_sent=sent) from None
        except httpx.TransportError as exc:
            sent = not isinstance(exc, httpx.ConnectError)
            if not sent and not self._reached:
                raise self._unreachable(endpoint, exc, call) from None
            raise ConnectionFailedError(
                f"{endpoint.method} {path}: {type(exc).__name__}: {self._scrub(str(exc)) or 'connection failed'}",
                request_sent=sent,
                outcome_unknown=sent and endpoint.writes,
                endpoint=str(endpoint),
            ) from None
        except httpx.HTTPError as exc:
            raise self._protocol(endpoint, path, f"{type(exc).__name__}: {self._scrub(str(exc))}") from None
        finally:
            _ATTEMPT_DEADLINE.reset(token)
        log.debug("%s %s -> %d in %.3fs", endpoint.method, path, response.status_code, self._clock() - started)
        reply = _Reply(response.status_code, response.headers, content, response.encoding or "utf-8")
        try:
            return self._check(endpoint, path, reply)
        except RateLimitedError as exc:
            # Refused for coming too early: close the endpoint to every caller of this identity for the server's
            # Retry-After, else the documented penalty, so queued callers do not walk into it too.
            wait = exc.retry_after or self._limits.penalty(str(endpoint))
            if wait > 0:
                self._pacer_for(str(endpoint)).penalise(str(endpoint), wait, self._limits)
            raise
        except RecursionError:  # a body nested deeper than Python can walk, wherever it is walked
            raise self._protocol(endpoint, path, f"HTTP {reply.status} with a body nested too deeply") from None

    def _read_body(self, endpoint: Endpoint, path: str, response: httpx.Response, deadline: float) -> bytes:
        """The decoded body, read in chunks so its size and the attempt's deadline hold whatever the server does."""
        limit = self._max_body_bytes
        declared = _as_int(response.headers.get("Content-Length"))
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
        return self._protocol(
            endpoint, path, f"HTTP {status} with a body that {how}; at most {self._max_body_bytes} are read"
        )

    def _unreachable(self, endpoint: Endpoint, exc: httpx.TransportError, call: _CallState) -> ConnectionFailedError:
        """No answer has ever come from this server and the connection was refused or the name did not resolve:
        most likely a wrong URL, not a passing fault, so retry only briefly and say where the URL came from."""
        call.deadline = min(call.deadline, call.first_slot + FIRST_CONTACT_RETRY_S)
        source = self._base_url_source
        hint = "set $VAST_URL (or the config's api_url) for another server" if source == "the default" else (
            f"check {source}")  # fmt: skip
        reason = self._scrub(str(exc)) or "connection failed"
        return ConnectionFailedError(
            f"cannot reach the Vast API at {self._scrub(self._base_url)} (from {source}): {type(exc).__name__}: "
            f"{reason}; {hint}",
            request_sent=False,
            endpoint=str(endpoint),
        )

    def _attempt_timeout(self, endpoint: Endpoint) -> float:
        return self._slow_timeout_s if endpoint.slow else self._timeout_s

    def _timed_out(self, endpoint: Endpoint, path: str, why: str, *, request_sent: bool) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"{endpoint.method} {path}: no complete response within {self._attempt_timeout(endpoint):g}s ({why})",
            request_sent=request_sent,
            outcome_unknown=request_sent and endpoint.writes,
            endpoint=str(endpoint),
        )

    def _check(self, endpoint: Endpoint, path: str, reply: _Reply) -> Any:
        """The decoded body of a success, or the typed error the response means."""
        try:
            body: Any = json.loads(reply.content)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack allows
            body = None
        status = reply.status
        if 200 <= status < 300:
            if body is None and reply.content.strip() != b"null":
                raise self._protocol(
                    endpoint, path, f"HTTP {status} with a body that is not JSON: {self._snippet(reply.text)!r}"
                )
            if not (isinstance(body, dict) and body.get("success") is False):
                return body
        raise self._error(endpoint, path, reply, body)

    def _error(self, endpoint: Endpoint, path: str, reply: _Reply, body: Any) -> VastError:
        status = reply.status
        code: str | None = None
        text = ""
        ask_id = new_contract = None
        if isinstance(body, dict):
            raw_code = body.get("error")
            code = self._snippet(str(raw_code))[:64] if raw_code not in (None, "", False) else None
            text = str(next((body[k] for k in ("msg", "message", "detail") if body.get(k)), ""))
            ask_id, new_contract = _as_int(body.get("ask_id")), _as_int(body.get("new_contract"))
        elif body is not None:
            text = json.dumps(body)
        else:
            text = reply.text
        text = self._snippet(text)
        retry_after = _parse_seconds(reply.headers.get("Retry-After"))
        described = " ".join(part for part in (f"HTTP {status}", code) if part)
        message = self._scrub(f"{endpoint.method} {path}: {described}" + (f": {text}" if text else ""))
        fields: dict[str, Any] = {
            "status": status,
            "error_code": code,
            "ask_id": ask_id,
            "new_contract": new_contract,
            "retry_after": retry_after,
            "endpoint": str(endpoint),
        }
        if new_contract is not None:
            log.warning("%s failed but created instance %d; it must be destroyed", endpoint, new_contract)
            message += f" (instance {new_contract} was created anyway and must be destroyed)"
        if code == "search_quota_exceeded":
            reset_at = _parse_seconds(reply.headers.get("X-RateLimit-Reset"))
            return QuotaExceededError(message, reset_at=reset_at, **fields)
        if status == 429 or code == "rate_limit_exceeded":
            return RateLimitedError(message, **fields)
        if status in (401, 403) or code == "auth_error":
            return AuthError(message, **fields)
        if "no_such_ask" in f"{code} {text}" or (endpoint is CREATE_INSTANCE and status in (404, 410)):
            return OfferGoneError(message, **fields)
        if status in (404, 410) or code in ("no_such_instance", "not_found"):
            return NotFoundError(message, **fields)
        if status >= 500:
            return ServerError(message, outcome_unknown=endpoint.writes, **fields)
        if 300 <= status < 400:
            where = self._scrub(reply.headers.get("Location", "?"))
            return ProtocolError(f"{message}: redirect to {where}; set VAST_URL to the final server", **fields)
        if status >= 400 or (code or "").startswith("invalid"):
            return BadRequestError(message, **fields)
        return VastError(message, **fields)  # a 2xx that says success: false with a code we do not know

    # --- small helpers -------------------------------------------------------------------------------------------

    def _action(self, endpoint: Endpoint, body: dict[str, Any], instance_id: int | None = None) -> ActionResult:
        ids = {"id": instance_id} if instance_id is not None else None
        result = self._call(endpoint, ids=ids, json_body=body)
        return self._parse(ActionResult, result if isinstance(result, dict) else {}, endpoint)

    def _parse(self, model: type[ModelT], data: Any, endpoint: Endpoint) -> ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)[:3]
            )
            raise self._protocol(endpoint, endpoint.template, f"unexpected {model.__name__}: {problems}") from None

    def _instance_rows(self, rows: list[Any], endpoint: Endpoint) -> list[Instance]:
        """Each row parsed on its own: a row that does not parse whole is kept in part (see
        :func:`~skyward_ray.vast.models.tolerant_instance`), one without an id is dropped; both are logged once."""
        instances: list[Instance] = []
        for row in rows:
            parsed, problems = tolerant_instance(row)
            if parsed is not None:
                instances.append(parsed)
            if problems:
                what = f"instance {parsed.id} kept without" if parsed is not None else "dropped an instance row with"
                _note_shape(endpoint, problems, f"{what} fields that did not parse")
        return instances

    def _field(self, body: Any, key: str, endpoint: Endpoint, kinds: type | tuple[type, ...]) -> Any:
        if not isinstance(body, dict) or key not in body or not isinstance(body[key], kinds):
            raise self._protocol(endpoint, endpoint.template, f"expected a JSON object with {key!r}")
        return body[key]

    def _protocol(self, endpoint: Endpoint, path: str, problem: str) -> ProtocolError:
        return ProtocolError(f"{endpoint.method} {path}: {self._scrub(problem)}", endpoint=str(endpoint))

    def _scrub(self, text: str) -> str:
        return redact(text, self._key)

    def _snippet(self, text: str) -> str:
        text = self._scrub(" ".join(text.split()))
        return text if len(text) <= _BODY_SNIPPET_CHARS else text[: _BODY_SNIPPET_CHARS - 3] + "..."

    def _refuse_secret(self, value: Any, where: str) -> None:
        """The account key must never reach an instance, a label or a log (DESIGN, decision 10)."""
        secret = self._key.reveal()
        if secret and any(secret in text for text in _strings(value)):
            raise ConfigError(f"{where} contains the account API key; it must never reach an instance or a label")

    @staticmethod
    def _positive_id(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} = {value!r} is not allowed: use a positive integer id")
        return value

    @staticmethod
    def _check_label(label: Any, limit: int = MAX_LABEL_CHARS) -> None:
        if not isinstance(label, str) or not label.strip() or len(label) > limit:
            shown = label if not isinstance(label, str) else f"{label[:40]}... ({len(label)} chars)"
            raise ConfigError(f"label {shown!r} is not allowed: use non-blank text of at most {limit} characters")

    @staticmethod
    def _check_price(price: Any) -> None:
        if isinstance(price, bool) or not isinstance(price, int | float) or not price > 0:
            raise ConfigError(f"price = {price!r} is not allowed: use $/hour > 0 (Vast accepts 0.001 and up)")

    @staticmethod
    def _check_env(env: Mapping[str, Any] | None) -> dict[str, str]:
        if env is None:
            return {}
        if not isinstance(env, Mapping):
            raise ConfigError(f"env of type {type(env).__name__} is not allowed: use a dict of str to str")
        result: dict[str, str] = {}
        for key, value in env.items():
            plain = isinstance(value, str | int | float) and not isinstance(value, bool)
            if not isinstance(key, str) or not key or not plain:
                raise ConfigError(f"env entry {key!r} is not allowed: use non-empty str keys and str values")
            result[key] = str(value)
        return result

    @staticmethod
    def _check_public_key(public_key: Any) -> str:
        """Refuse anything but one line of OpenSSH public key, so a private key is never sent by mistake."""
        text = public_key.strip() if isinstance(public_key, str) else ""
        if (
            not text
            or "\n" in text
            or "PRIVATE KEY" in text
            or not text.split()[0].startswith(("ssh-", "ecdsa-", "sk-"))
            or len(text.split()) < 2
        ):
            # The value is not shown: it may be a private key.
            raise ConfigError("public_key is not allowed: use one line of OpenSSH public key ('ssh-ed25519 AAAA...')")
        return text
