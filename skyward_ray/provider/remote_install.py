"""Install the shipped skyward-ray on a node (run by the setup commands, from the shipped copy: standard library only).

Nothing happens when the importable package has the same content, or is a development install of the same version
with the laptop's Ray (the emulator's nodes share the host's venv, which must never be pip-installed into). Otherwise,
under a file lock, it installs the requirements with Ray pinned and puts the shipped copy on ``sys.path``."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

SHIPPED_SUFFIXES = (".py", ".yaml", ".json", ".sh", ".md")
PTH_NAME = "skyward_ray_shipped.pth"
SHIP_MARKER = ".skyward-ship"  # a shipped copy's root holds this file


def shipped_files(package_dir: Path) -> list[Path]:
    """The files that make up the package, as shipped: sources and data, no caches."""
    return sorted(
        path
        for path in package_dir.rglob("*")
        if path.is_file() and path.suffix in SHIPPED_SUFFIXES and "__pycache__" not in path.parts
    )


def tree_hash(package_dir: Path) -> str:
    """A hash of the package's shipped files (names and contents): equal hashes mean the same code."""
    digest = hashlib.sha256()
    for path in shipped_files(package_dir):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _installed() -> tuple[Path | None, str | None, str | None]:
    """(package dir, skyward_ray version, ray version) as a fresh interpreter sees them."""
    probe = (
        "import json, os\n"
        "out = {}\n"
        "try:\n"
        "    import skyward_ray\n"
        "    out['dir'] = os.path.dirname(skyward_ray.__file__); out['v'] = skyward_ray.__version__\n"
        "except Exception: pass\n"
        "try:\n"
        "    import ray; out['ray'] = ray.__version__\n"
        "except Exception: pass\n"
        "print(json.dumps(out))\n"
    )
    import json

    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False,
                            cwd="/")  # not the ship dir: it must not shadow what is installed
    try:
        found = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, None, None
    package = Path(found["dir"]) if found.get("dir") else None
    return package, found.get("v"), found.get("ray")


def already_installed(package: Path | None, version: str | None, ray_version: str | None, *, want_hash: str,
                      want_version: str, want_ray: str) -> str | None:
    """Why nothing needs installing (rules 1 and 2 of the module docstring), or None when something does."""
    if package is None or ray_version != want_ray:
        return None
    if tree_hash(package) == want_hash:
        return f"skyward-ray {version} with Ray {ray_version} already installed at {package}"
    if version == want_version and not (package.parent / SHIP_MARKER).exists():
        return (f"skyward-ray {version} (a development install at {package}) and Ray {ray_version} present: "
                "leaving them as they are")
    return None


@contextlib.contextmanager
def _environment_lock() -> Iterator[None]:
    path = Path(sys.prefix) / ".skyward-install.lock"
    try:
        handle = path.open("a")
    except OSError:
        handle = (Path.home() / ".skyward-install.lock").open("a")
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="install a shipped skyward-ray on this node")
    parser.add_argument("--ship", required=True, help="the shipped copy's root (holds skyward_ray/)")
    parser.add_argument("--hash", required=True, help="tree_hash of the shipped package")
    parser.add_argument("--version", required=True, help="the shipped skyward-ray version")
    parser.add_argument("--ray-version", required=True, help="the laptop's Ray version")
    parser.add_argument("requirements", nargs="*", help="the package's requirements besides Ray")
    args = parser.parse_args(argv)
    ship = Path(os.path.expanduser(args.ship)).resolve()

    reason = already_installed(*_installed(), want_hash=args.hash, want_version=args.version,
                               want_ray=args.ray_version)
    if reason:
        print(reason)
        return 0

    with _environment_lock():
        reason = already_installed(*_installed(), want_hash=args.hash, want_version=args.version,
                                   want_ray=args.ray_version)
        if reason:  # another node sharing this environment installed it while we waited
            print(reason)
            return 0
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               f"ray[default]=={args.ray_version}", *args.requirements]
        print("installing:", " ".join(pip[5:]), flush=True)
        subprocess.run(pip, check=True)
        site_packages = Path(sysconfig.get_paths()["purelib"])
        (site_packages / PTH_NAME).write_text(f"{ship}\n")
    package, version, ray_version = _installed()
    if package is None or package.resolve().parent != ship or ray_version != args.ray_version:
        print(f"skyward-ray install check failed: imports {package} (version {version}), Ray {ray_version}",
              file=sys.stderr)
        return 1
    print(f"skyward-ray {version} installed from {ship} with Ray {ray_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
