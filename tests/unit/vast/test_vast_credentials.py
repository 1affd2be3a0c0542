"""The key and server are found where the official client finds them, in the same order, and never shown."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.fake_vast_http import API_KEY

from skyward_ray.errors import ConfigError
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import (
    DEFAULT_BASE_URL,
    ApiKey,
    redact,
    resolve_api_key,
    resolve_base_url,
)
from skyward_ray.vast.errors import CredentialsError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME with no key anywhere and no Vast variables."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("VAST_API_KEY", "XDG_CONFIG_HOME", "VAST_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_explicit_key_wins_over_everything(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "from-env")
    _write(home / ".config/vastai/vast_api_key", "from-xdg")
    _write(home / ".vast_api_key", "from-legacy")
    assert resolve_api_key("  explicit \n") == "explicit"


def test_env_wins_over_files(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", " from-env\n")
    _write(home / ".config/vastai/vast_api_key", "from-xdg")
    assert resolve_api_key() == "from-env"


def test_default_config_file_wins_over_legacy(home: Path) -> None:
    _write(home / ".config/vastai/vast_api_key", "from-xdg\n")
    _write(home / ".vast_api_key", "from-legacy")
    assert resolve_api_key() == "from-xdg"


def test_xdg_config_home_is_honoured(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "elsewhere"))
    _write(home / "elsewhere/vastai/vast_api_key", "from-custom-xdg")
    _write(home / ".config/vastai/vast_api_key", "from-default-xdg")
    assert resolve_api_key() == "from-custom-xdg"


def test_relative_xdg_config_home_is_ignored_as_the_spec_says(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    _write(home / ".config/vastai/vast_api_key", "from-default-xdg")
    assert resolve_api_key() == "from-default-xdg"


def test_legacy_file_is_the_last_resort(home: Path) -> None:
    _write(home / ".vast_api_key", "\tfrom-legacy  \n")
    assert resolve_api_key() == "from-legacy"


def test_blank_sources_are_skipped(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "   ")
    _write(home / ".config/vastai/vast_api_key", "\n\n")
    _write(home / ".vast_api_key", "from-legacy")
    assert resolve_api_key() == "from-legacy"


def test_missing_key_says_where_it_looked(home: Path) -> None:
    with pytest.raises(CredentialsError) as caught:
        resolve_api_key()
    message = str(caught.value)
    assert "VAST_API_KEY" in message
    assert str(home / ".config/vastai/vast_api_key") in message
    assert str(home / ".vast_api_key") in message


def test_empty_explicit_key_is_an_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "from-env")
    with pytest.raises(CredentialsError, match="api_key"):
        resolve_api_key("  ")


def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAST_API_KEY", "two words-SECRETPART")
    with pytest.raises(CredentialsError) as caught:
        resolve_api_key()
    assert "SECRETPART" not in str(caught.value)
    assert "$VAST_API_KEY" in str(caught.value)


def test_unreadable_key_file_is_a_credentials_error(home: Path) -> None:
    (home / ".config/vastai/vast_api_key").mkdir(parents=True)  # a directory: reading it fails
    with pytest.raises(CredentialsError, match="cannot read"):
        resolve_api_key()


def test_base_url_order_and_trailing_slash(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_url() == DEFAULT_BASE_URL == "https://console.vast.ai"
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:8080/")
    assert resolve_base_url() == "http://127.0.0.1:8080"
    assert resolve_base_url("https://cloud.vast.ai//") == "https://cloud.vast.ai"


@pytest.mark.parametrize("bad", ["ftp://x", "console.vast.ai", "http://", "http://h/?api_key=1"])
def test_bad_base_url_names_the_field_and_what_is_allowed(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"base_url .* is not allowed: use an http:// or https:// URL") as caught:
        resolve_base_url(bad)
    assert "api_key=1" not in str(caught.value)


def test_client_without_arguments_uses_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", API_KEY)
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:18081/")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": 1, "credit": 3.5})

    with VastClient(transport=httpx.MockTransport(handler)) as client:
        assert client.base_url == "http://127.0.0.1:18081"
        assert client.current_user().credit == pytest.approx(3.5)
    assert str(seen[0].url) == "http://127.0.0.1:18081/api/v0/users/current/"
    assert seen[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in repr(client)


def test_api_key_wrapper_and_redact() -> None:
    key = ApiKey(API_KEY)
    assert API_KEY not in repr(key) and API_KEY not in str(key) and API_KEY not in f"{key}"
    assert key.reveal() == API_KEY
    assert key == ApiKey(API_KEY) and key != ApiKey("other")
    text = f"GET http://h/api/v0/x/?api_key={API_KEY}&owner=me said {API_KEY}; other api_key=zzz"
    scrubbed = redact(text, key)
    assert API_KEY not in scrubbed and "zzz" not in scrubbed
    assert "owner=me" in scrubbed
