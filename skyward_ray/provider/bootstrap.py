"""What ``ray up`` needs on the laptop before the first node exists: :func:`bootstrap_config` validates the YAML,
records what the head must know, makes and registers the SSH key pair, stages the API key for the head only, and
ships this package to the nodes; :func:`prepare_head_config` derives the head's own config."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray

import skyward_ray
from skyward_ray.errors import ConfigError, SkywardError
from skyward_ray.provider.config import NodeTypeShape, VastNodeConfig, node_config_section, validate_cluster_config
from skyward_ray.provider.remote_install import SHIP_MARKER, shipped_files, tree_hash
from skyward_ray.provider.start_commands import fill_default_start_commands
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import resolve_api_key, resolve_base_url
from skyward_ray.vast.models import SshKey

log = logging.getLogger(__name__)

REMOTE_ROOT = "~/.skyward"
REMOTE_KEY_PATH = f"{REMOTE_ROOT}/vast_api_key"
REMOTE_PACKAGE_ROOT = f"{REMOTE_ROOT}/pkg"
DEFAULT_SSH_KEY = Path("~/.ssh/skyward-ray_ed25519")
DEFAULT_SSH_USER = "root"  # Vast containers log in as root
DISTRIBUTION = "skyward-ray"

# Top-level keys Ray reads from the YAML of an external provider without a default (reference 2.2): a missing one
# passes Ray's own checks and then fails in the middle of ``ray up`` with a KeyError.
REQUIRED_KEYS = (
    "cluster_name",
    "max_workers",
    "idle_timeout_minutes",
    "file_mounts",
    "cluster_synced_files",
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_node_type",
    "available_node_types",
)


def cache_dir() -> Path:
    """Where staged files live between runs (``$XDG_CACHE_HOME/skyward-ray``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "skyward-ray"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


# --- resources ------------------------------------------------------------------------------------------------------


def fill_node_resources(cluster_config: dict[str, Any]) -> dict[str, Any]:
    """Give each node type ``GPU`` (GPUs per node) and ``accelerator_type:<model>: 1``, unless the YAML sets them.

    Ray calls this before validating, and only logs what it raises, so bad node configs are skipped here and
    reported by :func:`bootstrap_config`.
    """
    for name, settings in (cluster_config.get("available_node_types") or {}).items():
        if not isinstance(settings, dict):
            continue
        try:
            node = VastNodeConfig.from_config(settings.get("node_config"), section=node_config_section(name))
        except ConfigError:
            continue
        resources = settings.setdefault("resources", {})
        if isinstance(resources, dict):
            resources.setdefault("GPU", node.gpus)
            resources.setdefault(node.accelerator_resource, 1)
    return cluster_config


# --- validation -----------------------------------------------------------------------------------------------------


def check_required_keys(cluster_config: Mapping[str, Any]) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in cluster_config]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: missing; a cluster YAML for an external provider must spell out "
            f"{', '.join(REQUIRED_KEYS)} (Ray fills in no defaults; use [] or {{}} where you need nothing)"
        )
    auth = cluster_config.get("auth")
    if auth is not None and not isinstance(auth, Mapping):
        raise ConfigError(f"auth: {auth!r} is not allowed (use a mapping with ssh_user, ssh_private_key)")
    if cluster_config.get("docker"):
        raise ConfigError("docker: is not allowed on Vast: instances are containers already (choose the image with "
                          "provider.docker_image)")


def validate(cluster_config: Mapping[str, Any]) -> tuple[Any, dict[str, NodeTypeShape]]:
    """Our checks of a prepared cluster config (no I/O): the provider section, node configs and required keys."""
    check_required_keys(cluster_config)
    return validate_cluster_config(cluster_config)


# --- SSH key --------------------------------------------------------------------------------------------------------


def key_body(public_key: str) -> str:
    """``type base64`` of an OpenSSH public key, without the comment (what makes two keys the same key)."""
    return " ".join(public_key.split()[:2])


