"""Bad input, one table: every field of the provider config and node_config, every ``sky`` parameter, malformed YAML.

Each case must give ONE clear message: one line naming the field (with its place in the YAML), the value and what is
allowed. The YAML cases are checked on all three roads a user can take:

* ``skyward-ray validate FILE`` in a subprocess: exit code 2, one line on stderr, no traceback;
* ``ray up``'s own road: Ray's ``_bootstrap_config`` (prepare_config, our fillout, Ray's schema, our
  ``bootstrap_config``), which must refuse before any I/O;
* the Python API Ray itself calls: ``VastNodeProvider(provider_config)`` and ``create_node(node_config)``.

The ``sky`` cases go through the Python API. A meta-test checks that every field of every model has a case, so a
new field without a bad-input case fails here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler.node_launch_exception import NodeLaunchException

import skyward_ray as sky
from skyward_ray.errors import ConfigError
from skyward_ray.provider.config import VastNodeConfig, VastProviderConfig
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.sky.spec import PoolSpec

REPO = Path(__file__).resolve().parents[3]
BASE = yaml.safe_load((REPO / "cluster_configs" / "vast-multinode.yaml").read_text())
WORKER_TYPE = "rtx4090"
# Words by which a message says what would have been accepted.
ALLOWED_WORDS = ("allowed", "should", "use ", "must", "expected", "of type", "one of", "unknown field")
HIDDEN = object()  # the value must NOT appear (a secret): the message shows *** instead


@dataclasses.dataclass(frozen=True)
class Case:
    """One wrong value. ``where``: ``provider``/``node_config`` (a key of that YAML section), ``yaml`` (a whole
    file, ``value`` is its text), or a ``sky`` callable. ``field``: what the message must name; ``shown``: the text
    of the value it must show (default ``repr(value)``; ``HIDDEN`` for secrets)."""

    id: str
    where: str
    key: str
    value: Any
    field: str
    shown: Any = None
    call: Callable[[], Any] | None = None
    ray_up: bool = True  # False: Ray itself picks the provider class from this key before any of our code runs

    @property
    def shown_text(self) -> str | None:
        if self.shown is HIDDEN:
            return None
        return self.shown if self.shown is not None else repr(self.value)


def provider(key: str, value: Any, *, shown: Any = None, id: str | None = None, ray_up: bool = True) -> Case:
    return Case(id or f"provider.{key}={value!r}", "provider", key, value, f"provider.{key}", shown, ray_up=ray_up)


def node(key: str, value: Any, *, shown: Any = None, id: str | None = None) -> Case:
    return Case(id or f"node_config.{key}={value!r}", "node_config", key, value,
                f"available_node_types.{WORKER_TYPE}.node_config.{key}", shown)


def api(id: str, call: Callable[[], Any], field: str, shown: str | None) -> Case:
    return Case(id, "api", "", None, field, HIDDEN if shown is None else shown, call)


def yaml_file(id: str, text: str, field: str, shown: str, *, ray_up: bool = True) -> Case:
    return Case(id, "yaml", "", textwrap.dedent(text), field, shown, ray_up=ray_up)


SECRET = "acct-key-0123456789abcdef-NEVER-SHOWN"

CASES: list[Case] = [
    # --- provider: placement fields ----------------------------------------------------------------------------
    provider("min_reliability", 1.5),
    provider("min_reliability", "high"),
    provider("geolocation", "Atlantis"),
    provider("geolocation", 5),
    provider("bid_multiplier", 0.5),
    provider("docker_image", "has space:1"),
    provider("disk_gb", 0),
    provider("disk_gb", 1.5),
    provider("use_overlay", "yes"),
    provider("verified_only", "no"),
    provider("datacenter_only", 1),
    provider("min_cuda", 6.0),
    provider("min_inet_down", -1),
    provider("max_bid", 0),
    provider("max_hourly_cost", -3),
    provider("max_hourly_cost", float("nan"), shown="nan"),
    provider("excluded_machines", [-1]),
    provider("excluded_machines", "123"),
    # --- provider: Ray's keys ------------------------------------------------------------------------------------
    provider("type", "aws", ray_up=False),
    provider("module", "my.Provider", ray_up=False),
    provider("use_internal_ips", "sometimes"),
    provider("use_external_head_ip", 2),
    provider("disable_node_updaters", True),
    provider("disable_launch_config_check", "x"),
    provider("foreground_node_launch", "x"),
    provider("worker_liveness_check", "x"),
    provider("cache_stopped_nodes", True),
    provider("_config_cache_path", 5),
    # --- provider: ours ------------------------------------------------------------------------------------------
    provider("api_url", "ftp://console.vast.ai"),
    provider("api_url", f"http://127.0.0.1:9/?api_key={SECRET}", shown=HIDDEN, id="provider.api_url with a key"),
    provider("api_key_file", 5, shown=HIDDEN),  # a field named *key*: its value is masked
    provider("api_key", SECRET, shown=HIDDEN, id="provider.api_key (unknown, secret)"),
    provider("api_min_interval_s", -1),
    provider("api_rate_scale", 0),
    provider("search_ttl_s", -1),
    provider("cache_ttl_s", 0),
    provider("instance_list", "sometimes"),
    provider("tag_flush_delay_s", 600),
    provider("interrupted_policy", "pray"),
    provider("loading_timeout_s", 0),
    provider("ssh_timeout_s", -5),
    provider("avoid_machine_s", 0),
    provider("overlay_timeout", 0),
    provider("instance_timeout", -1),
    provider("rent_concurrency", 0),
    provider("ssh_proxy", "maybe"),
    provider("overlay_name", "Has Spaces"),
    provider("ssh_public_key", 5, shown=HIDDEN),
    provider("node_types", "all"),
    provider("no_such_key", 1, shown="", id="provider: unknown key"),
    # --- node_config ---------------------------------------------------------------------------------------------
    node("accelerator", ""),
    node("accelerator", 4090),
    node("gpus", 0),
    node("gpus", 65),
    node("gpus", "two"),
    node("allocation", "cheap"),
    node("include_variants", "x"),
    node("env", ["A=1"]),
    node("env", {"-p 8080:8080": "1"}, shown="'-p 8080:8080'"),
    node("ports", [22]),
    node("ports", [70000]),
    node("onstart", ["echo", "hi"]),
    node("no_such_key", 1, shown="", id="node_config: unknown key"),
    # --- whole files ---------------------------------------------------------------------------------------------
    yaml_file("YAML: unclosed bracket", "cluster_name: x\nprovider: {type: external\nmax_workers: 1\n", "line 3",
              "column"),
    yaml_file("YAML: tab indentation", "cluster_name: x\nprovider:\n\ttype: external\n", "line 3", "column"),
    yaml_file("YAML: a list at the top", "- cluster_name: x\n", "top level", "list"),
    yaml_file("YAML: empty file", "", "top level", "NoneType"),
    # PyYAML keeps the last of two equal keys without a word; only the validate CLI reads the text itself.
    yaml_file("YAML: duplicate key", "@BASE\nmax_workers: 3\nmax_workers: 30\n", "max_workers", "line",
              ray_up=False),
    yaml_file("YAML: unknown top-level key", "@BASE\nfancy_feature: true\n", "fancy_feature", "(top level)"),
    yaml_file("YAML: missing required key", "@BASE-cluster_synced_files", "cluster_synced_files", "missing"),
    yaml_file("YAML: head_node_type not a type", "@BASE\nhead_node_type: nope\n", "head_node_type", "'nope'"),
    yaml_file("YAML: node_config missing", "@BASE-node_config", f"available_node_types.{WORKER_TYPE}",
              "'node_config' is a required property"),
    yaml_file("YAML: fractional resources", "@BASE-resources", "resources", "1.5"),
    # --- sky.VastAI ----------------------------------------------------------------------------------------------
    *[api(f"VastAI({k}={v!r})", lambda k=k, v=v: sky.VastAI(**{k: v}), f"VastAI.{k}", s) for k, v, s in [
        ("min_reliability", -0.1, "-0.1"), ("geolocation", "Atlantis", "'Atlantis'"), ("bid_multiplier", 0.9, "0.9"),
        ("docker_image", "a b", "'a b'"), ("disk_gb", 0, "0"), ("use_overlay", "yes", "'yes'"),
        ("verified_only", "no", "'no'"), ("datacenter_only", 1, "1"), ("min_cuda", 6, "6"),
        ("min_inet_down", -1, "-1"), ("max_bid", 0, "0"), ("max_hourly_cost", float("nan"), "nan"),
        ("excluded_machines", [-1], "[-1]"), ("api_key", "   ", None), ("api_key", 12345, None),
        ("instance_timeout", -5, "-5"), ("overlay_timeout", 0, "0"), ("no_such_option", 1, ""),
    ]],
    # --- sky.ComputePool and sky.pool ----------------------------------------------------------------------------
    *[api(f"{name}({k}={v!r})", lambda fn=fn, k=k, v=v: fn(**{k: v}), f"pool.{k}", s)
      for name, fn in (("ComputePool", sky.ComputePool), ("pool", sky.pool)) for k, v, s in [
          ("provider", "vast", "'vast'"), ("accelerator", 5, "5"), ("nodes", 0, "0"), ("nodes", "2", "'2'"),
          ("allocation", "cheap", "'cheap'"), ("image", "torch", "'torch'"), ("vcpus", -1, "-1"),
          ("memory_gb", "lots", "'lots'"), ("address", "a b", "'a b'"), ("name", "Bad Name", "'Bad Name'"),
          ("ready_timeout", 0, "0"), ("launcher", "local", "'local'"),
      ]],
    # --- sky.Accelerator -----------------------------------------------------------------------------------------
    api("Accelerator(name='')", lambda: sky.Accelerator(""), "accelerator", "''"),
    api("Accelerator(name=5)", lambda: sky.Accelerator(5), "accelerator.name", "5"),  # type: ignore[arg-type]
    api("Accelerator(count=0)", lambda: sky.Accelerator("RTX 4090", count=0), "accelerator.count", "0"),
    api("Accelerator(count=1.5)", lambda: sky.Accelerator("RTX 4090", count=1.5),  # type: ignore[arg-type]
        "accelerator.count", "1.5"),
    # --- sky.Image -----------------------------------------------------------------------------------------------
    api("Image(pip='torch')", lambda: sky.Image(pip="torch"), "image.pip", "'torch'"),
    api("Image(pip=[bad])", lambda: sky.Image(pip=["not a req!!"]), "image.pip", "'not a req!!'"),
    api("Image(apt=[bad])", lambda: sky.Image(apt=["Bad_Name"]), "image.apt", "'Bad_Name'"),
    api("Image(env={bad name})", lambda: sky.Image(env={"1X": "v"}), "image.env", "'1X'"),
    api("Image(env={X: 5})", lambda: sky.Image(env={"X": 5}), "image.env.X", "5"),  # type: ignore[dict-item]
    api("Image(pip_extra_index_url=5)", lambda: sky.Image(pip_extra_index_url=5), "image.pip_extra_index_url", "5"),
    api("Image(conda=...)", lambda: sky.Image(conda=["x"]), "image.conda", ""),  # type: ignore[call-arg]
    # --- sky.integrations.torch ----------------------------------------------------------------------------------
    api("torch(backend='nccl2')", lambda: sky.integrations.torch(backend="nccl2"), "torch.backend", "'nccl2'"),
    api("torch(master_port=0)", lambda: sky.integrations.torch(master_port=0), "torch.master_port", "0"),
    api("torch(timeout_s='10')", lambda: sky.integrations.torch(timeout_s="10"),  # type: ignore[arg-type]
        "torch.timeout_s", "'10'"),
]
YAML_CASES = [c for c in CASES if c.where in ("provider", "node_config", "yaml")]
SECTION_CASES = [c for c in CASES if c.where in ("provider", "node_config")]
API_CASES = [c for c in CASES if c.where == "api"]
# ray up reads the file itself (yaml.safe_load, so unparsable text never reaches the provider): the cases built on
# the example config go down its road, the raw-text ones through the validate CLI only.
RAY_UP_CASES = [c for c in YAML_CASES if c.ray_up and (c.where != "yaml" or c.value.startswith("@BASE"))]


def config_for(case: Case) -> dict[str, Any]:
    """The example multi-node cluster config with the case's one wrong value (section cases only)."""
    config = copy.deepcopy(BASE)
    if case.where == "provider":
        config["provider"][case.key] = case.value
    else:
        config["available_node_types"][WORKER_TYPE]["node_config"][case.key] = case.value
    return config


