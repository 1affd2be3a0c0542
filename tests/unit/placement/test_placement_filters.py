"""The Vast query each option produces, and the local re-check of every returned offer against the same filters."""

from __future__ import annotations

from typing import Any

import pytest
from support.placement_offers import offer

from skyward_ray.placement import NodeGroup, OfferFilter, PlacementOptions, PlacementRequest, Scope, build_queries
from skyward_ray.placement.filters import cuda_floor, recheck


def _query(options: PlacementOptions | None = None, **group: Any) -> dict[str, Any]:
    group = {"accelerator": "RTX 4090", "allocation": "on-demand", **group}
    return OfferFilter(NodeGroup(**group), options or PlacementOptions()).query()


def test_default_query_is_exactly_what_vast_expects() -> None:
    assert _query() == {
        "gpu_name": {"eq": "RTX 4090"},
        "num_gpus": {"gte": 1},
        "reliability2": {"gte": 0.95},
        "verified": {"eq": True},
        "cuda_max_good": {"gte": 12.0},
        "disk_space": {"gte": 100},
        "allocated_storage": 100.0,
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "direct_port_count": {"gte": 1},
        "type": "on-demand",
        "order": [["dph_total", "asc"]],
        "limit": 1000,
    }


@pytest.mark.parametrize(
    ("options", "key", "expected"),
    [
        ({"min_reliability": 0.98}, "reliability2", {"gte": 0.98}),
        ({"geolocation": "US"}, "geolocation", {"in": ["US"]}),
        ({"geolocation": "NA"}, "geolocation", {"in": ["CA", "MX", "US"]}),
        ({"disk_gb": 250}, "disk_space", {"gte": 250}),
        ({"disk_gb": 250}, "allocated_storage", 250.0),
        ({"datacenter_only": True}, "datacenter", {"eq": True}),
        ({"min_cuda": 12.4}, "cuda_max_good", {"gte": 12.4}),
        ({"min_inet_down": 500}, "inet_down", {"gte": 500.0}),
        ({"excluded_machines": [9, 3]}, "machine_id", {"notin": [3, 9]}),
        ({"docker_image": "nvcr.io/nvidia/cuda:12.6.3-runtime-ubuntu22.04"}, "cuda_max_good", {"gte": 12.6}),
    ],
)
def test_each_option_becomes_its_filter(options: dict[str, Any], key: str, expected: Any) -> None:
    assert _query(PlacementOptions(**options))[key] == expected


@pytest.mark.parametrize(
    ("options", "absent"),
    [
        ({"verified_only": False}, "verified"),
        ({}, "datacenter"),
        ({}, "geolocation"),
        ({}, "inet_down"),
        ({}, "machine_id"),
        ({}, "cluster_id"),
        ({"min_cuda": None, "docker_image": "nvcr.io/nvidia/pytorch:24.01-py3"}, "cuda_max_good"),
    ],
)
def test_filters_not_asked_for_are_not_sent(options: dict[str, Any], absent: str) -> None:
    assert absent not in _query(PlacementOptions(**options))


def test_gpu_family_and_count() -> None:
    assert _query(accelerator="H100", gpus_per_node=8)["gpu_name"] == {"in": ["H100 SXM", "H100 PCIE", "H100 NVL"]}
    assert _query(accelerator="H100", gpus_per_node=8)["num_gpus"] == {"gte": 8}
    assert _query(include_variants=True)["gpu_name"] == {"in": ["RTX 4090", "RTX 4090D"]}


def test_accelerator_cuda_floor_applies_when_higher_than_min_cuda() -> None:
    assert _query(accelerator="RTX 5090")["cuda_max_good"] == {"gte": 12.8}
    floor = cuda_floor(PlacementOptions(), NodeGroup(accelerator="RTX 5090").gpu)
    assert floor is not None and floor.source == "accelerator_cuda"
    assert cuda_floor(PlacementOptions(min_cuda=None), NodeGroup(accelerator="Foo GPU").gpu) is None


