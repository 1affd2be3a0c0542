"""One odd row never fails a list: the documented shape variants parse, a broken row keeps what it can (its id and
label at least, so a rental of ours is never forgotten), offers that do not parse are dropped with a count, every
problem is logged once by field name and type (never a value), and an account without SSH keys is an empty list."""

from __future__ import annotations

import logging

import pytest
from support.fake_vast_http import (
    API_KEY,
    FakeVastHttp,
    instance,
    json_response,
    make_client,
    offer,
    text_response,
    v1_page,
)

from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import NotFoundError
from skyward_ray.vast.models import Instance, NodeState, tolerant_instance

LIST = "/api/v1/instances/"
SECRET = "s3cr3t-value-that-must-not-be-logged"
OURS = "skyray:v1:demo:worker"


@pytest.fixture
def client(fake: FakeVastHttp) -> VastClient:
    return make_client(fake)


# --- documented variants parse whole ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ports", [[8080, 8081], [], None])
def test_ports_as_a_list_or_null_is_no_mapping(ports: object) -> None:
    parsed, problems = tolerant_instance(instance(ports=ports))
    assert problems == () and parsed is not None
    assert parsed.ports is None and parsed.host_port(22) is None
    assert parsed.ssh_endpoint == ("ssh5.vast.ai", 31338)  # the proxy still works


@pytest.mark.parametrize(
    ("extra_env", "expected"),
    [
        (["DOG=CAT", "-p 70001:70001", "-e A=b=c", "LONELY", " "], {"DOG": "CAT", "-p 70001:70001": "1", "A": "b=c",
                                                                    "LONELY": ""}),
        ([["DOG", "CAT"], ["-p 70001:70001", "1"]], {"DOG": "CAT", "-p 70001:70001": "1"}),
        ({"DOG": "CAT", "-n ovl": 1}, {"DOG": "CAT", "-n ovl": "1"}),
        (["-n skyray-demo"], {"-n skyray-demo": "1"}),
        ([], {}),
    ],
)  # fmt: skip
def test_extra_env_as_strings_pairs_or_a_dict(extra_env: object, expected: dict[str, str]) -> None:
    parsed, problems = tolerant_instance(instance(extra_env=extra_env))
    assert problems == () and parsed is not None and parsed.extra_env == expected


def test_the_overlay_is_found_in_the_string_form_of_extra_env() -> None:
    parsed, _ = tolerant_instance(instance(extra_env=["-n skyray-demo", "RAY=1"]))
    assert parsed is not None and parsed.overlay_name == "skyray-demo"


def test_a_row_with_only_an_id_parses() -> None:
    parsed, problems = tolerant_instance({"id": 7})
    assert problems == () and parsed is not None and parsed.id == 7 and parsed.state is NodeState.PENDING


# --- broken rows keep what they can -----------------------------------------------------------------------------------


def test_a_field_of_the_wrong_type_is_left_out_and_the_rest_kept() -> None:
    parsed, problems = tolerant_instance(instance(num_gpus="two", ports={"22/tcp": "nope"}, label=OURS))
    assert parsed is not None
    assert problems == ("num_gpus (str)", "ports (dict)") and parsed.unparsed_fields == problems
    assert parsed.label == OURS and parsed.actual_status == "running" and parsed.num_gpus is None
    assert parsed.ssh_proxy == ("ssh5.vast.ai", 31338)
    assert "unparsed_fields" not in parsed.model_dump()