def ensure_key_pair(auth: dict[str, Any]) -> str:
    """Make sure ``auth`` names a private key with a public half; generate ``~/.ssh/skyward-ray_ed25519`` when no key
    is given. Returns the public key text."""
    if "ssh_private_key" not in auth:
        private = DEFAULT_SSH_KEY.expanduser()
        if not private.exists():
            _generate_key_pair(private)
        auth["ssh_private_key"] = str(private)
    private = Path(auth["ssh_private_key"]).expanduser()
    if not private.is_file():
        raise ConfigError(f"auth.ssh_private_key: {auth['ssh_private_key']!r} is not allowed (no such file)")
    public_path = Path(auth.get("ssh_public_key") or f"{private}.pub").expanduser()
    if public_path.is_file():
        return public_path.read_text().strip()
    return _run(["ssh-keygen", "-y", "-f", str(private)]).strip()


def _generate_key_pair(private: Path) -> None:
    """Generate the default key pair so that two ``ray up`` runs on a fresh machine cannot collide (ssh-keygen fails
    on an existing file, and a half-written key would be worse): each generates in its own scratch directory and
    hard-links its private key into place; the first link wins, and a loser simply uses the winner's key."""
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=private.parent, prefix=".skyward-keygen-") as scratch:
        fresh = Path(scratch) / private.name
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "skyward-ray", "-f", str(fresh)])
        try:
            os.link(fresh, private)
        except FileExistsError:
            return  # another process generated it first; until its .pub lands, the public half is derived
        os.replace(f"{fresh}.pub", f"{private}.pub")
    log.info("generated SSH key %s", private)


def register_ssh_key(client: VastClient, public_key: str) -> SshKey | None:
    """Register ``public_key`` with the account unless it is there already. Returns the new key, or None."""
    wanted = key_body(public_key)
    if any(key.public_key and key_body(key.public_key) == wanted for key in client.list_ssh_keys()):
        return None
    return client.create_ssh_key(public_key)


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise SkywardError(f"{cmd[0]} is not installed (Debian: apt-get install openssh-client)")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SkywardError(f"{' '.join(cmd[:2])} failed: {result.stderr.strip()[:300]}")
    return result.stdout


# --- the API key as a file mount ------------------------------------------------------------------------------------


def stage_api_key(api_key: str, cluster_name: str) -> Path:
    """Write the key to a 0600 file in a 0700 directory, to be copied to the head as ``REMOTE_KEY_PATH``."""
    directory = cache_dir() / "keys"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    path = directory / f"{hashlib.sha256(cluster_name.encode()).hexdigest()[:16]}.key"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(api_key + "\n")
    os.chmod(path, 0o600)
    return path


# --- shipping the package -------------------------------------------------------------------------------------------


def requirements() -> list[str]:
    """This distribution's requirements besides Ray (which is pinned to the laptop's version separately)."""
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise SkywardError(f"{DISTRIBUTION} is not installed (pip install -e .), so its requirements are "
                           "unknown") from None
    result = []
    for text in declared:
        spec, _, marker = text.partition(";")
        name = re.match(r"\s*([A-Za-z0-9._-]+)", spec)
        if "extra" in marker or name is None or name.group(1).lower() == "ray":
            continue  # optional extras; Ray is pinned to this laptop's version instead
        result.append(spec.strip())
    return result


