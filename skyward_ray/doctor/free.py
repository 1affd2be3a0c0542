"""The free checks, cheapest call first: the key, the account, SSH keys, the instance list row by row, overlays, our
exact searches and what placement would pick, the balance against an hour of the cluster, and Vast's 429s.

Nothing here rents or writes anything. Rows our models do not fit are named field by field with the value's type,
never the value (it may be a secret or a user's script).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from skyward_ray.doctor.report import Report, Status
from skyward_ray.doctor.wire import WireLog, raw_instance_pages
from skyward_ray.errors import ConfigError
from skyward_ray.placement import (
    NodeGroup,
    NoPlacementError,
    PlacementOptions,
    PlacementRequest,
    Plan,
    build_queries,
    explain,
    plan,
)
from skyward_ray.provider.bootstrap import key_body
from skyward_ray.provider.config import HEAD_KIND, NodeTypeShape, VastNodeConfig, VastProviderConfig
from skyward_ray.provider.tags import LABEL_VERSION, decode_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import API_KEY_ENV, config_key_path, legacy_key_path
from skyward_ray.vast.endpoints import LIST_INSTANCES_V0, LIST_OVERLAYS, SEARCH_OFFERS
from skyward_ray.vast.errors import (
    AuthError,
    QuotaExceededError,
    RateLimitedError,
    TransportError,
    VastError,
)
from skyward_ray.vast.models import Offer, Overlay, tolerant_instance

DOCTOR_CLUSTER_PREFIX = "doctor-"  # the doctor's rentals belong to clusters named doctor-<hex>
MAX_LIST_PAGES = 40  # 1000 rows: enough to judge the list's shape on any account
DEFAULT_REQUEST_GPU = "RTX 4090"


@dataclass
class ClusterShape:
    """The cluster a config describes, as placement sees it (or the default one-node RTX 4090 request)."""

    source: str  # the config path, or "default request"
    options: PlacementOptions
    provider: VastProviderConfig | None
    provider_section: dict[str, Any]
    head_type: str
    shapes: dict[str, NodeTypeShape]
    auth: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> VastNodeConfig:
        return self.shapes[self.head_type].node_config

    def groups(self) -> list[NodeGroup]:
        """The head plus every worker type at its max_workers, as the provider plans the head's cluster."""
        head = self.head
        groups = [NodeGroup(name=self.head_type, accelerator=head.accelerator, gpus_per_node=head.gpus, count=1,
                            allocation=head.allocation_for(HEAD_KIND), include_variants=head.include_variants)]
        for name, shape in self.shapes.items():
            if shape.max_workers <= 0:
                continue
            worker = shape.node_config
            groups.append(NodeGroup(name=f"{name} workers" if name == self.head_type else name,
                                    accelerator=worker.accelerator, gpus_per_node=worker.gpus,
                                    count=shape.max_workers, allocation=worker.allocation_for("worker"),
                                    include_variants=worker.include_variants))
        return groups

    @property
    def multi_node(self) -> bool:
        return self.options.use_overlay and any(shape.max_workers > 0 for shape in self.shapes.values())

    def describe(self) -> str:
        return " + ".join(group.describe() for group in self.groups())


def default_shape() -> ClusterShape:
    """One RTX 4090 node, spot if available: both of our queries (on-demand and bid) get exercised."""
    node = VastNodeConfig(accelerator=DEFAULT_REQUEST_GPU, allocation="spot-if-available")
    shape = NodeTypeShape(kind="head", node_config=node)
    return ClusterShape("default request (1 x RTX 4090, spot if available)", PlacementOptions(), None, {}, "head",
                        {"head": shape})


@dataclass
class FreeResult:
    """What the free checks learned that the rental checks reuse."""

    key_ok: bool = False
    credit: float | None = None
    plan: Plan | None = None
    offers: list[Offer] = field(default_factory=list)
    ssh_key_bodies: set[str] = field(default_factory=set)
    overlays_ok: bool | None = None


def key_source() -> str | None:
    """Where the client will find the key, in the official client's order (never the key itself)."""
    if os.environ.get(API_KEY_ENV, "").strip():
        return f"${API_KEY_ENV}"
    for path in (config_key_path(), legacy_key_path()):
        try:
            if path.read_text(encoding="utf-8").strip():
                return str(path)
        except (OSError, UnicodeDecodeError):
            continue
    return None