def test_a_row_beyond_repair_keeps_its_id_and_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when leaving the failed fields out is not enough, the id and label survive."""
    real = Instance.model_validate
    calls = {"n": 0}

    def failing_twice(data: object, *args: object, **kwargs: object) -> Instance:
        calls["n"] += 1
        if calls["n"] <= 2:
            return real({"id": 1, "num_gpus": "x"})  # a ValidationError for the row and again for what is left
        return real(data, *args, **kwargs)

    monkeypatch.setattr(Instance, "model_validate", failing_twice)
    parsed, problems = tolerant_instance(instance(label=OURS, extra_env={"K": SECRET}))
    assert parsed is not None and parsed.id == 31337 and parsed.label == OURS
    assert parsed.actual_status is None and parsed.extra_env is None
    assert problems == ("num_gpus (int)",) and calls["n"] == 3


@pytest.mark.parametrize("row", [{"label": OURS}, {"id": "abc", "label": OURS}, ["not", "a", "row"], None])
def test_a_row_without_a_usable_id_is_dropped(row: object) -> None:
    parsed, problems = tolerant_instance(row)
    assert parsed is None and problems


def test_one_broken_row_never_fails_the_list_and_is_logged_once_without_values(
    fake: FakeVastHttp, client: VastClient, caplog: pytest.LogCaptureFixture
) -> None:
    broken = instance(id=2, label=OURS, extra_env=5, start_date=SECRET, ports={"22/tcp": [{"HostPort": SECRET}]})
    nameless = {"id": None, "label": OURS, "extra_env": [[SECRET, SECRET]]}
    rows = [instance(id=1), broken, nameless, instance(id=3, ports=[22], extra_env=["A=B"])]
    fake.on("GET", LIST, json_response(200, v1_page(rows, None)))
    with caplog.at_level(logging.DEBUG, logger="skyward_ray.vast.client"):
        first = client.list_instances()
        second = client.list_instances()
    assert [i.id for i in first] == [1, 2, 3] == [i.id for i in second]
    kept = first[1]
    assert kept.label == OURS and kept.unparsed_fields == ("extra_env (int)", "ports (dict)", "start_date (str)")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the kept row and the dropped one, each once although the list was read twice
    assert any("instance 2 kept without" in w and "extra_env (int), ports (dict), start_date (str)" in w
               for w in warnings)  # fmt: skip
    assert any("dropped an instance row" in w and "id (NoneType)" in w for w in warnings)
    assert SECRET not in caplog.text and API_KEY not in caplog.text


def test_get_instance_and_the_v0_list_are_tolerant_too(fake: FakeVastHttp, client: VastClient) -> None:
    fake.on("GET", "/api/v0/instances/31337/", json_response(200, {"instances": instance(num_gpus=[1], label=OURS)}))
    fake.on("GET", "/api/v0/instances/", json_response(200, {"instances": [instance(id=1), instance(id=2, ports=7)]}))
    got = client.get_instance(31337)
    assert got is not None and got.label == OURS and got.unparsed_fields == ("num_gpus (list)",)
    assert [i.id for i in client.list_instances_v0()] == [1, 2]


def test_offers_that_do_not_parse_are_dropped_with_a_count(
    fake: FakeVastHttp, client: VastClient, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [offer(id=1), offer(id=2, num_gpus="many"), offer(id=3, dph_total=None), offer(id=4), "garbage"]
    fake.on("POST", "/api/v0/bundles/", json_response(200, {"offers": rows}))
    with caplog.at_level(logging.WARNING, logger="skyward_ray.vast.client"):
        offers = client.search_offers({})
    assert [o.id for o in offers] == [1, 4]
    assert "dropped 3 of 5 offers that did not parse" in caplog.text
    assert "dph_total (NoneType)" in caplog.text and "num_gpus (str)" in caplog.text and "row (str)" in caplog.text


# --- an account without SSH keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        text_response(404, "No SSH keys found for the user"),
        json_response(404, {"success": False, "error": "not_found", "msg": "No SSH keys found for the user"}),
        json_response(404, {"detail": "No SSH keys found for the user"}),
    ],
)
def test_no_ssh_keys_is_an_empty_list(fake: FakeVastHttp, client: VastClient, answer: object) -> None:
    fake.on("GET", "/api/v0/ssh/", answer)
    assert client.list_ssh_keys() == []


def test_a_web_page_404_for_ssh_keys_is_still_an_error(fake: FakeVastHttp, client: VastClient) -> None:
    """A 404 page from the wrong server must not read as "no keys" (ray up would then register one there)."""
    page = text_response(404, "<!DOCTYPE html><html><body>Not Found</body></html>", **{"Content-Type": "text/html"})
    fake.on("GET", "/api/v0/ssh/", page)
    with pytest.raises(NotFoundError):
        client.list_ssh_keys()


def test_the_fields_set_of_a_kept_row_is_what_the_wire_sent() -> None:
    """A caller tells the minimal form (id and label only) from a whole row by ``model_fields_set``."""
    parsed, _ = tolerant_instance(instance(num_gpus="two"))
    assert parsed is not None and parsed.unparsed_fields == ("num_gpus (str)",)
    assert "unparsed_fields" not in parsed.model_fields_set and "label" in parsed.model_fields_set