@pytest.mark.parametrize(
    ("allocation", "kinds"),
    [("on-demand", ["on-demand"]), ("spot", ["bid"]), ("spot-if-available", ["on-demand", "bid"])],
)
def test_each_allocation_searches_its_type(allocation: str, kinds: list[str]) -> None:
    offer_filter = OfferFilter(NodeGroup(accelerator="RTX 4090", allocation=allocation), PlacementOptions())
    queries = offer_filter.queries()
    assert [q["type"] for q in queries] == kinds
    assert [q["order"] for q in queries] == [[["min_bid" if k == "bid" else "dph_total", "asc"]] for k in kinds]


def test_cluster_scope_in_the_query() -> None:
    options = PlacementOptions()
    many = PlacementRequest.single("RTX 4090", nodes=4, allocation="spot")
    (query,) = build_queries(many, options)
    assert query["cluster_id"] == {"neq": None} and query["rented"] == {"eq": False}
    pinned = PlacementRequest.single("RTX 4090", nodes=2, allocation="spot", cluster_id=17,
                                     excluded_machines=frozenset({5}))
    (query,) = build_queries(pinned, options.model_copy(update={"excluded_machines": frozenset({4})}))
    assert query["cluster_id"] == {"eq": 17}
    assert "rented" not in query  # the head's own machine must stay visible to its workers
    assert query["machine_id"] == {"notin": [4, 5]}
    (query,) = build_queries(many, PlacementOptions(use_overlay=False))
    assert "cluster_id" not in query


def test_groups_with_the_same_filters_share_a_search() -> None:
    request = PlacementRequest(groups=(
        NodeGroup(name="head", accelerator="RTX 4090", allocation="spot"),
        NodeGroup(name="worker", accelerator="RTX 4090", count=3, allocation="spot"),
        NodeGroup(name="big", accelerator="H100", gpus_per_node=8, allocation="on-demand"),
    ))
    queries = build_queries(request, PlacementOptions(), limit=50)
    assert len(queries) == 2 and all(q["limit"] == 50 for q in queries)
    assert [q["type"] for q in queries] == ["on-demand", "bid"]  # the rows with both prices come first
    broad = build_queries(request, PlacementOptions(), broad=True)
    assert all(set(q) == {"gpu_name", "rentable", "type", "order", "limit"} for q in broad)


# -- recheck: each filter, locally -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "passes", "fails", "option"),
    [
        ({}, {}, {"gpu_name": "RTX 4090D"}, "accelerator"),
        ({}, {"gpu_name": "RTX_4090"}, {"gpu_name": "RTX 3090"}, "accelerator"),
        ({}, {}, {"num_gpus": 0}, "gpus_per_node"),
        ({}, {"rentable": None}, {"rentable": False}, "rentable"),
        ({}, {}, {"rented": True}, "rentable"),
        ({"excluded_machines": [2]}, {}, {}, "excluded_machines"),  # the failing offer is on machine 2
        ({"min_reliability": 0.98}, {"reliability2": 0.98}, {"reliability2": 0.979}, "min_reliability"),
        ({}, {"reliability2": None, "reliability": 0.96}, {"reliability2": None, "reliability": 0.5},
         "min_reliability"),
        ({"geolocation": "EU"}, {"geolocation": "Hesse, DE"}, {"geolocation": "Texas, US"}, "geolocation"),
        ({"geolocation": "US"}, {}, {"geolocation": None}, "geolocation"),
        ({}, {"vericode": 1, "verification": None}, {"vericode": 0}, "verified_only"),
        ({}, {}, {"verification": "deverified"}, "verified_only"),
        ({"verified_only": False}, {"verification": "unverified"}, {"num_gpus": 0}, "gpus_per_node"),
        ({"datacenter_only": True}, {"hosting_type": 1}, {"hosting_type": 0}, "datacenter_only"),
        ({"min_cuda": 12.4}, {"cuda_max_good": 12.4}, {"cuda_max_good": 12.2}, "min_cuda"),
        ({}, {}, {"cuda_max_good": None}, "min_cuda"),
        ({"docker_image": "nvcr.io/nvidia/cuda:12.6.3-runtime-ubuntu22.04", "min_cuda": None},
         {"cuda_max_good": 12.6}, {"cuda_max_good": 12.5}, "docker_image"),
        ({"min_inet_down": 500}, {"inet_down": 500}, {"inet_down": 499}, "min_inet_down"),
        ({"disk_gb": 200}, {"disk_space": 200}, {"disk_space": 199.9}, "disk_gb"),
        ({}, {}, {"direct_port_count": 0}, "direct_port"),
        ({}, {}, {"direct_port_count": None}, "direct_port"),
    ],
)
def test_recheck_drops_an_offer_failing_each_filter(
    options: dict[str, Any], passes: dict[str, Any], fails: dict[str, Any], option: str
) -> None:
    offer_filter = OfferFilter(NodeGroup(accelerator="RTX 4090"), PlacementOptions(**options))
    good = offer(1, 1, **passes)
    bad = offer(2, 2, **{**passes, **fails})
    assert offer_filter.recheck(good)
    assert not offer_filter.recheck(bad)
    failed = offer_filter.failed_check(bad)
    assert failed is not None and failed.option == option


