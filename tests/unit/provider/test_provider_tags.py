"""The tag <-> label codec: lossless, compact, cluster-scoped, and tolerant of labels that are not ours."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ray.autoscaler.tags import (
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_FILE_MOUNTS_CONTENTS,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_RUNTIME_CONFIG,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray.provider.tags import (
    MAX_CREATE_LABEL_LENGTH,
    MAX_LABEL_LENGTH,
    TAG_OVERLAY_SUBNET,
    TAG_PHYSICAL_CLUSTER,
    TAG_RENTAL,
    LabelTooLongError,
    check_create_label_fits,
    decode_label,
    encode_label,
    is_cluster_label,
    label_prefix,
)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _full_worker_tags(cluster: str) -> dict[str, str]:
    """Every tag Ray's v2 launcher and updater put on a worker, plus ours."""
    return {
        TAG_RAY_NODE_NAME: f"ray-{cluster}-worker",
        TAG_RAY_NODE_KIND: "worker",
        TAG_RAY_NODE_STATUS: "up-to-date",
        TAG_RAY_LAUNCH_CONFIG: _sha1("launch"),
        TAG_RAY_RUNTIME_CONFIG: _sha1("runtime"),
        TAG_RAY_FILE_MOUNTS_CONTENTS: _sha1("mounts"),
        TAG_RAY_LAUNCH_REQUEST: str(uuid.UUID(int=12345678901234567890)),
        TAG_RAY_USER_NODE_TYPE: "gpu_worker",
        TAG_PHYSICAL_CLUSTER: "17",
        TAG_OVERLAY_SUBNET: "10.8.0.0/24",
        TAG_RENTAL: "3f2a9c1b",
    }


def test_round_trip_restores_every_tag_and_adds_cluster_name() -> None:
    tags = _full_worker_tags("train")
    label = encode_label("train", tags)
    cluster, decoded = decode_label(label)  # type: ignore[misc]
    assert cluster == "train"
    assert decoded == {**tags, TAG_RAY_CLUSTER_NAME: "train"}


def test_full_worker_label_is_compact() -> None:
    # Three SHA-1 hashes and a UUID dominate; compacted they fit in well under a fifth of Vast's limit.
    label = encode_label("train", _full_worker_tags("train"))
    assert len(label) < 200, label
    assert "up-to-date" not in label and _sha1("launch") not in label


def test_default_node_name_left_out_but_custom_one_kept() -> None:
    default = encode_label("c", {TAG_RAY_NODE_KIND: "head", TAG_RAY_NODE_NAME: "ray-c-head"})
    custom = encode_label("c", {TAG_RAY_NODE_KIND: "head", TAG_RAY_NODE_NAME: "my-head"})
    assert "ray-c-head" not in default
    assert decode_label(default)[1][TAG_RAY_NODE_NAME] == "ray-c-head"  # type: ignore[index]
    assert decode_label(custom)[1][TAG_RAY_NODE_NAME] == "my-head"  # type: ignore[index]


def test_encoding_is_deterministic_whatever_the_dict_order() -> None:
    tags = _full_worker_tags("c")
    reversed_tags = dict(reversed(list(tags.items())))
    assert encode_label("c", tags) == encode_label("c", reversed_tags)


@pytest.mark.parametrize("label", [None, "", "my own label", "skyr0:c;k=!w", "skyr1:no-separator", "c-head"])
def test_foreign_labels_are_not_ours(label: str | None) -> None:
    assert decode_label(label) is None
    assert not is_cluster_label(label, "c")