def stage_package() -> tuple[Path, str]:
    """Copy the installed ``skyward_ray`` package to ``<cache>/ship/<name>/skyward_ray``; return (dir, hash)."""
    source = Path(skyward_ray.__file__).resolve().parent
    digest = tree_hash(source)
    target = cache_dir() / "ship" / f"skyward_ray-{skyward_ray.__version__}-{digest[:12]}"
    if not (target / SHIP_MARKER).exists():
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for path in shipped_files(source):
            destination = staging / "skyward_ray" / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        (staging / SHIP_MARKER).write_text(digest + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    _prune_shipped(keep=target)
    return target, digest


def _prune_shipped(keep: Path, newest: int = 3) -> None:
    """Drop staged copies of older code, keeping the few newest (a cached ray config may still name them)."""
    others = sorted((p for p in keep.parent.glob("skyward_ray-*") if p != keep and p.is_dir()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[newest - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def install_command(remote_dir: str, digest: str) -> str:
    """The setup command that installs the shipped copy (``remote_dir`` starts with ``~/``)."""
    remote = '"$HOME/' + remote_dir.removeprefix("~/") + '"'
    script = '"$HOME/' + remote_dir.removeprefix("~/") + '/skyward_ray/provider/remote_install.py"'
    args = [f"--hash={digest}", f"--version={skyward_ray.__version__}", f"--ray-version={ray.__version__}"]
    return " ".join(["python", script, f"--ship={remote}", *args, *(shlex.quote(r) for r in requirements())])


# --- the hooks Ray calls --------------------------------------------------------------------------------------------


def bootstrap_config(cluster_config: dict[str, Any], *, client: VastClient | None = None) -> dict[str, Any]:
    """Ray's ``bootstrap_config`` (its result is cached in ``/tmp/ray-config-*`` until ``--no-config-cache``).
    Returns a new config that:

    1. is validated: ``provider:``, every ``node_config`` and the top-level keys Ray needs from an external provider;
    2. tells the head what it must know in the provider section: ``api_url`` (from ``VAST_URL`` when not given, so
       the head talks to the same API), the SSH public key, and the cluster's node types (the head plans for its
       workers too);
    3. has an ``auth`` key pair (generated when none is given) whose public half is registered with the account once;
    4. mounts the API key as a 0600 file on the head only (:func:`prepare_head_config` removes it from the config the
       head uses for its workers); the key is never in the config itself;
    5. ships this package to the nodes and installs it there, pinned to the laptop's Ray version
       (:mod:`skyward_ray.provider.remote_install`);
    6. has the default start commands (:mod:`skyward_ray.provider.start_commands`) where the YAML leaves them out."""
    config = copy.deepcopy(cluster_config)
    provider_model, shapes = validate(config)
    provider = config["provider"]
    provider.setdefault("api_url", provider_model.api_url or resolve_base_url(None))

    api_key = _read_api_key(provider_model.api_key_file)  # first: without a key, nothing is written anywhere
    auth = config.setdefault("auth", {})
    auth.setdefault("ssh_user", DEFAULT_SSH_USER)
    public_key = ensure_key_pair(auth)
    provider["ssh_public_key"] = public_key
    provider["node_types"] = {name: shape.model_dump(mode="json") for name, shape in shapes.items()}

    own_client = client is None
    client = client or VastClient(api_key=api_key, base_url=provider["api_url"],
                                  rate_scale=provider_model.api_rate_scale)
    try:
        if register_ssh_key(client, public_key) is not None:
            log.info("registered the SSH key %s with the Vast account", key_body(public_key)[:40] + "...")
    finally:
        if own_client:
            client.close()

    mounts = config.setdefault("file_mounts", {})
    mounts[REMOTE_KEY_PATH] = str(stage_api_key(api_key, config["cluster_name"]))
    package_dir, digest = stage_package()
    remote_dir = f"{REMOTE_PACKAGE_ROOT}/{package_dir.name}"
    mounts[remote_dir] = str(package_dir)
    install = install_command(remote_dir, digest)
    for key in ("head_setup_commands", "worker_setup_commands"):
        config[key] = [install, *(config.get(key) or [])]
    for settings in config["available_node_types"].values():
        if isinstance(settings, dict) and settings.get("worker_setup_commands") is not None:
            settings["worker_setup_commands"] = [install, *settings["worker_setup_commands"]]
    fill_default_start_commands(config)
    return config


def _read_api_key(api_key_file: str | None) -> str:
    if api_key_file:
        path = Path(api_key_file).expanduser()
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return resolve_api_key(None)


def prepare_head_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
    """Ray's ``prepare_for_head_node`` (the config the head's autoscaler uses): the provider reads the key from the
    mounted file, and the key's mount is dropped so the head never copies the account key to workers."""
    cluster_config.setdefault("provider", {})["api_key_file"] = REMOTE_KEY_PATH
    cluster_config.get("file_mounts", {}).pop(REMOTE_KEY_PATH, None)
    return cluster_config
