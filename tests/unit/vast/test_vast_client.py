"""What the client sends (paths, bodies, query encoding, headers) and what it makes of the answers."""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from support.fake_vast_http import (
    API_KEY,
    BASE_URL,
    ENVELOPE_NO_SUCH_INSTANCE,
    INSTANCE,
    OFFER,
    OVERLAYS,
    PUBLIC_KEY,
    SSH_KEYS,
    USER,
    FakeVastHttp,
    RecordingClock,
    instance,
    json_response,
    make_client,
    offer,
    text_response,
    v1_page,
)

import skyward_ray.vast as vast_pkg
from skyward_ray.errors import ConfigError
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.endpoints import CREATE_INSTANCE, ENDPOINTS, GET_INSTANCE, RetryPolicy
from skyward_ray.vast.errors import NotFoundError, ProtocolError
from skyward_ray.vast.models import NodeState

OK = {"success": True}


@pytest.fixture
def client(fake: FakeVastHttp) -> VastClient:
    with make_client(fake) as vast:
        yield vast


# --- headers and bodies ----------------------------------------------------------------------------------------------


def test_every_request_carries_bearer_user_agent_and_a_json_body_when_writing(
    fake: FakeVastHttp, client: VastClient
) -> None:
    fake.on("GET", "/api/v0/instances/31337/", json_response(200, {"instances": INSTANCE}))
    fake.on("PUT", "/api/v0/instances/31337/", json_response(200, OK))
    client.get_instance(31337)
    client.stop_instance(31337)
    get, put = fake.requests
    for request in (get, put):
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        assert request.headers["User-Agent"].startswith("skyward-ray/")
        assert "api_key" not in str(request.url)
    assert get.content == b"" and get.url.params["owner"] == "me"
    assert put.headers["Content-Type"] == "application/json"
    assert FakeVastHttp.body(put) == {"state": "stopped"}


def test_search_sends_the_query_as_the_body_without_adding_filters(fake: FakeVastHttp, client: VastClient) -> None:
    query = {
        "num_gpus": {"gte": 2},
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
        "cluster_id": {"neq": None},
        "order": [["dph_total", "asc"]],
        "type": "bid",
        "limit": 64,
    }
    fake.on("POST", "/api/v0/bundles/", json_response(200, {"offers": [OFFER, offer(id=4243, cluster_id=None)]}))
    offers = client.search_offers(query)
    assert FakeVastHttp.body(fake.requests[0]) == query
    assert [(o.id, o.cluster_id, o.num_gpus) for o in offers] == [(4242, 5, 2), (4243, None, 2)]