def misfits(model: type[BaseModel], row: Any) -> list[str]:
    """Each field of ``row`` that ``model`` refuses, as ``field: <type of the value>`` (never the value)."""
    try:
        model.model_validate(row)
    except ValidationError as exc:
        names: list[str] = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = error["loc"]
            top = loc[0] if loc else None
            value = row.get(top) if isinstance(row, dict) and isinstance(top, str) else row
            kind = "missing" if error["type"] == "missing" else type(value).__name__
            path = ".".join(str(part) for part in loc) or "(row)"
            names.append(f"{path}: {kind}")
        return list(dict.fromkeys(names))
    return []


def _vast_answer(exc: VastError) -> str:
    return str(exc)


class FreeChecks:
    """Runs the free checks in order into ``report``; each check is one method and one or more rows."""

    def __init__(self, report: Report, client: VastClient, wire: WireLog, shape: ClusterShape, *,
                 search_limit: int, ssh_public_key: str | None, key_from: str) -> None:
        self.report = report
        self.client = client
        self.wire = wire
        self.shape = shape
        self.limit = search_limit
        self.ssh_public_key = ssh_public_key
        self.key_from = key_from
        self.result = FreeResult()

    def run(self) -> FreeResult:
        add = self.report.add
        add("api key", "a key from $VAST_API_KEY or the vastai key files", f"found in {self.key_from}", Status.OK)
        add("api server", "https://console.vast.ai or $VAST_URL", self.client.base_url, Status.OK)
        self.account()
        if not self.result.key_ok:
            for name in ("ssh keys", "instance list", "overlays", "offer search", "placement", "balance"):
                add(name, "an accepted key", "not checked: the key was not accepted", Status.SKIP)
        else:
            self.guarded("ssh keys", self.ssh_keys)
            self.guarded("instance list", self.instance_list)
            self.guarded("overlays", self.overlays)
            self.guarded("offer search", self.searches)
            self.balance()
        self.rate_limits()
        return self.result

    def guarded(self, name: str, check: Callable[[], None]) -> None:
        """Run one check; an API failure becomes its FAIL row (with Vast's answer) instead of ending the run."""
        try:
            check()
        except QuotaExceededError as exc:
            self.report.add(name, "an answer", f"Vast's daily search quota is used up: {exc}", Status.FAIL)
        except RateLimitedError as exc:
            self.report.add(name, "an answer within our pace", f"still rate limited at the deadline: {exc}",
                            Status.FAIL)
        except VastError as exc:
            self.report.add(name, "an answer our client understands", _vast_answer(exc), Status.FAIL)
        except Exception as exc:  # a doctor reports what broke instead of stopping with a traceback
            self.report.add(name, "a check that completes", f"{type(exc).__name__}: {exc}", Status.FAIL)

    # --- the account -----------------------------------------------------------------------------------------------

    def account(self) -> None:
        expected = "HTTP 200 with the account (GET /api/v0/users/current/)"
        try:
            user = self.client.current_user()
        except AuthError as exc:
            self.report.add("key accepted", expected, f"Vast refused the key: {exc}", Status.FAIL)
            return
        except TransportError as exc:
            self.report.add("key accepted", expected, f"cannot reach the API: {exc}", Status.FAIL)
            return
        except VastError as exc:
            self.report.add("key accepted", expected, _vast_answer(exc), Status.FAIL)
            return
        self.result.key_ok = True
        credit = user.credit if user.credit is not None else user.balance
        self.result.credit = credit
        shown = f"${credit:.2f}" if credit is not None else "not shown"
        self.report.add("key accepted", expected, f"user {user.id}, credit {shown}", Status.OK, user_id=user.id,
                        credit=credit)

    def ssh_keys(self) -> None:
        expected = "a list of keys, or HTTP 404 when there are none (as Vast documents)"
        keys = self.client.list_ssh_keys()
        answered = self.wire.last("GET", "/api/v0/ssh/")
        said_404 = answered is not None and answered.status == 404
        self.result.ssh_key_bodies = {key_body(k.public_key) for k in keys if k.public_key}
        if not keys:
            how = "HTTP 404 (none registered)" if said_404 else "an empty list"
            observed = f"{how}: fine, ray up registers its key on first use"
        else:
            observed = f"{len(keys)} key(s)"
        if self.ssh_public_key:
            registered = key_body(self.ssh_public_key) in self.result.ssh_key_bodies
            observed += "; ray up's key is " + ("registered" if registered else "not registered yet (ray up adds it)")
        self.report.add("ssh keys", expected, observed, Status.OK, keys=len(keys), http_404=said_404)

    # --- the instance list -----------------------------------------------------------------------------------------

    def instance_list(self) -> None:
        expected = "every row of GET /api/v1/instances/ (25 per page) fits our Instance model"
        rows: list[Any] = []
        pages = 0
        for pages, body in enumerate(raw_instance_pages(self.client, MAX_LIST_PAGES), start=1):
            page = body.get("instances") if isinstance(body, dict) else None
            if not isinstance(page, list):
                kind = type(page).__name__ if isinstance(body, dict) else type(body).__name__
                self.report.add("instance list", expected, f"page {pages} has no list of instances ({kind})",
                                Status.FAIL)
                return
            rows += page
        bad: dict[str, list[str]] = {}
        dropped: list[str] = []
        ours = doctors = 0
        doctor_ids: list[int] = []
        for index, row in enumerate(rows):
            kept, problems = tolerant_instance(row)  # the client's own reading of a row
            row_id = row.get("id") if isinstance(row, dict) else None
            if problems:
                bad[f"row {index} (id {row_id})"] = list(problems)
                if kept is None:
                    dropped.append(f"row {index}")
            label = row.get("label") if isinstance(row, dict) else None
            decoded = decode_label(label) if isinstance(label, str) else None
            if decoded:
                ours += 1
                if decoded[0].startswith(DOCTOR_CLUSTER_PREFIX):
                    doctors += 1
                    if isinstance(row_id, int):
                        doctor_ids.append(row_id)
        summary = f"{len(rows)} row(s) on {pages} page(s), {ours} from skyward-ray clusters"
        if not bad:
            self.report.add("instance list", expected, f"{summary}; every row fits", Status.OK, rows=len(rows),
                            pages=pages)
        else:
            named = "; ".join(f"{where}: {', '.join(fields)}" for where, fields in list(bad.items())[:5])
            if dropped:
                coping, ok = f"our client drops {', '.join(dropped)} (no usable id): ray up cannot see them", \
                    Status.FAIL
            else:
                coping, ok = ("our client keeps every row without those fields (ray up works; attach this report "
                              "to a bug)"), Status.WARN
            self.report.add("instance list", expected, f"{summary}; {len(bad)} row(s) do not fit: {named}; {coping}",
                            ok, rows=len(rows), pages=pages, misfits=bad)
        self.unpaged_list(len(rows))
        if doctors:
            self.report.add("doctor leftovers", "no instance left by an earlier doctor run",
                            f"{doctors} instance(s) labelled by a doctor run: {doctor_ids} (destroy them: "
                            "vastai destroy instance ID)", Status.WARN, ids=doctor_ids)

    def unpaged_list(self, paged_rows: int) -> None:
        """``GET /api/v0/instances/`` (no pages): what the provider's refresh reads by default, being one call."""
        expected = "GET /api/v0/instances/ lists the same rows in one answer"
        try:
            body = self.client.call(LIST_INSTANCES_V0, params={"owner": "me"})
        except VastError as exc:
            if not (exc.status and 400 <= exc.status < 500):
                raise
            self.report.add("instance list (unpaged)", expected, f"not served ({exc}): ray up falls back to the "
                            "paged list, one call per 25 instances", Status.WARN)
            return
        rows = body.get("instances") if isinstance(body, dict) else None
        if rows is None:
            rows = []
        if not isinstance(rows, list):
            self.report.add("instance list (unpaged)", expected, f"'instances' is a {type(rows).__name__}",
                            Status.FAIL)
            return
        bad = {f"row {i}": list(problems) for i, row in enumerate(rows) if (problems := tolerant_instance(row)[1])}
        observed = f"{len(rows)} row(s) (the paged list had {paged_rows})"
        if bad:
            named = "; ".join(f"{k}: {', '.join(v)}" for k, v in list(bad.items())[:5])
            observed += f"; {len(bad)} do not fit: {named}"
        ok = Status.WARN if bad or len(rows) != paged_rows else Status.OK
        self.report.add("instance list (unpaged)", expected, observed, ok, rows=len(rows), misfits=bad)

    # --- overlays ----------------------------------------------------------------------------------------------------

    def overlays(self) -> None:
        expected = "GET /api/v0/overlay/ answers a list of {overlay_id, name, cluster_id, internal_subnet, instances}"
        try:
            body = self.client.call(LIST_OVERLAYS)
        except VastError as exc:
            if not (exc.status and 400 <= exc.status < 500) or isinstance(exc, RateLimitedError | QuotaExceededError):
                raise  # not a refusal of the feature: the row says what went wrong
            self.result.overlays_ok = False
            needs = self.shape.multi_node
            tail = ("this cluster needs one (workers on an overlay)" if needs else
                    "single-node clusters still work")
            self.report.add("overlays", expected, f"refused: {exc}; {tail}", Status.FAIL if needs else Status.WARN)
            return
        rows = body if isinstance(body, list) else body.get("overlays") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            self.result.overlays_ok = False
            self.report.add("overlays", expected, f"neither a list nor {{'overlays': [...]}} ({type(body).__name__})",
                            Status.FAIL)
            return
        bad = {f"row {i}": problems for i, row in enumerate(rows) if (problems := misfits(Overlay, row))}
        self.result.overlays_ok = not bad
        shape = "a bare list" if isinstance(body, list) else "{'overlays': [...]}"
        if bad:
            named = "; ".join(f"{k}: {', '.join(v)}" for k, v in list(bad.items())[:5])
            self.report.add("overlays", expected, f"{len(rows)} overlay(s) as {shape}; do not fit: {named}",
                            Status.FAIL, misfits=bad)
        else:
            self.report.add("overlays", expected, f"{len(rows)} overlay(s) as {shape}; every row fits", Status.OK,
                            overlays=len(rows))

    # --- searches and placement --------------------------------------------------------------------------------------

    def search(self, query: dict[str, Any]) -> tuple[list[Offer], dict[str, list[str]], int]:
        """One search through the client: (offers that fit, misfit rows named, rows returned)."""
        body = self.client.call(SEARCH_OFFERS, json_body=query)
        rows = body if isinstance(body, list) else body.get("offers") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ConfigError(f"POST /api/v0/bundles/ answered {type(body).__name__} without an 'offers' list")
        offers: list[Offer] = []
        bad: dict[str, list[str]] = {}
        for index, row in enumerate(rows):
            problems = misfits(Offer, row)
            if problems:
                bad[f"offer {row.get('id') if isinstance(row, dict) else index}"] = problems
            else:
                offers.append(Offer.model_validate(row))
        return offers, bad, len(rows)

    def searches(self) -> None:
        shape = self.shape
        request = PlacementRequest(groups=tuple(shape.groups()))
        queries = build_queries(request, shape.options, limit=self.limit)
        found: list[Offer] = []
        for query in queries:
            kind = "bid" if query.get("type") == "bid" else "on-demand"
            gpus = query.get("gpu_name", {})
            names = (gpus.get("in") or [gpus.get("eq")]) if isinstance(gpus, dict) else [gpus]
            what = ", ".join(str(name) for name in names if name) or "any GPU"
            check = f"{kind} search"
            expected = f"offers for {what} (limit {self.limit}) that all parse"
            try:
                offers, bad, total = self.search(query)
            except ConfigError as exc:
                self.report.add(check, expected, str(exc), Status.FAIL)
                continue
            clustered = sum(1 for o in offers if o.cluster_id is not None)
            cheapest = min((o.dph_total for o in offers), default=None)
            price = f", cheapest ${cheapest:.4f}/h" if cheapest is not None else ""
            observed = f"{total} offer(s), {clustered} on a physical cluster (cluster_id){price}"
            if bad:
                named = "; ".join(f"{k}: {', '.join(v)}" for k, v in list(bad.items())[:5])
                observed += f"; {len(bad)} do not fit: {named}"
            ok = Status.FAIL if bad and not offers else Status.WARN if bad or not offers else Status.OK
            self.report.add(check, expected, observed, ok, offers=total, on_physical_cluster=clustered,
                            cheapest=cheapest, misfits=bad, query=query)
            found += offers
        self.result.offers = found
        self.placement(request, found)

    def placement(self, request: PlacementRequest, offers: list[Offer]) -> None:
        shape = self.shape
        expected = f"a placement for {shape.describe()}"
        try:
            chosen = plan(request, shape.options, offers)
        except NoPlacementError as exc:
            message = str(exc)
            try:
                broad: list[Offer] = []
                for query in build_queries(request, shape.options, limit=self.limit, broad=True):
                    broad += self.search(query)[0]
                message = explain(request, shape.options, [*offers, *broad]).message
            except (VastError, ConfigError):
                pass
            self.report.add("placement", expected, f"nothing fits: {message}", Status.FAIL)
            return
        self.result.plan = chosen
        where = f"physical cluster {chosen.cluster_id}" if chosen.cluster_id is not None else "any hosts"
        nodes = ", ".join(f"{n.group}: offer {n.offer_id} ${n.price_per_hour:.4f}/h{' (bid)' if n.is_bid else ''}"
                          for n in chosen.nodes)
        self.report.add("placement", expected, f"{where}: {nodes}; total ${chosen.total_per_hour:.4f}/h", Status.OK,
                        plan=chosen.summary())

    def balance(self) -> None:
        credit, chosen = self.result.credit, self.result.plan
        expected = "credit for one hour of the whole cluster"
        if chosen is None:
            self.report.add("balance", expected, "not judged: no placement to price", Status.SKIP)
        elif credit is None:
            self.report.add("balance", expected, "the account shows no credit figure", Status.WARN)
        elif credit < chosen.total_per_hour:
            self.report.add("balance", expected, f"${credit:.2f} < ${chosen.total_per_hour:.4f} for one hour: add "
                            "credit before ray up", Status.WARN)
        else:
            hours = credit / chosen.total_per_hour if chosen.total_per_hour > 0 else float("inf")
            self.report.add("balance", expected, f"${credit:.2f}: about {hours:.0f} h of this cluster", Status.OK)

    # --- rate limits -----------------------------------------------------------------------------------------------

    def rate_limits(self) -> None:
        rate_limit_row(self.report, self.wire, "rate limits")


