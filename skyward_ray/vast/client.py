"""The Vast REST API as typed, thread-safe methods; never imports Ray.

A call goes method -> :mod:`.endpoints` (what) -> :mod:`.pacing` (when) -> :mod:`.transport` (one bounded attempt)
-> :mod:`.error_map` (what the answer means), repeated by :mod:`.retry`. It sends what the official client sends:
``Authorization: Bearer``, a JSON body with every write, JSON-encoded GET query values, paths ending in ``/``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from skyward_ray.errors import ConfigError
from skyward_ray.vast.checks import (
    check_client_settings,
    check_label,
    check_price,
    check_public_key,
    positive_id,
    refuse_secret,
    rental_body,
)
from skyward_ray.vast.credentials import ApiKey, resolve_api_key, resolve_base_url_and_source
from skyward_ray.vast.endpoints import (
    ATTACH_SSH_KEY,
    CHANGE_BID,
    CREATE_INSTANCE,
    CREATE_OVERLAY,
    CREATE_SSH_KEY,
    CURRENT_USER,
    DELETE_OVERLAY,
    DESTROY_INSTANCE,
    DESTROY_INSTANCES,
    ENDPOINT_KEYS,
    GET_INSTANCE,
    JOIN_OVERLAY,
    LIST_INSTANCE_SSH_KEYS,
    LIST_INSTANCES,
    LIST_INSTANCES_V0,
    LIST_OVERLAYS,
    LIST_SSH_KEYS,
    SEARCH_OFFERS,
    UPDATE_INSTANCE,
    Endpoint,
)
from skyward_ray.vast.error_map import Redactor
from skyward_ray.vast.errors import NotFoundError, RateLimitedError, VastError
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
from skyward_ray.vast.parsing import BodyParser
from skyward_ray.vast.retry import Backoff, CallState, retrying
from skyward_ray.vast.transport import FIRST_CONTACT_RETRY_S, MAX_BODY_BYTES, NO_BODY, Wire, encode_query

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 25  # GET /api/v1/instances/ never returns more per page
DESTROY_CHUNK = 64  # what the CLI sends per bulk destroy


class VastClient:
    """The Vast REST API as typed methods. Use as a context manager or call :meth:`close`.

    ``api_key``/``base_url`` default to what :mod:`skyward_ray.vast.credentials` resolves (``VAST_API_KEY``,
    ``VAST_URL``, the key files); ``base_url_source`` names the setting an explicit ``base_url`` came from (e.g.
    ``"provider.api_url"``) for the error that says a server was never reachable. Each attempt ends within
    ``timeout_s`` (default 120 s for slow calls, 30 s for others); no retry starts after ``retry_deadline_s``.
    ``rate_scale`` scales Vast's documented intervals (for a test server) and ``min_interval_s`` overrides them per
    endpoint key (``"*"`` or a number: a floor for all). ``sleep``, ``clock`` and ``rng`` let tests check waits
    without waiting; clients sharing a clock, server and key share one pacer. Anonymous clients may only search.
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
        check_client_settings(timeout_s=timeout_s, backoff_cap_s=backoff_cap_s, retry_deadline_s=retry_deadline_s,
                              backoff_base_s=backoff_base_s, max_body_bytes=max_body_bytes)  # fmt: skip
        # Anonymous clients may only search offers (Vast serves bundles without a key): no key is resolved or sent.
        self._key = ApiKey("") if anonymous else ApiKey(resolve_api_key(api_key))
        base_url, source = resolve_base_url_and_source(base_url, base_url_source)
        self._redactor = Redactor(self._key)
        self._parser = BodyParser(self._redactor)
        self._deadline_s = float(retry_deadline_s)
        self._sleep = sleep
        self._clock = clock
        self._limits = PaceLimits.documented(
            rate_scale=rate_scale, min_interval_s=min_interval_s, known_keys=ENDPOINT_KEYS
        )
        self._backoff = Backoff(float(backoff_base_s), float(backoff_cap_s), rng or random.Random(), self._limits)
        self._pacer = shared_pacer(identity_of(base_url, self._key.reveal()), clock)
        self._address_pacer = shared_pacer(per_address(base_url), clock)  # search: per address, any key
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        auth = {} if anonymous else {"Authorization": f"Bearer {self._key.reveal()}"}
        self._wire = Wire(base_url, source, auth, self._redactor, timeout_s=timeout_s,
                          max_body_bytes=max_body_bytes, transport=transport)  # fmt: skip

    # --- lifecycle -----------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._wire.base_url

    def close(self) -> None:
        self._wire.close()

    def __enter__(self) -> VastClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VastClient(base_url={self.base_url!r}, api_key={self._key!r})"

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
        body = self.call(SEARCH_OFFERS, json_body=query)
        rows = body if isinstance(body, list) else self._parser.field(body, "offers", SEARCH_OFFERS, list)
        return self._parser.offers(rows)

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
        offer = positive_id("offer_id", offer_id)
        body = rental_body(image=image, disk_gb=disk_gb, label=label, env=env, onstart=onstart, price=price,
                           runtype=runtype, args=args, extra=extra)
        refuse_secret(self._key, body, "the create_instance request (label, env, onstart, args, extra)")
        result = self.call(CREATE_INSTANCE, ids={"id": offer}, json_body=body)
        if not isinstance(result, dict) or result.get("new_contract") is None:
            path = CREATE_INSTANCE.path(id=offer)
            raise self._redactor.protocol(CREATE_INSTANCE, path, "no new_contract in a success body")
        return self._parser.model(CreatedInstance, result, CREATE_INSTANCE)

    # --- reading instances ---------------------------------------------------------------------------------------

    def get_instance(self, instance_id: int) -> Instance | None:
        """One instance, or None when Vast says it does not exist (``{"instances": null}`` or a 404 envelope)."""
        iid = positive_id("instance_id", instance_id)
        try:
            body = self.call(GET_INSTANCE, ids={"id": iid}, params={"owner": "me"})
        except NotFoundError as exc:
            if exc.error_code is None:
                raise  # not Vast's answer (an HTML 404 from a wrong base URL): do not report the node as gone
            return None
        row = self._parser.field(body, "instances", GET_INSTANCE, (dict, type(None)))
        if row is None:
            return None
        parsed = self._parser.instances([row], GET_INSTANCE)
        if not parsed:
            return self._parser.model(Instance, row, GET_INSTANCE)  # raises the ProtocolError that says why
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
            body = self.call(LIST_INSTANCES, params=params)
            rows = self._parser.field(body, "instances", LIST_INSTANCES, (list, type(None))) or []
            page = self._parser.model(InstancePage, {**body, "instances": []}, LIST_INSTANCES)
            instances.extend(self._parser.instances(rows, LIST_INSTANCES))
            if not page.next_token:
                return instances
            if page.next_token in seen_tokens:
                repeated = "next_token repeats an earlier page"
                raise self._redactor.protocol(LIST_INSTANCES, LIST_INSTANCES.template, repeated)
            seen_tokens.add(page.next_token)
            params["after_token"] = page.next_token

    def list_instances_v0(self) -> list[Instance]:
        """The deprecated unpaged list (``GET /api/v0/instances/?owner=me``), for servers without v1."""
        body = self.call(LIST_INSTANCES_V0, params={"owner": "me"})
        rows = self._parser.field(body, "instances", LIST_INSTANCES_V0, (list, type(None))) or []
        return self._parser.instances(rows, LIST_INSTANCES_V0)

    # --- changing instances --------------------------------------------------------------------------------------

    def destroy_instance(self, instance_id: int) -> bool:
        """Destroy one instance. False when Vast says it was already gone (404), so repeating is safe."""
        iid = positive_id("instance_id", instance_id)
        try:
            self.call(DESTROY_INSTANCE, ids={"id": iid}, json_body={})
        except NotFoundError as exc:
            if exc.error_code is None:
                raise
            return False
        return True

    def destroy_instances(self, instance_ids: Iterable[int]) -> None:
        """Bulk destroy (``DELETE /api/v0/instances/``), 64 ids per request as the CLI does."""
        ids = list(dict.fromkeys(positive_id("instance_ids", i) for i in instance_ids))
        for start in range(0, len(ids), DESTROY_CHUNK):
            self.call(DESTROY_INSTANCES, json_body={"instance_ids": ids[start : start + DESTROY_CHUNK]})

    def set_label(self, instance_id: int, label: str) -> ActionResult:
        iid = positive_id("instance_id", instance_id)
        check_label(label)
        refuse_secret(self._key, label, "label")
        return self._action(UPDATE_INSTANCE, {"label": label}, iid)

    def change_bid(self, instance_id: int, price: float) -> ActionResult:
        """Set the bid of an interruptible instance ($/h for the whole instance, like ``min_bid``)."""
        iid = positive_id("instance_id", instance_id)
        check_price(price)
        return self._action(CHANGE_BID, {"client_id": "me", "price": price}, iid)

    def stop_instance(self, instance_id: int) -> ActionResult:
        return self._action(UPDATE_INSTANCE, {"state": "stopped"}, positive_id("instance_id", instance_id))

    def start_instance(self, instance_id: int) -> ActionResult:
        return self._action(UPDATE_INSTANCE, {"state": "running"}, positive_id("instance_id", instance_id))

    # --- overlays ------------------------------------------------------------------------------------------------

    def list_overlays(self) -> list[Overlay]:
        body = self.call(LIST_OVERLAYS)
        rows = body if isinstance(body, list) else self._parser.field(body, "overlays", LIST_OVERLAYS, list)
        return [self._parser.model(Overlay, row, LIST_OVERLAYS) for row in rows]

    def create_overlay(self, cluster_id: int, name: str) -> ActionResult:
        """Create overlay ``name`` on physical cluster ``cluster_id``. Vast returns no id: list to find it."""
        cid = positive_id("cluster_id", cluster_id)
        body = {"cluster_id": cid, "name": validate_overlay_name(name)}
        return self._action(CREATE_OVERLAY, body)

    def join_overlay(self, name: str, instance_id: int) -> ActionResult:
        iid = positive_id("instance_id", instance_id)
        return self._action(JOIN_OVERLAY, {"name": validate_overlay_name(name), "instance_id": iid})

    def delete_overlay(self, overlay_id: int | None = None, name: str | None = None) -> bool:
        """Delete an overlay by id or by name (exactly one). False when Vast says it was already gone."""
        if (overlay_id is None) == (name is None):
            raise ConfigError(
                f"delete_overlay(overlay_id={overlay_id!r}, name={name!r}) is not allowed: "
                "give exactly one of overlay_id and name"
            )
        if overlay_id is not None:
            body: dict[str, Any] = {"overlay_id": positive_id("overlay_id", overlay_id)}
        else:
            body = {"overlay_name": validate_overlay_name(name or "")}
        try:
            self.call(DELETE_OVERLAY, json_body=body)
        except NotFoundError as exc:
            if exc.error_code is None:
                raise
            return False
        return True

    # --- account -------------------------------------------------------------------------------------------------

    def current_user(self) -> User:
        """The account (``credit`` is the money left). Also the cheapest check that the key works."""
        return self._parser.model(User, self.call(CURRENT_USER), CURRENT_USER)

    def list_ssh_keys(self) -> list[SshKey]:
        """The account's keys; Vast answers 404 "No SSH keys found for the user" for none, which is an empty list."""
        try:
            body = self.call(LIST_SSH_KEYS)
        except NotFoundError as exc:
            if "<html" in exc.message.lower() or "<!doctype" in exc.message.lower():
                raise  # a web page, not Vast's answer: the base URL is wrong
            return []
        if isinstance(body, dict):
            body = body.get("ssh_keys", body.get("keys"))
        if not isinstance(body, list):
            raise self._redactor.protocol(LIST_SSH_KEYS, LIST_SSH_KEYS.template, "expected a list of keys")
        return [self._parser.model(SshKey, row, LIST_SSH_KEYS) for row in body]

    def create_ssh_key(self, public_key: str) -> SshKey:
        """Register an account key; Vast puts account keys on instances created afterwards."""
        body = self.call(CREATE_SSH_KEY, json_body={"ssh_key": check_public_key(public_key)})
        row = body.get("key", body) if isinstance(body, dict) else body
        return self._parser.model(SshKey, row, CREATE_SSH_KEY)

    def attach_ssh_key(self, instance_id: int, public_key: str) -> ActionResult:
        """Add a key to a running instance (keys registered after its creation do not reach it by themselves)."""
        iid = positive_id("instance_id", instance_id)
        return self._action(ATTACH_SSH_KEY, {"ssh_key": check_public_key(public_key)}, iid)

    def list_instance_ssh_keys(self, instance_id: int) -> list[SshKey]:
        iid = positive_id("instance_id", instance_id)
        body = self.call(LIST_INSTANCE_SSH_KEYS, ids={"id": iid})
        return self._parser.model(InstanceSshKeys, body, LIST_INSTANCE_SSH_KEYS).ssh_keys

    # --- the request pipeline ------------------------------------------------------------------------------------

    def call(
        self,
        endpoint: Endpoint,
        *,
        ids: Mapping[str, int] | None = None,
        json_body: Any = NO_BODY,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """One catalogued request, paced, retried by the endpoint's policy and mapped to typed errors; the decoded
        JSON body of the success as it came (for callers that must read rows the models would not fit)."""
        path = endpoint.path(**(ids or {}))
        if json_body is NO_BODY and endpoint.method != "GET":
            json_body = {}  # the CLI sends a JSON body with every PUT/POST/DELETE
        query = encode_query(params) if params else None
        state = CallState()
        loop = retrying(endpoint, state, self._backoff, self._clock, self._sleep)
        try:
            return loop(self._attempt, endpoint, path, json_body, query, state)
        except VastError as exc:
            exc.attempts = int(loop.statistics.get("attempt_number", 1))
            log.debug("%s failed: %s", endpoint, exc)
            raise

    def _attempt(
        self, endpoint: Endpoint, path: str, json_body: Any, query: dict[str, str] | None, state: CallState
    ) -> Any:
        """One request: wait for its slot, send it within its timeout, read what the answer means."""
        key = str(endpoint)
        self._pacer_for(key).acquire(key, self._limits, self._sleep)
        state.start(self._clock(), self._deadline_s)
        with self._stats_lock:
            self._stats[key] += 1
        started = self._clock()
        reply = self._wire.send(
            endpoint, path, json_body, query, on_unreachable=lambda: state.shorten(FIRST_CONTACT_RETRY_S)
        )
        log.debug("%s %s -> %d in %.3fs", endpoint.method, path, reply.status, self._clock() - started)
        try:
            return self._redactor.checked(endpoint, path, reply)
        except RateLimitedError as exc:
            # Refused for coming too early: close the endpoint to every caller of this identity for the server's
            # Retry-After, else the documented penalty, so queued callers do not walk into it too.
            wait = exc.retry_after or self._limits.penalty(key)
            if wait > 0:
                self._pacer_for(key).penalise(key, wait, self._limits)
            raise
        except RecursionError:  # a body nested deeper than Python can walk, wherever it is walked
            too_deep = f"HTTP {reply.status} with a body nested too deeply"
            raise self._redactor.protocol(endpoint, path, too_deep) from None

    def _action(self, endpoint: Endpoint, body: dict[str, Any], instance_id: int | None = None) -> ActionResult:
        ids = {"id": instance_id} if instance_id is not None else None
        result = self.call(endpoint, ids=ids, json_body=body)
        return self._parser.model(ActionResult, result if isinstance(result, dict) else {}, endpoint)