def test_prefix_separates_clusters_even_with_separator_characters_in_names() -> None:
    tricky = "a;k=!h"  # a cluster name that contains the format's separators
    label_a = encode_label("a", {TAG_RAY_NODE_KIND: "worker"})
    label_tricky = encode_label(tricky, {TAG_RAY_NODE_KIND: "head"})
    assert is_cluster_label(label_a, "a") and not is_cluster_label(label_tricky, "a")
    assert is_cluster_label(label_tricky, tricky) and not is_cluster_label(label_a, tricky)
    assert decode_label(label_tricky) == (tricky, {TAG_RAY_CLUSTER_NAME: tricky, TAG_RAY_NODE_KIND: "head",
                                                   TAG_RAY_NODE_NAME: f"ray-{tricky}-head"})
    assert label_tricky.startswith(label_prefix(tricky))


def test_values_that_look_like_codes_stay_literal() -> None:
    tags = {"custom": "~abc", "other": "!h", "third": "^x;y=z", "ünï": "cödé 100%"}
    assert decode_label(encode_label("c", tags))[1] == {**tags, TAG_RAY_CLUSTER_NAME: "c"}  # type: ignore[index]


def test_uppercase_hex_is_not_compacted_but_survives() -> None:
    value = _sha1("x").upper()
    assert decode_label(encode_label("c", {TAG_RAY_LAUNCH_CONFIG: value}))[1][TAG_RAY_LAUNCH_CONFIG] == value  # type: ignore[index]


def test_unknown_field_codes_from_a_later_revision_are_ignored() -> None:
    label = encode_label("c", {TAG_RAY_NODE_KIND: "worker"}) + ";Z=future"
    assert decode_label(label)[1][TAG_RAY_NODE_KIND] == "worker"  # type: ignore[index]


def test_too_long_label_is_refused_with_the_limit_named() -> None:
    with pytest.raises(LabelTooLongError, match=str(MAX_LABEL_LENGTH)):
        encode_label("c", {"big": "x" * MAX_LABEL_LENGTH})


def test_a_rental_label_has_vast_create_limit_and_a_relabel_the_larger_one() -> None:
    tags = {"big": "x" * 300}
    assert len(encode_label("c", tags)) <= MAX_LABEL_LENGTH
    with pytest.raises(LabelTooLongError, match=str(MAX_CREATE_LABEL_LENGTH)):
        encode_label("c", tags, limit=MAX_CREATE_LABEL_LENGTH)


def test_names_that_leave_no_room_in_a_rental_label_are_refused_before_renting() -> None:
    check_create_label_fits("my-cluster", "gpu_worker")
    check_create_label_fits("c" * 100, "gpu_worker")
    with pytest.raises(LabelTooLongError, match=str(MAX_CREATE_LABEL_LENGTH)):
        check_create_label_fits("c" * 200, "gpu_worker")
    with pytest.raises(LabelTooLongError):
        check_create_label_fits("c", "t" * 200)


def test_the_longest_create_tags_of_a_real_worker_fit_a_rental_label() -> None:
    """What Ray and the provider put on a worker when renting it (the updater's hashes come later, by relabel)."""
    create_tags = {key: value for key, value in _full_worker_tags("demo").items()
                   if key not in (TAG_RAY_RUNTIME_CONFIG, TAG_RAY_FILE_MOUNTS_CONTENTS)}
    assert len(encode_label("demo", create_tags, limit=MAX_CREATE_LABEL_LENGTH)) <= MAX_CREATE_LABEL_LENGTH


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(cluster=_text.filter(bool), tags=st.dictionaries(_text.filter(bool), _text, max_size=8))
def test_any_tags_round_trip(cluster: str, tags: dict[str, str]) -> None:
    """Any tags come back unchanged, or (escaped non-ASCII text can pass Vast's limit) are refused naming it."""
    tags.pop(TAG_RAY_CLUSTER_NAME, None)
    tags.pop(TAG_RAY_NODE_NAME, None)
    tags.pop(TAG_RAY_NODE_KIND, None)
    try:
        label = encode_label(cluster, tags)
    except LabelTooLongError as exc:
        assert str(MAX_LABEL_LENGTH) in str(exc)
        return
    assert is_cluster_label(label, cluster)
    assert decode_label(label) == (cluster, {**tags, TAG_RAY_CLUSTER_NAME: cluster})