def rate_limit_row(report: Report, wire: WireLog, check: str) -> None:
    """Every 429 met so far, with its body and headers: our pace earns none; others' share of the limit may."""
    exchanges = wire.snapshot()
    limited = [e for e in exchanges if e.status == 429]
    expected = "no 429 at our pace (documented intervals per endpoint)"
    if not limited:
        report.add(check, expected, f"no 429 in {len(exchanges)} request(s)", Status.OK, requests=len(exchanges))
        return
    bodies = list(dict.fromkeys(e.body or "(empty)" for e in limited))[:3]
    headers = sorted({k for e in limited for k in e.headers if k != "content-type"})
    retry_after = "with Retry-After" if "retry-after" in headers else "no Retry-After"
    per_endpoint: dict[str, int] = {}
    for e in limited:
        per_endpoint[f"{e.method} {e.path}"] = per_endpoint.get(f"{e.method} {e.path}", 0) + 1
    observed = (f"{len(limited)} of {len(exchanges)} request(s) answered 429 ({retry_after}; headers "
                f"{headers or 'none'}): bodies {bodies}; retried by the client")
    report.add(check, expected, observed, Status.WARN, requests=len(exchanges), rate_limited=len(limited),
               per_endpoint=per_endpoint, bodies=bodies, headers=headers)


def find_default_config(cwd: Path | None = None) -> Path | None:
    """The first ``cluster_configs/vast*.yaml`` under ``cwd`` (``vast.yaml`` before the others)."""
    folder = (cwd or Path.cwd()) / "cluster_configs"
    candidates = sorted(folder.glob("vast*.yaml"), key=lambda p: (p.name != "vast.yaml", p.name))
    return candidates[0] if candidates else None


def is_doctor_label(label: str | None) -> bool:
    return bool(label) and label.startswith(f"{LABEL_VERSION}:{DOCTOR_CLUSTER_PREFIX}")  # type: ignore[union-attr]