def test_search_drops_a_broken_offer_but_not_all(
    fake: FakeVastHttp, client: VastClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.on(
        "POST",
        "/api/v0/bundles/",
        json_response(200, {"offers": [OFFER, {"id": 1, "gpu_name": "X"}]}),
        json_response(200, {"offers": [{"id": 1}, {"id": 2}]}),
    )
    with caplog.at_level("WARNING"):
        assert [o.id for o in client.search_offers({})] == [4242]
    assert "dropped 1 of 2 offers" in caplog.text
    with pytest.raises(ProtocolError, match="unexpected Offer"):
        client.search_offers({})


def test_search_of_nothing_is_an_empty_list(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("POST", "/api/v0/bundles/", json_response(200, {"offers": []}))
    assert client.search_offers({}) == []
    assert FakeVastHttp.body(fake.requests[0]) == {}


def test_create_instance_sends_what_the_cli_sends(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on(
        "PUT",
        "/api/v0/asks/4242/",
        json_response(200, {"success": True, "new_contract": 31337, "instance_api_key": "ik-123"}),
    )
    created = client.create_instance(
        4242,
        image="rayproject/ray:2.60.0-py311-gpu",
        disk_gb=40,
        label="skyray:v1:demo:worker",
        env={"-n skyray-demo": "1", "-p 8265:8265": "1", "RAY_USAGE_STATS_ENABLED": 0},
        onstart="touch ~/.no_auto_tmux",
        price=0.45,
    )
    assert created.new_contract == 31337 and created.instance_api_key == "ik-123"
    assert FakeVastHttp.body(fake.requests[0]) == {
        "client_id": "me",
        "image": "rayproject/ray:2.60.0-py311-gpu",
        "env": {"-n skyray-demo": "1", "-p 8265:8265": "1", "RAY_USAGE_STATS_ENABLED": "0"},
        "price": 0.45,
        "disk": 40,
        "label": "skyray:v1:demo:worker",
        "extra": None,
        "onstart": "touch ~/.no_auto_tmux",
        "image_login": None,
        "python_utf8": False,
        "lang_utf8": False,
        "use_jupyter_lab": False,
        "jupyter_dir": None,
        "force": False,
        "cancel_unavail": False,
        "template_hash_id": None,
        "user": None,
        "runtype": "ssh_direc ssh_proxy",
    }


def test_create_on_demand_sends_a_null_price_and_extra_overrides(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("PUT", "/api/v0/asks/4242/", json_response(200, {"success": True, "new_contract": "31337"}))
    client.create_instance(
        4242, image="img", disk_gb=10, label="l", runtype="args", args=["-c", "sleep 1"],
        extra={"user": "root", "target_state": "running"},
    )  # fmt: skip
    body = FakeVastHttp.body(fake.requests[0])
    assert body["price"] is None and body["env"] == {}
    assert body["runtype"] == "args" and body["args"] == ["-c", "sleep 1"]
    assert body["user"] == "root" and body["target_state"] == "running"


def test_create_without_new_contract_is_a_protocol_error(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("PUT", "/api/v0/asks/4242/", json_response(200, {"success": True}))
    with pytest.raises(ProtocolError, match="new_contract"):
        client.create_instance(4242, image="img", disk_gb=10, label="l")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"offer_id": True}, "offer_id"),
        ({"offer_id": 0}, "offer_id"),
        ({"image": " "}, "image"),
        ({"disk_gb": 0}, "disk_gb"),
        ({"label": ""}, "label"),
        ({"label": "x" * 257}, "label"),  # a rental's label: 256 at most (a relabel allows 1024)
        ({"price": 0}, "price"),
        ({"price": -1.0}, "price"),
        ({"runtype": "ssh_directo"}, "runtype"),
        ({"runtype": ""}, "runtype"),
        ({"onstart": "x" * 4049}, "onstart"),
        ({"env": {"A": ["list"]}}, "env"),
        ({"env": "-e A=1"}, "env"),
        ({"args": "not a list"}, "args"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(
    fake: FakeVastHttp, client: VastClient, kwargs: dict[str, object], field: str
) -> None:
    call: dict[str, object] = {"offer_id": 4242, "image": "img", "disk_gb": 10, "label": "l", **kwargs}
    offer_id = call.pop("offer_id")
    with pytest.raises(ConfigError, match=rf"^{field}\b.*not allowed"):
        client.create_instance(offer_id, **call)  # type: ignore[arg-type]
    assert fake.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"env": {"VAST_API_KEY": API_KEY}},
        {"env": {f"-e K={API_KEY}": "1"}},
        {"onstart": f"echo {API_KEY} > ~/.vast_api_key"},
        {"label": f"key={API_KEY}"},
        {"extra": {"volume_info": {"name": API_KEY}}},
        {"args": ["--key", API_KEY]},
    ],
)
def test_create_never_sends_the_account_key_to_an_instance(
    fake: FakeVastHttp, client: VastClient, kwargs: dict[str, object]
) -> None:
    call: dict[str, object] = {"image": "img", "disk_gb": 10, "label": "l", **kwargs}
    with pytest.raises(ConfigError, match="contains the account API key") as caught:
        client.create_instance(4242, **call)  # type: ignore[arg-type]
    assert API_KEY not in str(caught.value)
    assert fake.requests == []


# --- reading instances -----------------------------------------------------------------------------------------------


def test_get_instance_parses_the_plural_key(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/instances/31337/", json_response(200, {"instances": INSTANCE}))
    got = client.get_instance(31337)
    assert got is not None and got.id == 31337 and got.state is NodeState.RUNNING
    assert got.ssh_endpoint == ("203.0.113.7", 41022)


def test_get_instance_null_or_vast_404_means_gone(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/instances/1/", json_response(200, {"instances": None}))
    fake.on("GET", "/api/v0/instances/2/", json_response(404, ENVELOPE_NO_SUCH_INSTANCE))
    assert client.get_instance(1) is None
    assert client.get_instance(2) is None


def test_get_instance_foreign_404_is_not_taken_for_gone(fake: FakeVastHttp, client: VastClient) -> None:
    """An HTML 404 means a wrong base URL, not a destroyed node: reporting it gone would orphan a rental."""
    fake.on("GET", "/api/v0/instances/3/", text_response(404, "<html>Not Found</html>"))
    with pytest.raises(NotFoundError):
        client.get_instance(3)


def test_get_instance_without_the_key_is_a_protocol_error(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/instances/4/", json_response(200, {"instance": INSTANCE}))
    with pytest.raises(ProtocolError, match="'instances'"):
        client.get_instance(4)


def test_list_instances_follows_next_token_and_encodes_the_query_like_the_cli(
    fake: FakeVastHttp, client: VastClient
) -> None:
    from vastai.api.client import VastClient as OfficialClient

    pages = [
        v1_page([instance(id=1), instance(id=2)], "dG9rZW4tMQ==", total=5),
        v1_page([instance(id=3), instance(id=4, extra_env=[["-n x", "1"]])], "dG9rZW4tMg==", total=5),
        v1_page([instance(id=5)], None, total=5),
    ]
    fake.on("GET", "/api/v1/instances/", *(json_response(200, page) for page in pages))
    filters = {"actual_status": {"in": ["running", "loading"]}, "label": {"in": ["skyray:v1:demo:head", None]}}
    rows = client.list_instances(filters, page_size=2)
    assert [row.id for row in rows] == [1, 2, 3, 4, 5]
    assert rows[3].extra_env == {"-n x": "1"}
    sent = fake.sent("GET", "/api/v1/instances/")
    assert len(sent) == 3
    params = {"select_filters": filters, "order_by": [{"col": "id", "dir": "asc"}], "limit": 2}
    official = OfficialClient(api_key=None, server_url=BASE_URL)
    assert str(sent[0].url) == official._build_url("/api/v1/instances/", params)
    assert str(sent[1].url) == official._build_url("/api/v1/instances/", {**params, "after_token": "dG9rZW4tMQ=="})
    assert parse_qs(urlsplit(str(sent[2].url)).query)["after_token"] == ["dG9rZW4tMg=="]


def test_list_instances_defaults(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v1/instances/", json_response(200, {"instances": None, "next_token": None}))
    assert client.list_instances() == []
    query = parse_qs(urlsplit(str(fake.requests[0].url)).query)
    assert query["select_filters"] == ["{}"] and query["limit"] == ["25"]


def test_list_instances_stops_on_a_repeating_token(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v1/instances/", json_response(200, v1_page([instance(id=1)], "same")))
    with pytest.raises(ProtocolError, match="next_token"):
        client.list_instances()
    assert len(fake.requests) == 2


@pytest.mark.parametrize("page_size", [0, 26, True, 2.0])
def test_list_instances_page_size_is_checked(client: VastClient, page_size: object) -> None:
    with pytest.raises(ConfigError, match="page_size"):
        client.list_instances(page_size=page_size)  # type: ignore[arg-type]


def test_list_instances_v0(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/instances/", json_response(200, {"instances": [INSTANCE, instance(id=9, label=None)]}))
    assert [i.id for i in client.list_instances_v0()] == [31337, 9]
    assert fake.requests[0].url.params["owner"] == "me"


# --- changing instances ----------------------------------------------------------------------------------------------


def test_destroy_sends_an_empty_json_body_and_reports_already_gone(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("DELETE", "/api/v0/instances/7/", json_response(200, {"success": True, "msg": "destroyed"}))
    fake.on("DELETE", "/api/v0/instances/8/", json_response(404, {"success": False, "error": "not_found"}))
    assert client.destroy_instance(7) is True
    assert client.destroy_instance(8) is False
    assert FakeVastHttp.body(fake.requests[0]) == {}


def test_bulk_destroy_goes_in_chunks_of_64(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("DELETE", "/api/v0/instances/", json_response(200, OK))
    ids = list(range(1, 131))
    client.destroy_instances([*ids, 5, 6])  # duplicates are sent once
    bodies = [FakeVastHttp.body(r)["instance_ids"] for r in fake.requests]
    assert [len(b) for b in bodies] == [64, 64, 2]
    assert [i for body in bodies for i in body] == ids
    client.destroy_instances([])
    assert len(fake.requests) == 3


def test_label_bid_stop_start_bodies(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("PUT", "/api/v0/instances/5/", json_response(200, {"success": True, "msg": "label for 5 set to x"}))
    fake.on("PUT", "/api/v0/instances/bid_price/5/", json_response(200, OK))
    assert client.set_label(5, "skyray:v1:demo:worker").msg == "label for 5 set to x"
    client.change_bid(5, 0.52)
    client.stop_instance(5)
    client.start_instance(5)
    assert [(r.method, r.url.path, FakeVastHttp.body(r)) for r in fake.requests] == [
        ("PUT", "/api/v0/instances/5/", {"label": "skyray:v1:demo:worker"}),
        ("PUT", "/api/v0/instances/bid_price/5/", {"client_id": "me", "price": 0.52}),
        ("PUT", "/api/v0/instances/5/", {"state": "stopped"}),
        ("PUT", "/api/v0/instances/5/", {"state": "running"}),
    ]


def test_label_is_checked(client: VastClient) -> None:
    with pytest.raises(ConfigError, match="label"):
        client.set_label(5, "x" * 1025)
    with pytest.raises(ConfigError, match="API key"):
        client.set_label(5, API_KEY)
    with pytest.raises(ConfigError, match="price"):
        client.change_bid(5, 0)


# --- overlays --------------------------------------------------------------------------------------------------------


def test_overlay_calls(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/overlay/", json_response(200, OVERLAYS))
    fake.on("POST", "/api/v0/overlay/", json_response(200, {"success": True, "msg": "Overlay created"}))
    fake.on("PUT", "/api/v0/overlay/", json_response(200, {"msg": "Instance joined"}))
    fake.on(
        "DELETE",
        "/api/v0/overlay/",
        json_response(200, {"msg": "deleted"}),
        json_response(200, {"msg": "deleted"}),
        json_response(404, {"success": False, "error": "not_found", "msg": "no such overlay"}),
    )
    overlays = client.list_overlays()
    assert [(o.overlay_id, o.internal_subnet) for o in overlays] == [(11, "10.0.0.0/24"), (12, "10.0.1.0/24")]
    assert client.create_overlay(5, "skyray-demo").msg == "Overlay created"
    assert client.join_overlay("skyray-demo", 31337).msg == "Instance joined"
    assert client.delete_overlay(overlay_id=11) is True
    assert client.delete_overlay(name="skyray-demo") is True
    assert client.delete_overlay(name="skyray-demo") is False
    assert [FakeVastHttp.body(r) for r in fake.requests[1:]] == [
        {"cluster_id": 5, "name": "skyray-demo"},
        {"name": "skyray-demo", "instance_id": 31337},
        {"overlay_id": 11},
        {"overlay_name": "skyray-demo"},
        {"overlay_name": "skyray-demo"},
    ]


def test_overlay_input_is_checked(fake: FakeVastHttp, client: VastClient) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        client.delete_overlay()
    with pytest.raises(ConfigError, match="exactly one"):
        client.delete_overlay(overlay_id=1, name="x")
    with pytest.raises(ConfigError, match="overlay name 'Bad_Name'"):
        client.create_overlay(5, "Bad_Name")
    with pytest.raises(ConfigError, match="cluster_id"):
        client.create_overlay(None, "ok")  # type: ignore[arg-type]
    assert fake.requests == []


def test_overlay_list_wrapped_in_an_object_is_accepted(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/overlay/", json_response(200, {"overlays": OVERLAYS[:1]}))
    assert [o.name for o in client.list_overlays()] == ["skyray-demo"]


# --- account ---------------------------------------------------------------------------------------------------------


def test_user_and_ssh_keys(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/users/current/", json_response(200, USER))
    fake.on("GET", "/api/v0/ssh/", json_response(200, SSH_KEYS))
    fake.on(
        "POST",
        "/api/v0/ssh/",
        json_response(200, {"success": True, "key": {"id": 8, "user_id": 501, "public_key": PUBLIC_KEY}}),
    )
    fake.on("POST", "/api/v0/instances/31337/ssh/", json_response(200, {"success": True, "msg": "attached"}))
    fake.on(
        "GET",
        "/api/v0/instances/31337/ssh/",
        json_response(200, {"success": True, "ssh_keys": f'[{{"id": 8, "name": "k", "public_key": "{PUBLIC_KEY}"}}]'}),
    )
    user = client.current_user()
    assert user.id == 501 and user.credit == pytest.approx(25.0)
    assert [(k.id, k.public_key) for k in client.list_ssh_keys()] == [(7, PUBLIC_KEY)]
    assert client.create_ssh_key(PUBLIC_KEY + "\n").id == 8
    assert client.attach_ssh_key(31337, PUBLIC_KEY).success is True
    assert [k.id for k in client.list_instance_ssh_keys(31337)] == [8]
    assert FakeVastHttp.body(fake.sent("POST", "/api/v0/ssh/")[0]) == {"ssh_key": PUBLIC_KEY}
    assert FakeVastHttp.body(fake.sent("POST", "/api/v0/instances/31337/ssh/")[0]) == {"ssh_key": PUBLIC_KEY}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "AAAA only",
    ],
)
def test_only_public_keys_are_sent(fake: FakeVastHttp, client: VastClient, bad: str) -> None:
    with pytest.raises(ConfigError, match="public_key") as caught:
        client.create_ssh_key(bad)
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in str(caught.value)
    with pytest.raises(ConfigError, match="public_key"):
        client.attach_ssh_key(1, bad)
    assert fake.requests == []


# --- configuration, stats, lifecycle, threads ------------------------------------------------------------------------


def test_stats_count_requests_per_endpoint_template(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/instances/1/", json_response(200, {"instances": None}))
    fake.on("GET", "/api/v0/instances/2/", json_response(200, {"instances": None}))
    fake.on("POST", "/api/v0/bundles/", json_response(200, {"offers": []}))
    client.get_instance(1)
    client.get_instance(2)
    client.search_offers({})
    assert client.stats == {str(GET_INSTANCE): 2, "POST /api/v0/bundles/": 1}
    client.reset_stats()
    assert client.stats == {}


def test_client_options_are_checked() -> None:
    fake = FakeVastHttp()
    for bad in ({"timeout_s": 0}, {"retry_deadline_s": -1}, {"min_interval_s": -0.5}):
        with pytest.raises(ConfigError, match="is not allowed"):
            make_client(fake, **bad)
    with pytest.raises(ConfigError, match="min_interval_s key 'GET /nope/'"):
        make_client(fake, min_interval_s={"GET /nope/": 1.0})


def test_close_and_context_manager(fake: FakeVastHttp) -> None:
    with make_client(fake) as client:
        pass
    with pytest.raises(RuntimeError):
        client.get_instance(1)
    client.close()  # idempotent


def test_one_client_is_shared_by_threads(fake: FakeVastHttp) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        iid = int(request.url.path.rstrip("/").rsplit("/", 1)[1])
        return json_response(200, {"instances": instance(id=iid)})

    for iid in range(1, 9):
        fake.on("GET", f"/api/v0/instances/{iid}/", answer)
    client = make_client(fake, clock=RecordingClock())
    errors: list[BaseException] = []

    def worker(iid: int) -> None:
        try:
            for _ in range(25):
                got = client.get_instance(iid)
                assert got is not None and got.id == iid
        except BaseException as exc:  # collected, then asserted empty by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(iid,)) for iid in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert client.stats == {str(GET_INSTANCE): 200}
    client.close()


def test_every_creating_write_is_retried_only_when_nothing_happened() -> None:
    """The table of policies: exactly the calls that create something are ONCE."""
    once = {str(e) for e in ENDPOINTS if e.retry is RetryPolicy.ONCE}
    assert once == {str(CREATE_INSTANCE), "POST /api/v0/overlay/", "POST /api/v0/ssh/"}


def test_the_vast_layer_imports_neither_ray_nor_upper_layers() -> None:
    forbidden = ("ray", "skyward_ray.provider", "skyward_ray.sky", "skyward_ray.placement", "skyward_ray.emulator")
    package_dir = Path(vast_pkg.__file__).parent
    for source in package_dir.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{source.name}: {name}"
