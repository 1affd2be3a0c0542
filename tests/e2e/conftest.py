"""Shared e2e fixtures: the host checks (which FAIL, never skip), netns runtimes that are always torn down, SSH (the
helpers behind them are in tests/support/netns_host.py).

Every runtime made here gets its own name prefix and its own public subnet, so e2e runs on one machine (or a live
emulator with the default ``skyr`` prefix) never collide, and the leftover check after each test can look for exactly
that prefix. The leftover check is independent of the runtime's own bookkeeping: it asks the kernel and the disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.netns_host import (
    E2E_TOOLS,
    SEARCH_PATH,
    NetnsKit,
    SshKey,
    free_public_subnet,
    leftovers,
    make_ssh_key,
    unique_prefix,
)

from skyward_ray.emulator.netns import NetnsRuntime, clean_leftovers
from skyward_ray.emulator.server import EmulatorServer


@pytest.fixture(scope="session")
def netns_host() -> None:
    """Fail loudly (not skip) when this machine cannot run the netns runtime: a skipped e2e test proves nothing."""
    problems = []
    if not sys.platform.startswith("linux"):
        problems.append(f"needs Linux, this is {sys.platform}")
    elif os.geteuid() != 0:
        problems.append("needs root (network namespaces, bridges, sshd)")
    problems += [f"missing {tool} (apt-get install {package})" for tool, package in E2E_TOOLS.items()
                 if shutil.which(tool, path=SEARCH_PATH) is None]
    if problems:
        pytest.fail("e2e host check failed: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def make_netns_runtime(netns_host: None) -> Iterator[Callable[..., NetnsRuntime]]:
    """Make runtimes with fresh prefixes and subnets; at teardown close each, and fail the test if anything is left.

    A test that drops a runtime on purpose (a simulated crash) cleans up with ``clean_leftovers`` itself; the
    teardown still sweeps every prefix it handed out, so a failing test never leaves namespaces or processes.
    """
    made: list[tuple[str, NetnsRuntime | None]] = []

    def make(**kwargs: object) -> NetnsRuntime:
        prefix = str(kwargs.pop("prefix", unique_prefix()))
        made.append((prefix, None))
        runtime = NetnsRuntime(prefix=prefix, public_subnet=str(kwargs.pop("public_subnet", free_public_subnet())),
                               **kwargs)  # type: ignore[arg-type]
        made[-1] = (prefix, runtime)
        return runtime

    yield make

    problems = []
    for prefix, runtime in made:
        if runtime is not None:
            with contextlib.suppress(Exception):
                runtime.close()
        left = leftovers(prefix)
        if left:
            problems.append(f"{prefix}: {left}")
            clean_leftovers(prefix)
    if problems:
        pytest.fail("runtime left things behind after close(): " + "; ".join(problems), pytrace=False)


@pytest.fixture
def netns_runtime(make_netns_runtime: Callable[..., NetnsRuntime]) -> NetnsRuntime:
    return make_netns_runtime()


@pytest.fixture
def make_netns_emulator(make_netns_runtime: Callable[..., NetnsRuntime]) -> Iterator[Callable[..., EmulatorServer]]:
    """Start in-process emulators (``EmulatorServer(**kwargs)``), each on a fresh netns runtime; at teardown stop each
    (it destroys what its runtime holds), then ``make_netns_runtime`` checks that nothing is left."""
    servers: list[EmulatorServer] = []

    def make(**kwargs: Any) -> EmulatorServer:
        server = EmulatorServer(runtime=make_netns_runtime(), **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    return make_ssh_key(tmp_path_factory.mktemp("ssh"))


@pytest.fixture(scope="session")
def netns_kit() -> NetnsKit:
    return NetnsKit()
