"""What a demo run saw, and its one-screen summary: the steps and their times, each rental (from the emulator's state
dump, polled while the run goes on), the job's report, the API traffic, and what was left on the machine."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from skyward_ray.emulator.netns import DEFAULT_PREFIX, DEFAULT_STATE_ROOT
from skyward_ray.emulator.process import pid_alive
from skyward_ray.errors import SkywardError

PREFIX = DEFAULT_PREFIX  # what `skyward-ray emulator serve --runtime netns` names its namespaces and links with
_WIDTH = 100


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool


@dataclass
class Rental:
    """One instance the cluster rented, as the emulator's state dump shows it."""

    instance_id: int
    kind: str
    machine_id: int
    cluster_id: int | None
    offer_id: int | None
    gpu: str
    price: float
    is_bid: bool
    overlay_ip: str | None = None
    cost: float = 0.0
    destroyed: bool = False


@dataclass
class DemoRun:
    log_dir: Path
    steps: list[Step] = field(default_factory=list)
    rentals: dict[int, Rental] = field(default_factory=dict)
    overlay: dict[str, Any] | None = None
    namespace_pids: set[int] = field(default_factory=set)
    job_report: dict[str, Any] | None = None
    leftovers: list[str] = field(default_factory=list)
    api_traffic: str = ""
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def recorded(self) -> Iterator[None]:
        """Tear-down steps go on after a failure: keep (and show) the first error instead of raising it."""
        try:
            yield
        except SkywardError as exc:
            self.error = self.error or str(exc)
            print(f"\n!! {exc}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        index = len(self.steps) + 1
        print(f"\n== [{index}] {title}", flush=True)
        started = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.monotonic() - started
            self.steps.append(Step(title, seconds, ok))
            print(f"   {'done' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps) and not self.leftovers and bool(
            self.job_report and self.job_report.get("sum_ok"))


def emulator_state(admin_url: str) -> dict[str, Any]:
    response = httpx.get(f"{admin_url}/state/", timeout=30)
    response.raise_for_status()
    return response.json()


def api_traffic(admin_url: str) -> str:
    """One line on the Vast API calls the run made: how many, under which rate limits, how many refused (429)."""
    counters = httpx.get(f"{admin_url}/counters/", timeout=30).json()
    mode = httpx.get(f"{admin_url}/rate_limits/", timeout=30).json().get("mode", "?")
    calls = sum(counters["requests"].values())
    refused = sum(statuses.get("429", 0) for statuses in counters["statuses"].values())
    return f"Vast API: {calls} requests under {mode} rate limits, {refused} refused with a 429"


def _kind(label: str | None) -> str:
    from skyward_ray.provider.tags import decode_label  # imports Ray: only once a run reads labels, not at CLI start

    decoded = decode_label(label)
    return (decoded[1].get("ray-node-type") if decoded else None) or "?"


def _new_rental(entry: dict[str, Any], row: dict[str, Any] | None) -> Rental:
    return Rental(int(entry["instance_id"]), _kind(entry.get("label")), entry["machine_id"],
                  row.get("cluster_id") if row else None, entry.get("offer_id"),
                  f"{entry['num_gpus']}x {entry['gpu_name']}", float(entry["price"]), bool(entry["is_bid"]))


def observe(admin_url: str, run: DemoRun, *, quiet: bool = False) -> None:
    """Record (and print) rentals and their ends from the emulator's state dump, and the processes they run."""
    state = emulator_state(admin_url)
    live = {int(row["id"]): row for row in state["instances"]}
    overlays = state["overlays"]
    with run.lock:
        if overlays:
            run.overlay = overlays[0]
        members = {int(k): v for k, v in (overlays[0]["members"] if overlays else {}).items()}
        for entry in state["ledger"]:
            instance_id = int(entry["instance_id"])
            rental = run.rentals.get(instance_id)
            if rental is None:
                if entry["destroyed_at"] is not None:
                    continue  # rented and gone between two looks: not ours to show
                rental = run.rentals[instance_id] = _new_rental(entry, live.get(instance_id))
                if not quiet:
                    print(f"   + rented {rental.kind} instance {instance_id}: {rental.gpu} on machine "
                          f"{rental.machine_id} (physical cluster {rental.cluster_id}), offer {rental.offer_id}, "
                          f"${rental.price:.3f}/h {'bid' if rental.is_bid else 'on-demand'}", flush=True)
            rental.cost = float(entry.get("cost") or 0.0)
            rental.overlay_ip = members.get(instance_id, rental.overlay_ip)
            if entry["destroyed_at"] is not None and not rental.destroyed:
                rental.destroyed = True
                if not quiet:
                    print(f"   - instance {instance_id} ({rental.kind}) destroyed"
                          f"{': ' + entry['end_reason'] if entry.get('end_reason') else ''}", flush=True)
    for instance_id in live:
        out = subprocess.run(["ip", "netns", "pids", f"{PREFIX}-i{instance_id}"], capture_output=True, text=True,
                             check=False).stdout
        with run.lock:
            run.namespace_pids.update(int(pid) for pid in out.split())


def watch(admin_url: str, run: DemoRun, stop: threading.Event) -> None:
    """Observe once a second until ``stop`` is set (a thread of its own)."""
    while not stop.wait(1.0):
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            observe(admin_url, run)


def leftovers(run: DemoRun) -> list[str]:
    """What the run left on this machine: namespaces and links named with the prefix, live processes of the
    instances (by PID), the runtime's state directory."""
    found: list[str] = []
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=False).stdout or "[]")
    found += [f"link {link['ifname']}" for link in links if link.get("ifname", "").startswith(PREFIX)]
    run_netns = Path("/run/netns")
    found += [f"netns {entry.name}" for entry in (run_netns.iterdir() if run_netns.is_dir() else [])
              if entry.name.startswith(f"{PREFIX}-")]
    found += [f"process {pid}" for pid in sorted(run.namespace_pids) if pid_alive(pid)]
    if (DEFAULT_STATE_ROOT / PREFIX).exists():
        found.append(f"dir {DEFAULT_STATE_ROOT / PREFIX}")
    return found