def yaml_text(case: Case) -> str:
    if case.where != "yaml":
        return yaml.safe_dump(config_for(case), sort_keys=False)
    text: str = case.value
    if not text.startswith("@BASE"):
        return text
    config = copy.deepcopy(BASE)
    if text.startswith("@BASE-"):
        what = text.removeprefix("@BASE-")
        if what == "node_config":
            del config["available_node_types"][WORKER_TYPE]["node_config"]
        elif what == "resources":
            config["available_node_types"][WORKER_TYPE]["resources"] = {"CPU": 1.5}
        else:
            del config[what]
        return yaml.safe_dump(config, sort_keys=False)
    base = yaml.safe_dump({k: v for k, v in config.items() if k not in yaml.safe_load(text.removeprefix("@BASE"))},
                          sort_keys=False)
    return base + text.removeprefix("@BASE\n")


def check_message(case: Case, message: str) -> None:
    """One line, names the field, shows the value (or hides a secret), says what is allowed."""
    assert "\n" not in message.strip(), f"{case.id}: more than one line: {message!r}"
    assert "Traceback" not in message, f"{case.id}: a traceback: {message}"
    assert case.field in message, f"{case.id}: the field {case.field!r} is not named: {message}"
    if case.shown is HIDDEN:
        assert SECRET not in message and SECRET[:16] not in message, f"{case.id}: shows the secret: {message}"
    elif case.shown_text:
        assert case.shown_text in message, f"{case.id}: the value {case.shown_text!r} is not shown: {message}"
    if case.where != "yaml":
        assert any(word in message.lower() for word in ALLOWED_WORDS), f"{case.id}: nothing allowed: {message}"
    if "unknown field" in message and case.key.startswith("no_such"):
        assert "; allowed: " in message, f"{case.id}: an unknown key without the allowed ones: {message}"