def test_recheck_accepts_spelling_variants_of_the_same_gpu() -> None:
    offer_filter = OfferFilter(NodeGroup(accelerator="H100"), PlacementOptions())
    assert offer_filter.recheck(offer(1, 1, gpu_name="H100_SXM"))
    assert offer_filter.recheck(offer(2, 2, gpu_name="h100 pcie"))
    assert not offer_filter.recheck(offer(3, 3, gpu_name="H200"))


def test_recheck_counts_and_cluster_scope() -> None:
    group = NodeGroup(accelerator="RTX 4090", gpus_per_node=2)
    assert recheck([offer(1, 1, num_gpus=4), offer(2, 2, num_gpus=1)], group, PlacementOptions()) == [
        offer(1, 1, num_gpus=4)
    ]
    in_cluster, loose = offer(1, 1, cluster_id=5), offer(2, 2, cluster_id=None)
    one = OfferFilter(NodeGroup(accelerator="RTX 4090"), PlacementOptions(), scope=Scope.ONE_CLUSTER)
    assert one.recheck(in_cluster) and not one.recheck(loose)
    assert one.failed_check(loose).option == "physical_cluster"  # type: ignore[union-attr]
    pinned = OfferFilter(NodeGroup(accelerator="RTX 4090"), PlacementOptions(), scope=Scope.PINNED, cluster_id=5)
    assert pinned.recheck(in_cluster) and not pinned.recheck(offer(3, 3, cluster_id=6))
    assert pinned.recheck(offer(4, 4, cluster_id=5, rented=True))  # we may already rent on the head's machine
    with pytest.raises(ValueError, match="pinned"):
        OfferFilter(NodeGroup(accelerator="RTX 4090"), PlacementOptions(), scope=Scope.PINNED)


def test_compiled_check_agrees_with_the_check_list() -> None:
    options = PlacementOptions(geolocation="US", min_inet_down=100, datacenter_only=True, excluded_machines=[7])
    offer_filter = OfferFilter(NodeGroup(accelerator="RTX 4090"), options, scope=Scope.ONE_CLUSTER)
    variants = [
        offer(1, 1, cluster_id=1), offer(2, 2), offer(3, 7, cluster_id=1), offer(4, 4, cluster_id=1, hosting_type=0),
        offer(5, 5, cluster_id=1, geolocation="Hesse, DE"), offer(6, 6, cluster_id=1, inet_down=10),
        offer(8, 8, cluster_id=1, gpu_name="L4"),
    ]
    for candidate in variants:
        assert offer_filter.recheck(candidate) == (offer_filter.failed_check(candidate) is None)