def _task_rows(run: DemoRun) -> list[str]:
    assert run.job_report is not None
    rows = [f"  {'task':>4}  {'instance':>9}  {'kind':<6}  {'Ray node IP (overlay)':<21}  {'machine':>7}  "
            f"{'cluster':>7}  {'offer':>9}  {'$/h':>6}  allocation"]
    for task in run.job_report.get("tasks", []):
        rental = run.rentals.get(int(task["instance"])) if str(task.get("instance") or "").isdigit() else None
        if rental is None:
            rows.append(f"  {task['task']:>4}  {task.get('instance') or '?':>9}  {'?':<6}  {task['node_ip']:<21}")
            continue
        rows.append(f"  {task['task']:>4}  {rental.instance_id:>9}  {rental.kind:<6}  {task['node_ip']:<21}  "
                    f"{rental.machine_id:>7}  {rental.cluster_id!s:>7}  {rental.offer_id!s:>9}  {rental.price:>6.3f}  "
                    f"{'bid' if rental.is_bid else 'on-demand'}")
    nodes = run.job_report.get("nodes", [])
    rows.append(f"  result correct: {run.job_report.get('sum_ok')}; {len(run.job_report.get('tasks', []))} tasks on "
                f"{len(nodes)} Ray nodes in {run.job_report.get('seconds')} s (GPU wait included)")
    return rows


def summary(run: DemoRun) -> None:
    """The one-screen summary between two rules."""
    lines = ["", "=" * _WIDTH, "skyward-ray demo: summary", "-" * _WIDTH]
    lines += [f"  {'ok ' if step.ok else 'ERR'}  {step.name:<70} {step.seconds:6.1f} s" for step in run.steps]
    if run.job_report:
        lines += ["-" * _WIDTH, *_task_rows(run)]
    if run.rentals:
        clusters = sorted({str(r.cluster_id) for r in run.rentals.values()})
        peak = sum(r.price for r in run.rentals.values())
        spent = sum(r.cost for r in run.rentals.values())
        subnet = run.overlay["internal_subnet"] if run.overlay else "none"
        lines.append(f"  instances rented: {len(run.rentals)}; physical clusters: {', '.join(clusters)}; overlay "
                     f"{subnet}; up to ${peak:.3f}/h, spent ${spent:.4f}")
    if run.api_traffic:
        lines.append(f"  {run.api_traffic}")
    if run.error:
        lines.append(f"  error: {run.error.splitlines()[0][:_WIDTH - 9]}")
    lines.append(f"  left behind: {', '.join(run.leftovers) if run.leftovers else 'nothing'}")
    lines.append(f"  logs: {run.log_dir}")
    lines.append("=" * _WIDTH)
    print("\n".join(lines), flush=True)
