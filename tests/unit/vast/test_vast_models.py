"""Every normalisation of the wire models, and the one status -> node-state mapping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support.fake_vast_http import API_KEY, INSTANCE, OFFER, OVERLAYS, PUBLIC_KEY, SSH_KEYS, USER, instance, offer

from skyward_ray.errors import ConfigError
from skyward_ray.vast.docker_env import env_to_dict, parse_docker_env
from skyward_ray.vast.models import (
    CreatedInstance,
    Instance,
    InstancePage,
    InstanceSshKeys,
    NodeState,
    Offer,
    Overlay,
    SshKey,
    User,
    node_state,
    overlay_env_key,
    port_env_key,
)

# --- offers ----------------------------------------------------------------------------------------------------------


def test_offer_numbers_sent_as_strings_are_numbers() -> None:
    parsed = Offer.model_validate(OFFER)
    assert parsed.machine_id == 1234
    assert parsed.num_gpus == 2
    assert parsed.dph_total == pytest.approx(0.8123)
    assert parsed.cuda_max_good == pytest.approx(12.8)


def test_offer_text_is_stripped_and_country_code_read_from_the_tail() -> None:
    parsed = Offer.model_validate(offer(geolocation=" Yutakacho, Shinagawa District, Tokyo, JP \n"))
    assert parsed.public_ipaddr == "203.0.113.7"
    assert parsed.geolocation == "Yutakacho, Shinagawa District, Tokyo, JP"
    assert parsed.country_code == "JP"
    assert Offer.model_validate(offer(geolocation="Hong Kong, HK")).country_code == "HK"
    assert Offer.model_validate(offer(geolocation=None)).country_code is None


@pytest.mark.parametrize("field", ["cluster_id", "host_id", "cpu_cores", "gpu_ram", "min_bid", "public_ipaddr"])
def test_offer_blank_strings_in_nullable_fields_are_null(field: str) -> None:
    assert getattr(Offer.model_validate(offer(**{field: "  "})), field) is None


def test_offer_keeps_unknown_fields_and_derives_flags() -> None:
    parsed = Offer.model_validate(OFFER)
    assert parsed.score == pytest.approx(312.4)  # unknown to the model, kept
    assert parsed.verified and parsed.datacenter
    assert parsed.effective_reliability == pytest.approx(0.995)
    community = Offer.model_validate(offer(hosting_type=0, verification="unverified", vericode=0, reliability2=None))
    assert not community.verified and not community.datacenter
    assert community.effective_reliability == pytest.approx(0.99)


def test_offer_without_required_fields_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Offer.model_validate({"id": 1})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "NaN", "-Infinity"])
def test_non_finite_prices_are_rejected(bad: object) -> None:
    with pytest.raises(ValidationError):
        Offer.model_validate(offer(dph_total=bad))


# --- instances -------------------------------------------------------------------------------------------------------


def test_instance_address_text_is_normalised() -> None:
    parsed = Instance.model_validate(INSTANCE)
    assert parsed.public_ipaddr == "203.0.113.7"
    assert parsed.local_ipaddrs == ["10.0.0.2", "172.17.0.3"]
    assert parsed.ssh_port == 31338


def test_hostport_strings_become_ints_and_empty_bindings_are_dropped() -> None:
    parsed = Instance.model_validate(INSTANCE)
    assert parsed.host_port(22) == 41022
    assert parsed.host_port(8265) == 41023
    assert parsed.ports is not None and "8080/tcp" not in parsed.ports
    assert parsed.host_port(8080) is None
    assert parsed.host_port(22, "udp") is None


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            [["-p 8265:8265", "1"], ["-n skyray-demo", "1"], ["A", 2]],
            {"-p 8265:8265": "1", "-n skyray-demo": "1", "A": "2"},
        ),
        ({"A": "b", "N": 3, "Z": None}, {"A": "b", "N": "3", "Z": ""}),
        ("-e A=b=c -p 8000:8000 -n ovl -h host", {"A": "b=c", "-p 8000:8000": "1", "-n ovl": "1", "-h": "host"}),
        ([["LONELY"]], {"LONELY": ""}),
        (None, None),
        ("", None),
    ],
)
def test_extra_env_any_wire_form_becomes_a_dict(wire: object, expected: dict[str, str] | None) -> None:
    assert Instance.model_validate(instance(extra_env=wire)).extra_env == expected


def test_extra_env_that_is_not_env_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        Instance.model_validate(instance(extra_env=[1, 2]))
    with pytest.raises(ValueError):
        env_to_dict(3.5)


def test_blank_label_and_state_fields_are_null() -> None:
    parsed = Instance.model_validate(instance(label="", actual_status=" ", ssh_port="", public_ipaddr=" "))
    assert parsed.label is None
    assert parsed.actual_status is None
    assert parsed.ssh_port is None
    assert parsed.public_ipaddr is None


def test_instance_tolerates_nulls_everywhere_but_id() -> None:
    nulls = {key: None for key in INSTANCE if key != "id"}
    parsed = Instance.model_validate({"id": 5, **nulls})
    assert parsed.state is NodeState.PENDING
    assert parsed.local_ipaddrs == []
    assert parsed.ssh_endpoint is None


def test_ssh_endpoint_prefers_the_direct_mapping_then_the_proxy() -> None:
    direct = Instance.model_validate(INSTANCE)
    assert direct.ssh_endpoint == ("203.0.113.7", 41022)
    proxy_only = Instance.model_validate(instance(ports=None))
    assert proxy_only.ssh_endpoint == ("ssh5.vast.ai", 31338)
    no_public_ip = Instance.model_validate(instance(public_ipaddr=""))
    assert no_public_ip.ssh_endpoint == ("ssh5.vast.ai", 31338)


def test_overlay_name_and_ip() -> None:
    parsed = Instance.model_validate(INSTANCE)
    assert parsed.overlay_name == "skyray-demo"
    assert parsed.overlay_ip("10.0.0.0/24") == "10.0.0.2"
    assert parsed.overlay_ip("10.9.0.0/24") is None
    assert parsed.overlay_ip("not a subnet") is None
    bare = Instance.model_validate(instance(extra_env=None, local_ipaddrs="junk 10.0.0.9"))
    assert bare.overlay_name is None
    assert bare.overlay_ip("10.0.0.0/24") == "10.0.0.9"


def _state(**fields: object) -> NodeState:
    base = {
        "actual_status": None,
        "intended_status": "running",
        "cur_state": "running",
        "next_state": "running",
        "status_msg": None,
        "is_bid": False,
    }
    return Instance.model_validate(instance(**{**base, **fields})).state


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"actual_status": None}, NodeState.PENDING),
        ({"actual_status": "created"}, NodeState.PENDING),
        ({"actual_status": "loading"}, NodeState.PENDING),
        ({"actual_status": "rebooting"}, NodeState.PENDING),
        ({"actual_status": "scheduling"}, NodeState.PENDING),
        ({"actual_status": "running"}, NodeState.RUNNING),
        ({"actual_status": "RUNNING "}, NodeState.RUNNING),
        ({"actual_status": "exited"}, NodeState.FAILED),
        ({"actual_status": "offline"}, NodeState.FAILED),
        ({"actual_status": "unknown"}, NodeState.FAILED),
        ({"actual_status": "created", "status_msg": "Error: OCI runtime create failed: no gpu"}, NodeState.FAILED),
        ({"actual_status": "stopped", "intended_status": "stopped"}, NodeState.FAILED),
        (
            {
                "actual_status": "stopped",
                "intended_status": "stopped",
                "cur_state": "stopped",
                "next_state": "stopped",
                "is_bid": True,
            },
            NodeState.INTERRUPTED,
        ),
        (
            {
                "actual_status": "loading",
                "intended_status": "stopped",
                "cur_state": "stopped",
                "next_state": "stopped",
                "is_bid": True,
            },
            NodeState.INTERRUPTED,
        ),
    ],
)
def test_one_mapping_from_vast_status_to_node_state(fields: dict[str, object], expected: NodeState) -> None:
    assert _state(**fields) is expected


def test_ready_needs_running_and_an_ssh_endpoint() -> None:
    assert Instance.model_validate(INSTANCE).ready
    assert not Instance.model_validate(instance(ports=None, ssh_host=None, ssh_port=None)).ready
    assert not Instance.model_validate(instance(actual_status="loading")).ready


def test_a_missing_instance_is_gone() -> None:
    assert node_state(None) is NodeState.GONE
    assert node_state(Instance.model_validate(INSTANCE)) is NodeState.RUNNING


def test_v1_page_tolerates_null_instances() -> None:
    page = InstancePage.model_validate({"instances": None, "next_token": None, "total_instances": "0"})
    assert page.instances == [] and page.total_instances == 0


# --- overlays, keys, user --------------------------------------------------------------------------------------------


def test_overlay_subnet_alias_and_null_instances() -> None:
    first, second = (Overlay.model_validate(row) for row in OVERLAYS)
    assert first.internal_subnet == "10.0.0.0/24" and first.instances == [31337]
    assert second.internal_subnet == "10.0.1.0/24" and second.instances == []


def test_ssh_key_list_says_key_and_create_says_public_key() -> None:
    assert SshKey.model_validate(SSH_KEYS[0]).public_key == PUBLIC_KEY
    assert SshKey.model_validate({"id": 8, "user_id": 501, "public_key": PUBLIC_KEY}).public_key == PUBLIC_KEY


def test_instance_ssh_keys_arrive_as_a_json_string() -> None:
    body = {"success": True, "ssh_keys": f'[{{"id": 3, "name": "laptop", "public_key": "{PUBLIC_KEY}"}}]'}
    keys = InstanceSshKeys.model_validate(body).ssh_keys
    assert [(k.id, k.name, k.public_key) for k in keys] == [(3, "laptop", PUBLIC_KEY)]
    assert InstanceSshKeys.model_validate({"ssh_keys": ""}).ssh_keys == []
    assert InstanceSshKeys.model_validate({"ssh_keys": [{"id": 4, "public_key": "x"}]}).ssh_keys[0].id == 4
    with pytest.raises(ValidationError):
        InstanceSshKeys.model_validate({"ssh_keys": "[not json"})


def test_user_never_keeps_the_api_key() -> None:
    user = User.model_validate(USER)
    assert user.credit == pytest.approx(25.0)
    assert "api_key" not in user.model_dump()
    assert API_KEY not in repr(user) and API_KEY not in user.model_dump_json()


def test_reprs_hide_instance_keys_env_and_unknown_fields() -> None:
    created = CreatedInstance.model_validate(
        {"success": True, "new_contract": "31337", "instance_api_key": "ik-secret"}
    )
    assert created.new_contract == 31337 and created.instance_api_key == "ik-secret"
    assert "ik-secret" not in repr(created) and "ik-secret" not in str(created)
    parsed = Instance.model_validate(instance(extra_env={"HF_TOKEN": "hf-secret"}))
    assert "hf-secret" not in repr(parsed)
    assert "abc123" not in repr(parsed)  # jupyter_token: an unknown field
    assert parsed.jupyter_token == "abc123"  # ... still readable


# --- env keys --------------------------------------------------------------------------------------------------------


def test_env_key_helpers() -> None:
    assert overlay_env_key("skyray-demo") == "-n skyray-demo"
    assert port_env_key(8265) == "-p 8265:8265"
    assert port_env_key(53, proto="udp") == "-p 53:53/udp"
    for bad in ("Has_Upper", "", "with space", "x" * 65):
        with pytest.raises(ConfigError, match="overlay name"):
            overlay_env_key(bad)


def test_parse_docker_env_ignores_flags_without_values() -> None:
    assert parse_docker_env("-p") == {}
    assert parse_docker_env("--rm -e A=1 stray -e NOEQUALS") == {"A": "1"}


# --- robustness: anything JSON-shaped parses or fails with a ValidationError, never with another exception -------

_json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(sorted(INSTANCE)), _json_values, max_size=8))
def test_instance_parse_never_crashes_otherwise(fields: dict[str, object]) -> None:
    try:
        parsed = Instance.model_validate(instance(**fields))
    except ValidationError:
        return
    assert isinstance(parsed.state, NodeState)
    _ = parsed.ssh_endpoint, parsed.overlay_name, parsed.ready


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(sorted(OFFER)), _json_values, max_size=8))
def test_offer_parse_never_crashes_otherwise(fields: dict[str, object]) -> None:
    try:
        parsed = Offer.model_validate(offer(**fields))
    except ValidationError:
        return
    _ = parsed.country_code, parsed.verified, parsed.effective_reliability
