"""The package as users install it: ``pip install .`` and ``pip install -e .`` into clean virtual environments, with the
metadata from setup.cfg (extras, entry point, package data) intact and no deprecation warning from our configuration.

Installs use ``--no-deps`` (Ray and friends are not what is under test, and that keeps this fast) and a local
wheelhouse for the build requirements (setuptools, wheel): it is filled once from the package index, after which the
test runs offline. The source is a copy of the tracked files, so builds leave nothing in the working tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_REQUIREMENTS = ("setuptools>=69", "wheel")
PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, sys
dist = md.distribution("skyward-ray")
spec = importlib.util.find_spec("skyward_ray")  # finds the package without importing it (its dependencies are absent)
package = list(spec.submodule_search_locations)[0]
print(json.dumps({
    "version": dist.version,
    "extras": dist.metadata.get_all("Provides-Extra"),
    "requires": dist.requires,
    "license": dist.metadata["License"],
    "python": dist.metadata["Requires-Python"],
    "scripts": [[ep.name, ep.value] for ep in dist.entry_points if ep.group == "console_scripts"],
    "script_file": os.path.exists(os.path.join(os.path.dirname(sys.executable), "skyward-ray")),
    "netns_init": os.path.exists(os.path.join(package, "emulator", "netns", "init.sh")),
    "package": package,
}))
"""
# What `skyward-ray demo` runs, resolved the way the demo resolves it (skyward_ray.demo needs none of the dependencies).
DEMO_PROBE = r"""
import json
from skyward_ray.demo import CLUSTER_CONFIG, JOB
print(json.dumps({"config": str(CLUSTER_CONFIG), "job": str(JOB), "config_text": CLUSTER_CONFIG.read_text(),
                  "job_text": JOB.read_text()}))
"""
DEMO_FILES = ("skyward_ray/demo/emulator.yaml", "skyward_ray/demo/demo_job.py", "skyward_ray/emulator/netns/init.sh")


def _run(*argv: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONWARNINGS": "always"})
    assert result.returncode == 0, f"{argv}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """setuptools and wheel as wheel files: fetched once, then every build here is offline (``--no-index``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skyward-ray" / "build-wheels"
    if not any(cache.glob("setuptools-*.whl")) or not any(cache.glob("wheel-*.whl")):
        cache.mkdir(parents=True, exist_ok=True)
        _run(sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--dest", cache, *BUILD_REQUIREMENTS)
    return cache


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what a build reads: the two configuration files, the README and the tracked package files."""
    tree = tmp_path_factory.mktemp("source")
    listed = _run("git", "-C", REPO, "ls-files", "skyward_ray").split()
    for name in ("pyproject.toml", "setup.cfg", "README.md", *listed):
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return tree


def _install(tmp_path: Path, wheelhouse: Path, *target: str | Path) -> tuple[dict[str, object], str]:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    log = _run(python, "-m", "pip", "install", "-v", "--no-deps", "--no-index", "--find-links", wheelhouse, *target)
    # -I: isolated, so neither the current directory nor PYTHONPATH can put the repo's own package in its place
    found = json.loads(_run(python, "-I", "-c", PROBE, cwd=tmp_path).strip().splitlines()[-1])
    found["demo"] = json.loads(_run(python, "-I", "-c", DEMO_PROBE, cwd=tmp_path).strip().splitlines()[-1])
    return found, log


def _check(found: dict[str, object], log: str) -> None:
    assert found["version"] == "0.1.0" and found["python"] == ">=3.11" and found["license"] == "Apache-2.0"
    assert found["extras"] == ["test", "torch", "train", "examples"]
    requires = found["requires"]
    assert isinstance(requires, list)
    for needed in ('ray[default]==2.60.*', 'click>=8', 'vastai==1.9.1; extra == "test"',
                   'torch==2.13.0; extra == "torch"', 'transformers; extra == "examples"',
                   'ray[train]==2.60.*; extra == "train"', 'moto[server]>=5; extra == "test"'):
        assert needed in requires, requires
    assert found["scripts"] == [["skyward-ray", "skyward_ray.cli:main"]] and found["script_file"]
    assert found["netns_init"], "package data (the namespace init script) is installed"
    demo = found["demo"]
    assert isinstance(demo, dict)
    for key in ("config", "job"):  # the installed package's own files, not the repository's
        assert Path(demo[key]).is_relative_to(str(found["package"])), demo[key]
    assert "cluster_name: emulator" in demo["config_text"] and "max_workers:" in demo["config_text"]
    assert "placement_group" in demo["job_text"] and "STRICT_SPREAD" in demo["job_text"]
    ours = [line for line in log.splitlines() if "deprecat" in line.lower() and "pip" not in line.lower()]
    assert not ours, ours


def test_pip_install(tmp_path: Path, wheelhouse: Path, source: Path) -> None:
    found, log = _install(tmp_path, wheelhouse, source)
    _check(found, log)
    assert "site-packages" in str(found["package"])


def test_the_wheel_ships_the_demo_and_the_init_script(tmp_path: Path, wheelhouse: Path, source: Path) -> None:
    """``pip install`` + ``skyward-ray demo`` needs no checkout: the wheel holds the demo's config and job."""
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--find-links", wheelhouse,
         "--wheel-dir", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("skyward_ray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DEMO_FILES) <= names, sorted(n for n in names if "demo" in n or n.endswith(".sh"))
    found, log = _install(tmp_path, wheelhouse, wheel)
    _check(found, log)
    assert "site-packages" in str(found["package"])


def test_pip_install_editable(tmp_path: Path, wheelhouse: Path, source: Path) -> None:
    found, log = _install(tmp_path, wheelhouse, "-e", source)
    _check(found, log)
    assert Path(str(found["package"])) == source / "skyward_ray", "the editable install points at the source"


def test_each_fact_lives_in_one_file() -> None:
    """pyproject.toml: the build system and the tools; setup.cfg: the package. Nothing in both."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(pyproject) == {"build-system", "tool"}
    assert "setuptools" not in pyproject["tool"], "setuptools options belong in setup.cfg"
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert {"metadata", "options", "options.extras_require", "options.entry_points"} <= set(setup.sections())
    assert not any(section.startswith("tool:") for section in setup.sections()), "tool settings live in pyproject"
