"""bootstrap_config and prepare_for_head_node: what ray up adds before the first node, and what the head gets."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config

import skyward_ray
from skyward_ray.errors import ConfigError
from skyward_ray.provider.bootstrap import (
    REMOTE_KEY_PATH,
    bootstrap_config,
    fill_node_resources,
    key_body,
    prepare_head_config,
    register_ssh_key,
)
from skyward_ray.provider.remote_install import SHIP_MARKER, tree_hash
from skyward_ray.provider.start_commands import HEAD_START_RAY_COMMANDS, WORKER_START_RAY_COMMANDS
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.models import SshKey

REPO = Path(__file__).resolve().parents[3]
API_KEY = "unit-test-account-key-0123456789"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBunitTestKeyMaterialxxxxxxxxxxxxxxxxxxxxxx laptop"


class FakeKeys:
    """The SSH-key part of VastClient."""

    def __init__(self, existing: list[str] | None = None) -> None:
        self.keys = [SshKey(id=i + 1, public_key=key) for i, key in enumerate(existing or [])]
        self.created: list[str] = []

    def list_ssh_keys(self) -> list[SshKey]:
        return list(self.keys)

    def create_ssh_key(self, public_key: str) -> SshKey:
        self.created.append(public_key)
        key = SshKey(id=len(self.keys) + 1, public_key=public_key)
        self.keys.append(key)
        return key

    def close(self) -> None:
        pass


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAST_API_KEY", API_KEY)
    monkeypatch.setenv("VAST_URL", "http://10.213.0.1:8911")
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "id_test").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n"
                                 "-----END OPENSSH PRIVATE KEY-----\n")
    (ssh / "id_test.pub").write_text(PUBLIC_KEY + "\n")
    return tmp_path


def _prepared(name: str = "vast-multinode.yaml", **auth: Any) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "cluster_configs" / name).read_text())
    config["auth"].update(auth)
    return prepare_config(config)


def test_bootstrap_fills_what_the_head_needs_and_never_the_key(home: Path) -> None:
    keys = FakeKeys()
    config = bootstrap_config(_prepared(ssh_private_key=str(home / ".ssh/id_test")), client=keys)  # type: ignore[arg-type]
    provider = config["provider"]
    assert provider["api_url"] == "http://10.213.0.1:8911"  # from VAST_URL, so the head uses the same API
    assert provider["ssh_public_key"] == PUBLIC_KEY
    assert set(provider["node_types"]) == {"head", "rtx4090"}
    assert provider["node_types"]["rtx4090"]["max_workers"] == 3
    assert API_KEY not in yaml.safe_dump(config)  # not in the config: only in a file mount
    key_file = Path(config["file_mounts"][REMOTE_KEY_PATH])
    assert key_file.read_text().strip() == API_KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert keys.created == [PUBLIC_KEY]


def test_bootstrap_registers_the_ssh_key_only_once(home: Path) -> None:
    keys = FakeKeys(existing=[PUBLIC_KEY.rsplit(" ", 1)[0] + " another-comment"])
    bootstrap_config(_prepared(ssh_private_key=str(home / ".ssh/id_test")), client=keys)  # type: ignore[arg-type]
    assert keys.created == []  # same key body, different comment: already registered


def test_register_ssh_key_compares_key_bodies() -> None:
    keys = FakeKeys(existing=["ssh-ed25519 OTHER x"])
    assert register_ssh_key(keys, PUBLIC_KEY) is not None  # type: ignore[arg-type]
    assert register_ssh_key(keys, PUBLIC_KEY) is None  # type: ignore[arg-type]
    assert key_body(PUBLIC_KEY) == " ".join(PUBLIC_KEY.split()[:2])


def test_bootstrap_ships_the_package_pinned_to_this_ray(home: Path) -> None:
    config = bootstrap_config(_prepared(ssh_private_key=str(home / ".ssh/id_test")), client=FakeKeys())  # type: ignore[arg-type]
    shipped = {remote: Path(local) for remote, local in config["file_mounts"].items() if "/pkg/" in remote}
    (remote, local), = shipped.items()
    assert (local / SHIP_MARKER).exists()
    assert tree_hash(local / "skyward_ray") == tree_hash(Path(skyward_ray.__file__).parent)
    for key in ("head_setup_commands", "worker_setup_commands"):
        install = config[key][0]
        assert "remote_install.py" in install and f"--ray-version={ray.__version__}" in install
        assert remote.removeprefix("~/") in install
        assert API_KEY not in install


def test_bootstrap_fills_default_start_commands_only_when_left_out(home: Path) -> None:
    prepared = _prepared(ssh_private_key=str(home / ".ssh/id_test"))
    config = bootstrap_config(copy.deepcopy(prepared), client=FakeKeys())  # type: ignore[arg-type]
    assert config["head_start_ray_commands"] == list(HEAD_START_RAY_COMMANDS)
    assert config["worker_start_ray_commands"] == list(WORKER_START_RAY_COMMANDS)
    prepared["head_start_ray_commands"] = ["ray start --head --my-own"]
    config = bootstrap_config(prepared, client=FakeKeys())  # type: ignore[arg-type]
    assert config["head_start_ray_commands"] == ["ray start --head --my-own"]


def test_bootstrap_rejects_bad_provider_config_before_any_io(home: Path) -> None:
    prepared = _prepared(ssh_private_key=str(home / ".ssh/id_test"))
    prepared["provider"]["min_reliability"] = 7
    keys = FakeKeys()
    with pytest.raises(ConfigError, match=r"provider\.min_reliability"):
        bootstrap_config(prepared, client=keys)  # type: ignore[arg-type]
    assert keys.created == []


def test_missing_private_key_file_is_a_clear_error(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.ssh_private_key"):
        bootstrap_config(_prepared(ssh_private_key=str(home / "nope")), client=FakeKeys())  # type: ignore[arg-type]


def test_head_config_reads_the_key_file_and_never_passes_it_to_workers(home: Path) -> None:
    config = bootstrap_config(_prepared(ssh_private_key=str(home / ".ssh/id_test")), client=FakeKeys())  # type: ignore[arg-type]
    remote = {"file_mounts": {path: path for path in config["file_mounts"]}, "provider": dict(config["provider"])}
    head = prepare_head_config(remote)
    assert head["provider"]["api_key_file"] == REMOTE_KEY_PATH
    assert REMOTE_KEY_PATH not in head["file_mounts"]  # the head syncs its file mounts to every worker
    assert any("/pkg/" in path for path in head["file_mounts"])  # the package does reach the workers


def test_every_ray_up_ships_the_key_in_use_even_from_a_cached_config(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from skyward_ray.provider.node_provider import VastNodeProvider

    config = bootstrap_config(_prepared(ssh_private_key=str(home / ".ssh/id_test")), client=FakeKeys())  # type: ignore[arg-type]
    staged = Path(config["file_mounts"][REMOTE_KEY_PATH])
    assert staged.read_text().strip() == API_KEY
    monkeypatch.setenv("VAST_API_KEY", "rotated-account-key")  # a later ray up; Ray serves the cached config
    provider = VastNodeProvider(config["provider"], config["cluster_name"], start_threads=False)
    remote = {"file_mounts": {path: path for path in config["file_mounts"]}, "provider": dict(config["provider"])}
    provider.prepare_for_head_node(remote)
    assert staged.read_text().strip() == "rotated-account-key"
    assert stat.S_IMODE(staged.stat().st_mode) == 0o600


def test_fill_node_resources_keeps_what_the_yaml_sets() -> None:
    config = {"available_node_types": {
        "a": {"node_config": {"accelerator": "H100", "gpus": 8}, "resources": {"CPU": 64}},
        "b": {"node_config": {"accelerator": "RTX 4090"}, "resources": {"GPU": 0}},
        "broken": {"node_config": {"gpus": "many"}},
    }}
    fill_node_resources(config)
    types = config["available_node_types"]
    assert types["a"]["resources"] == {"CPU": 64, "GPU": 8, "accelerator_type:H100": 1}
    assert types["b"]["resources"] == {"GPU": 0, "accelerator_type:RTX-4090": 1}
    assert "resources" not in types["broken"]  # left for bootstrap_config to report


def test_staged_key_file_is_rewritten_not_appended(home: Path) -> None:
    prepared = _prepared(ssh_private_key=str(home / ".ssh/id_test"))
    first = bootstrap_config(copy.deepcopy(prepared), client=FakeKeys())  # type: ignore[arg-type]
    os.environ["VAST_API_KEY"] = "rotated-key"
    second = bootstrap_config(prepared, client=FakeKeys())  # type: ignore[arg-type]
    assert first["file_mounts"][REMOTE_KEY_PATH] == second["file_mounts"][REMOTE_KEY_PATH]
    assert Path(second["file_mounts"][REMOTE_KEY_PATH]).read_text() == "rotated-key\n"


def test_concurrent_first_runs_generate_one_key_pair_and_all_use_it(home: Path) -> None:
    """Two `ray up`s on a fresh machine both find no default key: one key pair must result, whole, used by both."""
    from concurrent.futures import ThreadPoolExecutor

    from skyward_ray.provider.bootstrap import DEFAULT_SSH_KEY, ensure_key_pair

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: (lambda auth: (ensure_key_pair(auth), auth))({}), range(6)))
    private = DEFAULT_SSH_KEY.expanduser()
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True,
                             check=True).stdout
    assert {key_body(public) for public, _ in results} == {key_body(derived)}
    assert {auth["ssh_private_key"] for _, auth in results} == {str(private)}
    assert key_body(Path(f"{private}.pub").read_text()) == key_body(derived)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert [p.name for p in private.parent.iterdir() if p.name.startswith(".skyward-keygen-")] == []


def test_without_an_api_key_bootstrap_writes_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skyward_ray.vast.errors import CredentialsError

    monkeypatch.delenv("VAST_API_KEY")
    with pytest.raises(CredentialsError):
        bootstrap_config(_prepared())
    assert not (home / ".ssh" / "skyward-ray_ed25519").exists()


def test_a_fresh_account_without_ssh_keys_registers_its_key(home: Path) -> None:
    """Vast answers ``GET /ssh/`` with 404 "No SSH keys found for the user" on an account that has none: ray up must
    register the key, not stop there."""
    registered: list[str] = []

    def vast(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/api/v0/ssh/":
            if not registered:
                return httpx.Response(404, json={"success": False, "error": "not_found",
                                                 "msg": "No SSH keys found for the user"})
            return httpx.Response(200, json=[{"id": 1, "public_key": registered[0]}])
        if request.method == "POST" and request.url.path == "/api/v0/ssh/":
            registered.append(json.loads(request.content)["ssh_key"])
            return httpx.Response(200, json={"success": True, "key": {"id": 1, "public_key": registered[-1]}})
        return httpx.Response(500, json={"success": False, "error": "unexpected", "msg": str(request.url)})

    client = VastClient(api_key=API_KEY, base_url="http://10.213.0.1:8911", transport=httpx.MockTransport(vast))
    config = bootstrap_config(_prepared(ssh_private_key=str(home / ".ssh/id_test")), client=client)
    assert [key_body(key) for key in registered] == [key_body(PUBLIC_KEY)]
    assert config["provider"]["ssh_public_key"] == PUBLIC_KEY
    # A second ray up finds the key and registers nothing more.
    bootstrap_config(_prepared(ssh_private_key=str(home / ".ssh/id_test")), client=client)
    assert len(registered) == 1
