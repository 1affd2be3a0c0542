"""Secrets in the small (no network, no processes): reprs, error messages and key files.

The whole-lifecycle search against the emulator lives in ``tests/emulator/test_secrets_provider.py``; this file pins
the pieces one by one, so a regression names its culprit: every object that holds a key prints without it, every
error about a bad value that may be a secret masks it, nothing sends the account key toward an instance, and the key
file ray up stages is 0600 in a 0700 directory whatever the umask or an older file's mode was.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import skyward_ray as sky
from skyward_ray.errors import ConfigError
from skyward_ray.placement.options import PlacementOptions
from skyward_ray.provider.bootstrap import stage_api_key
from skyward_ray.provider.config import VastNodeConfig, VastProviderConfig
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import ApiKey, resolve_api_key, resolve_base_url
from skyward_ray.vast.errors import VastError

KEY = "acct-5ecret-7e1f0c2a9b8d4e6f-a1b2c3d4e5f60718293a4b5c6d7e8f90-NEVER-LEAK"
PROVIDER = {"type": "external", "module": "skyward_ray.provider.VastNodeProvider"}


def shows_key(text: str) -> bool:
    return KEY in text or KEY[:24] in text or KEY[-24:] in text


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def sent() -> list[httpx.Request]:
    return []


@pytest.fixture
def client(sent: list[httpx.Request]) -> Iterator[VastClient]:
    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"success": True, "new_contract": 1})

    with VastClient(KEY, "http://127.0.0.1:18080", transport=httpx.MockTransport(answer), retry_deadline_s=0) as c:
        yield c


# --- objects that hold a key print without it --------------------------------------------------------------------


def test_objects_holding_the_key_never_print_it(client: VastClient) -> None:
    vast = sky.VastAI(api_key=KEY, max_hourly_cost=3.0)
    pool = sky.ComputePool(provider=vast, accelerator="RTX 4090", nodes=2)
    for text in (repr(ApiKey(KEY)), str(ApiKey(KEY)), f"{ApiKey(KEY)}", repr(client), repr(vast), str(vast),
                 f"{vast!s}", vast.model_dump_json(), repr(vast.model_dump()), repr(pool.spec), repr(pool),
                 json.dumps(pool.spec.model_dump(mode="json"), default=str)):
        assert not shows_key(text), text
    provider = VastNodeProvider({**PROVIDER, "api_url": "http://127.0.0.1:18080"}, "c", client=client,
                                start_threads=False)
    assert not shows_key(repr(provider)) and not shows_key(repr(provider.config))


# --- errors about a bad value that may be a secret mask it ------------------------------------------------------


SECRET_VALUE_ERRORS: list[tuple[str, Callable[[], Any]]] = [
    ("a key put in the provider section", lambda: VastProviderConfig.from_config({**PROVIDER, "api_key": KEY})),
    ("a key file path of the wrong type",
     lambda: VastProviderConfig.from_config({**PROVIDER, "api_key_file": [KEY]})),
    ("a secret-named env entry of the wrong type",
     lambda: VastNodeConfig.from_config({"accelerator": "RTX 4090", "env": {"HF_TOKEN": [KEY]}}, section="nc")),
    ("a bad env name next to a secret value",
     lambda: VastNodeConfig.from_config({"accelerator": "RTX 4090", "env": {"HF_TOKEN": KEY, "-e": "x"}},
                                        section="nc")),
    ("sky.Image env: a bad name next to a secret value", lambda: sky.Image(env={"HF_TOKEN": KEY, "bad name": "v"})),
    ("sky.VastAI api_key of the wrong type", lambda: sky.VastAI(api_key=[KEY])),
    ("sky.VastAI with a key and another bad value", lambda: sky.VastAI(api_key=KEY, min_reliability=7)),
    ("a key with a space in it", lambda: resolve_api_key(f"{KEY} x")),
    ("a key in VAST_URL's query", lambda: resolve_base_url(f"https://console.vast.ai/?api_key={KEY}")),
    ("a key in the provider's api_url query",
     lambda: VastProviderConfig.from_config({**PROVIDER, "api_url": f"https://console.vast.ai/?api_key={KEY}"})),
    ("placement options given a key-named field", lambda: PlacementOptions.from_config({"api_key": KEY})),
]


@pytest.mark.parametrize(("case", "make"), SECRET_VALUE_ERRORS, ids=[c for c, _ in SECRET_VALUE_ERRORS])
def test_an_error_about_a_bad_value_never_shows_a_secret(case: str, make: Callable[[], Any]) -> None:
    with pytest.raises((ConfigError, VastError)) as caught:
        make()
    text = f"{caught.value}\n{caught.value!r}"
    assert not shows_key(text), f"{case}: {text}"


# --- nothing sends the account key toward an instance or a label ------------------------------------------------


@pytest.mark.parametrize("where", ["label", "env value", "env key", "onstart", "args", "extra"])
def test_the_client_refuses_to_send_the_key_into_an_instance(client: VastClient, sent: list[httpx.Request],
                                                            where: str) -> None:
    fields: dict[str, Any] = {"label": "ok"}
    if where == "label":
        fields["label"] = f"x{KEY}"
    elif where == "env value":
        fields["env"] = {"TOKEN": KEY}
    elif where == "env key":
        fields["env"] = {f"-e X={KEY}": "1"}
    elif where == "onstart":
        fields["onstart"] = f"export T={KEY}"
    elif where == "args":
        fields["args"] = ["--token", KEY]
    else:
        fields["extra"] = {"template_hash_id": KEY}
    with pytest.raises(ConfigError) as caught:
        client.create_instance(7, image="vastai/base", disk_gb=10, **fields)
    assert not shows_key(str(caught.value)) and sent == []


def test_the_client_refuses_a_label_with_the_key(client: VastClient, sent: list[httpx.Request]) -> None:
    with pytest.raises(ConfigError) as caught:
        client.set_label(7, f"skyr1:c;k=!w;x={KEY}")
    assert not shows_key(str(caught.value)) and sent == []


# --- the key file ray up stages ------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_staged_key_is_0600_in_0700_even_with_an_open_umask(cache: Path, open_umask: None) -> None:
    path = stage_api_key(KEY, "cluster")
    assert path.read_text().strip() == KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "skyward-ray").stat().st_mode) & 0o077 == 0


def test_staged_key_tightens_an_older_world_readable_file_and_directory(cache: Path, open_umask: None) -> None:
    first = stage_api_key("old-key", "cluster")
    first.chmod(0o644)
    first.parent.chmod(0o755)
    again = stage_api_key(KEY, "cluster")
    assert again == first and again.read_text() == KEY + "\n"
    assert stat.S_IMODE(again.stat().st_mode) == 0o600
    assert stat.S_IMODE(again.parent.stat().st_mode) == 0o700


def test_staged_key_files_of_two_clusters_do_not_collide(cache: Path) -> None:
    a, b = stage_api_key("key-a", "cluster-a"), stage_api_key("key-b", "cluster-b")
    assert a != b and a.read_text() == "key-a\n" and b.read_text() == "key-b\n"
    assert "cluster" not in a.name  # the name is a hash: the file name tells nothing
