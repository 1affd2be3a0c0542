"""Ray's cluster launcher SDK for a Vast pool, run as a child process: ``python -m skyward_ray.sky.cluster_sdk``.

    up   --config C --events E --deadline T   create_or_update_cluster, then wait for every worker; report the head
    down --config C --events E --deadline T   teardown_cluster, then check that nothing of the cluster is left
A child of its own session keeps Ray's launcher output, module state and blocking threads out of the user's process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

WORKER_POLL_S = 1.0
# Where ``ray start --head`` records the GCS address (Ray's default temp dir on the node): its host is the address
# Ray, and so the Ray Client server on port 10001, listens on.
HEAD_ADDRESS_FILE = "/tmp/ray/ray_current_cluster"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Events:
    """Appends JSON lines to the events file, one writer at a time, flushed at once (the parent tails it).

    ``{"event": "step", "step": "<Ray's CreateClusterEvent name>"}`` while the head comes up, ``{"event": "workers",
    "up": k, "wanted": n, "statuses": {...}}`` as workers join, then exactly one of ``{"event": "done", ...}`` or
    ``{"event": "error", "message": ...}``. Ray's side uses only its SDK, its event system and the ``NodeProvider``
    Ray loads from the config (``non_terminated_nodes``, ``node_tags``, ``get_command_runner``).
    """

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields}, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


class EventReader:
    """The parent's side of :class:`Events`: the complete JSON lines appended to the file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        found = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found


def log_tail(path: Path, lines: int = 8) -> str:
    """The last non-empty lines of a child's log on one line, without Ray's colour codes (for an error message)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    clean = [line for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return " | ".join(clean[-lines:]) or "(empty log)"


def _provider(config: dict[str, Any]) -> Any:
    from ray.autoscaler._private.providers import _get_node_provider

    return _get_node_provider(config["provider"], config["cluster_name"])


def _watch_steps(events: Events) -> None:
    """Report Ray's head-provisioning steps (its SDK event hooks) as they happen."""
    from ray.autoscaler._private.event_system import CreateClusterEvent
    from ray.autoscaler.sdk import register_callback_handler

    for step in CreateClusterEvent:
        register_callback_handler(step, lambda data, name=step.name: events.emit("step", step=name, data=_plain(data)))


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k): v for k, v in data.items() if isinstance(v, str | int | float | bool)}
    return None


def _head_id(provider: Any) -> str:
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND

    heads = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD})
    if len(heads) != 1:
        raise RuntimeError(f"expected one head node after ray up, found {heads}")
    return str(heads[0])


def _head_address(provider: Any, config: dict[str, Any], head_id: str) -> str:
    """The head's Ray address (``ip:port``), read on the head through Ray's own command runner for it."""
    runner = provider.get_command_runner(
        "skyward-pool", head_id, config["auth"], config["cluster_name"], subprocess, use_internal_ip=False
    )
    output = runner.run(f"cat {HEAD_ADDRESS_FILE}", with_output=True, run_env="host")
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    lines = [line.strip() for line in text.splitlines() if ":" in line.strip()]
    if not lines:
        raise RuntimeError(f"the head has no Ray address in {HEAD_ADDRESS_FILE}: {text.strip()[:200]!r}")
    return lines[-1]


def _wait_for_workers(provider: Any, wanted: int, deadline: float, events: Events) -> None:
    """Until ``wanted`` workers are up to date (Ray running on them), reporting each change of the counts."""
    from ray.autoscaler.tags import NODE_KIND_WORKER, STATUS_UP_TO_DATE, TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS

    last: dict[str, int] | None = None
    while True:
        workers = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
        statuses = dict(Counter(provider.node_tags(node).get(TAG_RAY_NODE_STATUS, "rented") for node in workers))
        up = statuses.get(STATUS_UP_TO_DATE, 0)
        if statuses != last:
            events.emit("workers", up=up, wanted=wanted, statuses=statuses)
            last = statuses
        if up >= wanted:
            return
        if time.time() >= deadline:
            shown = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "none rented"
            raise TimeoutError(f"{up} of {wanted} worker(s) had Ray running when the provision timeout ran out "
                               f"(workers: {shown})")
        time.sleep(WORKER_POLL_S)


def up(config: dict[str, Any], events: Events, deadline: float) -> dict[str, Any]:
    from ray.autoscaler.sdk import create_or_update_cluster

    _watch_steps(events)
    resolved = create_or_update_cluster(config, no_config_cache=True)
    provider = _provider(resolved)
    head_id = _head_id(provider)
    events.emit("head", head_id=head_id)
    workers = int(resolved["available_node_types"].get("worker", {}).get("min_workers", 0))
    if workers:
        _wait_for_workers(provider, workers, deadline, events)
    return {"head_id": head_id, "head_address": _head_address(provider, resolved, head_id)}


def down(config: dict[str, Any], events: Events) -> dict[str, Any]:
    from ray.autoscaler.sdk import teardown_cluster

    teardown_cluster(config)
    # teardown_cluster only logs a failed cleanup; this raises when an instance or the overlay is still there.
    provider = _provider(config)
    cleanup = getattr(provider, "cleanup_cluster_resources", None)
    if cleanup is not None:
        cleanup()
    return {}


def main(argv: list[str] | None = None) -> int:
    """Run one action and report it in the events file.

    Why a child process: Ray's launcher prints its own CLI output (and the SSH output of every setup command) to
    stdout, keeps module-level state (the CLI logger's settings, the event system, cached providers), and blocks in
    threads that a Ctrl-C cannot stop cleanly. Here it writes to a log file, keeps its state to itself, never sees the
    terminal's Ctrl-C, and can be ended by its process group.
    """
    parser = argparse.ArgumentParser(prog="python -m skyward_ray.sky.cluster_sdk")
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--config", type=Path, required=True, help="the cluster config, JSON")
    parser.add_argument("--events", type=Path, required=True, help="where to append JSON event lines")
    parser.add_argument("--deadline", type=float, required=True, help="Unix time by which to give up")
    args = parser.parse_args(argv)
    events = Events(args.events)
    try:
        config = json.loads(args.config.read_text())
        result = up(config, events, args.deadline) if args.action == "up" else down(config, events)
    except BaseException as exc:  # the parent reads the reason from the events file; the log has the traceback
        traceback.print_exc()
        events.emit("error", message=_reason(exc))
        return 1
    events.emit("done", **result)
    return 0


def _reason(exc: BaseException) -> str:
    """One line for the user: the error's own text, without Ray's colour codes."""
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, RuntimeError | TimeoutError) else text


if __name__ == "__main__":
    sys.exit(main())