# --- skyward-ray validate FILE -------------------------------------------------------------------------------------

# A process per case costs a Ray import (~1 s) each: every case runs through the CLI's entry point in this process,
# and one case of each kind also as a real ``skyward-ray`` process (exit code, stderr, no traceback end to end).
SUBPROCESS_IDS = ("YAML: unclosed bracket", "YAML: unknown top-level key", "provider.min_reliability=1.5",
                  "provider.api_key (unknown, secret)", "node_config.gpus=0", "node_config: unknown key")


def write_case(case: Case, directory: Path) -> Path:
    path = directory / f"{abs(hash(case.id))}.yaml"
    path.write_text(yaml_text(case))
    return path


@pytest.mark.parametrize("case", YAML_CASES, ids=[c.id for c in YAML_CASES])
def test_validate_cli_gives_one_line_and_exit_2(case: Case, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from skyward_ray.cli import main

    code = main(["validate", str(write_case(case, tmp_path))])
    out, err = capsys.readouterr()
    assert code == 2, f"{case.id}: exit {code}\nstdout: {out}\nstderr: {err}"
    assert out == "" and err.startswith("skyward-ray: error: ") and err.count("\n") == 1, err
    check_message(case, err.strip())


# Where ``skyward-ray validate`` places each whole-file case: the key at fault (its line must start with it at the
# reported column), a line number (a syntax error: where the parser stopped), or None (the field is not in the file).
PLACED: dict[str, str | int | None] = {
    "YAML: unclosed bracket": 3,
    "YAML: tab indentation": 3,
    "YAML: a list at the top": None,
    "YAML: empty file": None,
    "YAML: duplicate key": "max_workers",
    "YAML: unknown top-level key": "fancy_feature",
    "YAML: missing required key": None,
    "YAML: head_node_type not a type": "head_node_type",
    "YAML: node_config missing": WORKER_TYPE,
    "YAML: fractional resources": "CPU",
}


@pytest.mark.parametrize("case", YAML_CASES, ids=[c.id for c in YAML_CASES])
def test_validate_cli_places_the_error_at_the_key_at_fault(case: Case, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from skyward_ray.cli import main

    path = write_case(case, tmp_path)
    assert main(["validate", str(path)]) == 2
    message = capsys.readouterr().err.strip().removeprefix("skyward-ray: error: ")
    placed = PLACED[case.id] if case.where == "yaml" else case.key
    place = re.match(rf"{re.escape(str(path))}:(\d+):(\d+): \S", message)
    if placed is None:
        assert place is None and message.startswith(f"{path}: "), f"{case.id}: {message}"
        return
    assert place is not None, f"{case.id}: no FILE:LINE:COLUMN: {message}"
    line_no, column = int(place[1]), int(place[2])
    if isinstance(placed, int):
        assert line_no == placed, f"{case.id}: {message}"
        return
    lines = path.read_text().splitlines()
    assert lines[line_no - 1][column - 1:].startswith(f"{placed}:"), f"{case.id}: {message}\n{lines[line_no - 1]}"
    if case.id == "YAML: duplicate key":  # the repeated key, not the first one
        assert line_no == max(i for i, text in enumerate(lines, 1) if text.startswith("max_workers:")), message


@pytest.fixture(scope="module")
def validate_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """``skyward-ray validate`` as a process on one case of each kind, several at a time."""
    import subprocess

    directory = tmp_path_factory.mktemp("bad-yaml")
    cases = [c for c in YAML_CASES if c.id in SUBPROCESS_IDS]
    assert len(cases) == len(SUBPROCESS_IDS)

    def run(case: Case) -> tuple[int, str, str]:
        result = subprocess.run([sys.executable, "-m", "skyward_ray.cli", "validate", str(write_case(case, directory))],
                                capture_output=True, text=True, timeout=120, cwd=directory)
        return result.returncode, result.stdout, result.stderr

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip([c.id for c in cases], pool.map(run, cases), strict=True))


@pytest.mark.parametrize("case", [c for c in YAML_CASES if c.id in SUBPROCESS_IDS], ids=list(SUBPROCESS_IDS))
def test_validate_process_gives_one_line_exit_2_and_no_traceback(
    case: Case, validate_processes: dict[str, tuple[int, str, str]]
) -> None:
    code, stdout, stderr = validate_processes[case.id]
    assert code == 2, f"{case.id}: exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert stdout == "" and stderr.startswith("skyward-ray: error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    check_message(case, stderr.strip())


# --- ray up's road: Ray's _bootstrap_config, refusing before any I/O ---------------------------------------------


@pytest.fixture
def no_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a case slipped through validation, bootstrap's I/O would hit a closed loopback port and a scratch HOME
    (and fail the test with a connection error, not a ConfigError)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VAST_API_KEY", "not-a-real-key")
    import skyward_ray.provider.bootstrap as bootstrap

    fast = functools.partial(bootstrap.VastClient, retry_deadline_s=0, timeout_s=2)
    monkeypatch.setattr(bootstrap, "VastClient", fast)


@pytest.mark.parametrize("case", RAY_UP_CASES, ids=[c.id for c in RAY_UP_CASES])
def test_ray_up_bootstrap_refuses_with_the_same_message(case: Case, no_io: None) -> None:
    import jsonschema
    from ray.autoscaler._private.commands import _bootstrap_config

    config = yaml.safe_load(yaml_text(case))
    with pytest.raises((ConfigError, jsonschema.ValidationError, KeyError, ValueError, AssertionError,
                        RuntimeError)) as caught:
        _bootstrap_config(config, no_config_cache=True)
    if isinstance(caught.value, ConfigError):
        check_message(case, str(caught.value))
    elif isinstance(caught.value, jsonschema.ValidationError) and case.where == "provider":
        # Ray's schema knows some provider keys (use_internal_ips...) and checks them first, in its own words.
        assert list(caught.value.absolute_path)[-1] == case.key, f"{case.id}: {caught.value.message}"
    else:  # Ray's own checks (schema, required keys) come first on Ray's road, in Ray's words
        assert case.where == "yaml", f"{case.id}: refused by Ray, not by us: {caught.value!r}"


# --- the Python API Ray calls ------------------------------------------------------------------------------------


class NoClient:
    """A client that must never be used: validation comes before any API call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the Vast API was called ({name}) before the config was validated")


@pytest.mark.parametrize("case", SECTION_CASES, ids=[c.id for c in SECTION_CASES])
def test_the_provider_api_refuses_with_the_same_message(case: Case) -> None:
    config = config_for(case)
    if case.where == "provider":
        with pytest.raises(ConfigError) as caught:
            VastNodeProvider(config["provider"], config["cluster_name"], client=NoClient(),  # type: ignore[arg-type]
                             start_threads=False)
        check_message(case, str(caught.value))
        return
    good = VastNodeProvider(BASE["provider"], BASE["cluster_name"], client=NoClient(),  # type: ignore[arg-type]
                            start_threads=False)
    bad_node_config = config["available_node_types"][WORKER_TYPE]["node_config"]
    with pytest.raises(NodeLaunchException) as launch:
        good.create_node_with_resources_and_labels(bad_node_config, {"ray-node-type": "worker",
                                                                     "ray-user-node-type": WORKER_TYPE}, 1, {}, {})
    # Ray's launcher only has the node_config, not its place in the YAML: the message names node_config.<key>.
    check_message(dataclasses.replace(case, field=f"node_config.{case.key}"), launch.value.description)


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_the_sky_api_refuses_with_one_clear_message(case: Case) -> None:
    assert case.call is not None
    with pytest.raises(ConfigError) as caught:
        case.call()
    check_message(case, str(caught.value))


# --- every field has a case ----------------------------------------------------------------------------------------


def test_every_field_of_every_model_has_a_bad_input_case() -> None:
    covered = {(c.where, c.key) for c in SECTION_CASES} | {("api", c.field) for c in API_CASES}
    wanted = {("provider", f.alias or name) for name, f in VastProviderConfig.model_fields.items()}
    wanted |= {("node_config", name) for name in VastNodeConfig.model_fields}
    wanted |= {("api", f"VastAI.{name}") for name in sky.VastAI.model_fields}
    wanted |= {("api", f"pool.{name}") for name in [*PoolSpec.model_fields, "launcher"]}
    wanted |= {("api", f"image.{name}") for name in sky.Image.model_fields}
    wanted |= {("api", f"accelerator.{name}") for name in ("name", "count")}
    wanted |= {("api", f"torch.{name}") for name in inspect.signature(sky.integrations.torch).parameters
               if not name.startswith("fn")}
    assert not wanted - covered, f"fields without a bad-input case: {sorted(wanted - covered)}"
