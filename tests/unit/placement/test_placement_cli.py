"""``skyward-ray offers`` against a fake client: the searches it sends, the plan it prints, and why nothing fits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.placement_offers import machine

from skyward_ray.cli import main
from skyward_ray.cli import offers as offers_cli
from skyward_ray.vast.models import Offer


class FakeClient:
    """Stands in for VastClient: answers the strict search with ``strict`` and the GPU-only search with ``broad``."""

    strict: list[Offer] = []
    broad: list[Offer] = []
    instances: list[FakeClient] = []

    def __init__(self, api_key: str | None = None, base_url: str | None = None, anonymous: bool = False) -> None:
        self.anonymous = anonymous
        self.queries: list[dict[str, Any]] = []
        self.closed = False
        FakeClient.instances.append(self)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closed = True

    def search_offers(self, query: dict[str, Any]) -> list[Offer]:
        self.queries.append(query)
        rows = self.strict if "reliability2" in query else self.broad
        is_bid = query["type"] == "bid"
        return [row.model_copy(update={"is_bid": is_bid}) for row in rows]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    market = machine(1, 4, cluster_id=17, per_gpu=0.30, bid_per_gpu=0.10) + machine(
        2, 2, cluster_id=17, per_gpu=0.40, bid_per_gpu=0.12
    ) + machine(3, 4, cluster_id=18, per_gpu=0.50, bid_per_gpu=0.20)
    FakeClient.strict, FakeClient.broad, FakeClient.instances = market, market, []
    monkeypatch.setattr(offers_cli, "VastClient", FakeClient)
    return FakeClient


def test_prints_the_plan_cluster_nodes_total_and_runners_up(fake: type[FakeClient],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["offers", "--gpu", "rtx_4090", "--nodes", "4", "--allocation", "spot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 x RTX 4090 (1 GPU each, spot) on physical cluster 17 (US): $0.4800/h in total")
    assert out.count(" 101 ") == 4 and "bid" in out
    assert "runners-up:\n  cluster 18 (US): $0.9600/h on 1 machine" in out
    assert "image: nvcr.io/nvidia/cuda:12.8.1-runtime-ubuntu22.04 (derived)" in out
    (client,) = fake.instances
    assert client.closed
    (query,) = client.queries
    assert query["gpu_name"] == {"eq": "RTX 4090"} and query["type"] == "bid"
    assert query["cluster_id"] == {"neq": None}


def test_options_reach_the_query(fake: type[FakeClient]) -> None:
    argv = ["offers", "--gpu", "H100", "--count-per-node", "8", "--nodes", "2", "--geolocation", "EU",
            "--min-reliability", "0.98", "--allocation", "on_demand", "--disk-gb", "300", "--min-cuda", "12.4",
            "--min-inet-down", "1000", "--datacenter-only", "--no-verified-only", "--exclude-machine", "5",
            "--limit", "200"]
    assert main(argv) == 2  # the fake market has no H100; what matters here is the query
    query = fake.instances[0].queries[0]
    assert query["gpu_name"] == {"in": ["H100 SXM", "H100 PCIE", "H100 NVL"]}
    assert query["num_gpus"] == {"gte": 8} and query["reliability2"] == {"gte": 0.98}
    assert "DE" in query["geolocation"]["in"] and "US" not in query["geolocation"]["in"]
    assert query["datacenter"] == {"eq": True} and "verified" not in query
    assert query["disk_space"] == {"gte": 300} and query["cuda_max_good"] == {"gte": 12.4}
    assert query["inet_down"] == {"gte": 1000.0} and query["machine_id"] == {"notin": [5]}
    assert query["type"] == "on-demand" and query["limit"] == 200


def test_json_output(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["offers", "--gpu", "RTX 4090", "--nodes", "2", "--allocation", "on-demand", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"]["cluster_id"] == 17 and data["plan"]["total_per_hour"] == 0.6
    assert [node["offer_id"] for node in data["plan"]["nodes"]] == [101, 101]
    assert data["offers_searched"] == len(fake.strict)


def test_spot_if_available_searches_both_types(fake: type[FakeClient]) -> None:
    assert main(["offers", "--gpu", "RTX 4090", "--json"]) == 0
    assert [q["type"] for q in fake.instances[0].queries] == ["on-demand", "bid"]


def test_nothing_fits_searches_broadly_and_says_what_would_help(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.strict = []  # the strict search (reliability >= 0.99) finds nothing ...
    fake.broad = machine(1, 4, cluster_id=17, reliability2=0.97)  # ... the GPU-only one shows why
    assert main(["offers", "--gpu", "RTX 4090", "--nodes", "2", "--min-reliability", "0.99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, "one line, no traceback"
    assert "none has reliability >= 0.99 (the best is 0.97)" in err
    assert "Would help: --min-reliability 0.97." in err
    assert [("reliability2" in q) for q in fake.instances[0].queries] == [True, True, False, False]


def test_nothing_fits_as_json(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["offers", "--gpu", "RTX 4090", "--nodes", "9", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["stage"] == "capacity" and "room for 9 nodes" in error["reason"]
    assert "--nodes 6" in error["suggestions"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--min-reliability", "2"], "--min-reliability: 2.0 is not allowed"),
        (["--geolocation", "Atlantis"], "--geolocation: 'Atlantis' is not allowed"),
        (["--allocation", "cheap"], "--allocation: 'cheap' is not allowed (allowed: on-demand, spot"),
        (["--nodes", "0"], "--nodes: 0 is not allowed"),
        (["--count-per-node", "0"], "--count-per-node: 0 is not allowed"),
        (["--nodes", "2", "--no-overlay"], "--no-overlay: is not allowed with --nodes 2: on Vast, instances on "
         "different machines sit behind NAT"),
    ],
)
def test_bad_flags_are_one_line_config_errors(fake: type[FakeClient], capsys: pytest.CaptureFixture[str],
                                              argv: list[str], message: str) -> None:
    assert main(["offers", "--gpu", "RTX 4090", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert err.count("is not allowed") == 1, "the message does not repeat itself"
    if not argv[1].replace(".", "").isdigit():
        assert err.lower().count(argv[1].lower()) == 1, "the value is named once"
    assert fake.instances == []  # nothing searched with bad input


def test_an_unknown_gpu_name_suggests_the_table_name_as_a_flag(fake: type[FakeClient],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake.strict, fake.broad = [], []  # Vast has no GPU called "4090"
    assert main(["offers", "--gpu", "4090", "--nodes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'4090' is not in the GPU table" in err
    assert "Would help: --gpu 'RTX 4090' (the closest name in the GPU table)" in err
    assert "skyward-ray offers" not in err, "no suggestion points at the command just run"
    assert "gpu:" not in err.lower().split("would help")[1] and "accelerator:" not in err


def test_suggestions_name_flags_not_yaml_keys(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    fake.strict = []
    fake.broad = machine(1, 4, cluster_id=17, reliability2=0.97, inet_down=500) + machine(2, 2, cluster_id=18)
    argv = ["offers", "--gpu", "RTX 4090", "--nodes", "16", "--min-reliability", "0.99", "--min-inet-down", "800",
            "--no-verified-only", "--json"]
    assert main(argv) == 2
    suggestions = json.loads(capsys.readouterr().out)["error"]["suggestions"]
    assert suggestions and all(s.startswith("--") or s.startswith("fewer --nodes") for s in suggestions), suggestions
    assert not any(": " in s.split(" (")[0] for s in suggestions), suggestions
