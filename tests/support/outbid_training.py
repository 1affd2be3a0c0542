"""Ray Train on bids on the netns emulator, for tests/e2e/test_train_outbid.py and benchmarks/bench_train_outbid.py.

* :class:`S3Server`: moto's S3 server (``moto[server]``) as a child process on the emulator's public-bridge address
  (the one host address every emulated node reaches), with a bucket; ended by PID.
* :func:`train_cluster`: an emulator, that S3 server and a ``ray up`` of ``cluster_configs/emulator-train.yaml``
  (an on-demand head and 2 bid workers on one physical cluster and overlay), changed only where a test must: this
  emulator's URL, a cluster name and SSH key of its own, and the path of the bucket's credentials file. At exit:
  ``ray down``, the emulator stopped and its prefix swept, the S3 server ended.
* :func:`train` submits ``examples/train_on_bids.py`` and outbids workers while it runs, as told: each outbid waits
  until the current attempt is ``past_checkpoint`` steps beyond its first checkpoint, so it lands mid-interval.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from support.emulated_ray_cluster import (
    REPO_ROOT,
    VENV_BIN,
    BackgroundRun,
    EmulatorProcess,
    RayCluster,
    json_lines,
    pid_alive,
    poll,
)

EXAMPLE = REPO_ROOT / "examples" / "train_on_bids.py"
TRAIN_CONFIG = REPO_ROOT / "cluster_configs" / "emulator-train.yaml"
BUCKET = "ckpt"
# moto accepts any key; the example's nodes read it from ~/.aws/credentials (the config's file_mounts).
S3_KEY_ID, S3_SECRET = "testing", "testing"
WORKERS = 2


@dataclass
class S3Server:
    """``moto_server -H host -p port`` in its own session; ``stop()`` ends it by PID."""

    host: str
    log_path: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> S3Server:
        with socket.socket() as probe:  # a free port on that address (moto has no "port 0, tell me")
            probe.bind((self.host, 0))
            self.port = probe.getsockname()[1]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", self.host, "-p", str(self.port)],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)

        def listening() -> bool:
            assert self._proc is not None and self._proc.poll() is None, f"moto_server exited; see {self.log_path}"
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                return True
            return False

        poll(listening, timeout_s=60, interval_s=0.3, what="moto's S3 server to listen")
        self.client().create_bucket(Bucket=BUCKET)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@dataclass
class TrainCluster:
    """What :func:`train_cluster` yields."""

    cluster: RayCluster
    s3: S3Server
    prefix: str
    up_seconds: float = 0.0

    @property
    def emulator(self) -> EmulatorProcess:
        return self.cluster.emulator

    def storage(self) -> str:
        """Ray Train's ``storage_path``: the bucket, the endpoint as pyarrow reads it; no credentials in it."""
        return f"s3://{BUCKET}/runs?endpoint_override={self.s3.endpoint}&region=us-east-1"

    def live(self) -> dict[int, dict[str, Any]]:
        return {int(row["id"]): row for row in self.emulator.live_instances()}

    def overlay(self) -> dict[str, Any]:
        overlays = self.emulator.state()["overlays"]
        assert len(overlays) == 1, f"expected one overlay, found {overlays}"
        return overlays[0]

    def ray_workers_alive(self) -> int:
        """Ray nodes with a CPU (the head has none), asked on the head."""
        out = self.cluster.python_on_head(
            "import json, ray; ray.init(address='auto', log_to_driver=False); "
            "print('E2E-JSON ' + json.dumps(sum(1 for n in ray.nodes() "
            "if n['Alive'] and n['Resources'].get('CPU', 0) >= 1)))", timeout_s=120)
        found = json_lines(out.output)
        return int(found[0]) if out.returncode == 0 and found else 0


def _train_overrides(credentials: Path) -> Any:
    def override(config: dict[str, Any]) -> None:
        keep = {"cluster_name": config["cluster_name"], "api_url": config["provider"]["api_url"],
                "auth": dict(config["auth"])}
        config.clear()
        config.update(yaml.safe_load(TRAIN_CONFIG.read_text()))
        config["cluster_name"] = keep["cluster_name"]
        config["provider"]["api_url"] = keep["api_url"]
        config["auth"] = keep["auth"]
        config["file_mounts"] = {"~/.aws/credentials": str(credentials)}

    return override


@contextlib.contextmanager
def train_cluster(workdir: Path, *, prefix: str, public_subnet: str, name: str,
                  boot_delay_s: float = 2.0) -> Iterator[TrainCluster]:
    """The emulator, the S3 server on its bridge address and the cluster config (``up()`` is the caller's)."""
    emulator = EmulatorProcess(prefix=prefix, public_subnet=public_subnet, log_path=workdir / "logs" / "emulator.log",
                               boot_delay_s=boot_delay_s).start()
    s3: S3Server | None = None
    cluster: RayCluster | None = None
    try:
        host = urlsplit(emulator.url).hostname
        assert host, emulator.url
        s3 = S3Server(host, workdir / "logs" / "moto.log").start()
        credentials = workdir / "s3-credentials"
        credentials.write_text(f"[default]\naws_access_key_id = {S3_KEY_ID}\naws_secret_access_key = {S3_SECRET}\n")
        credentials.chmod(0o600)
        cluster = RayCluster(emulator, workdir, name=name, overrides=_train_overrides(credentials))
        yield TrainCluster(cluster, s3, prefix)
    finally:
        try:
            if cluster is not None:
                with contextlib.suppress(Exception):
                    if emulator.live_instances():
                        cluster.down(timeout_s=180)
        finally:
            emulator.stop()
            if cluster is not None:
                cluster.close()
            if s3 is not None:
                s3.stop()


def wait_for_workers(run: TrainCluster, timeout_s: float = 600) -> float:
    """Until both bid workers run Ray (min_workers rents them after ``ray up``); returns the seconds it took."""
    started = time.monotonic()
    poll(lambda: run.ray_workers_alive() >= WORKERS, timeout_s=timeout_s, interval_s=5,
         what=f"{WORKERS} bid workers to join the Ray cluster")
    return time.monotonic() - started


@dataclass
class TrainRun:
    """One submitted training run: its events in order, the outbids made, the final ``done`` line."""

    name: str
    events: list[dict[str, Any]] = field(default_factory=list)
    outbids: list[dict[str, Any]] = field(default_factory=list)  # {"instance", "t", "attempt", "step"}
    done: dict[str, Any] = field(default_factory=dict)
    returncode: int | None = None
    output_tail: str = ""

    def begins(self, attempt: int) -> dict[int, dict[str, Any]]:
        """Rank -> the ``begin`` event of that rank in ``attempt``."""
        return {e["rank"]: e for e in self.events if e["phase"] == "begin" and e["attempt"] == attempt}

    def joins_after(self, t: float) -> list[dict[str, Any]]:
        return [e for e in self.events if e["phase"] == "node" and e["event"] == "join" and e["t"] >= t]


def _next(job: BackgroundRun, run: TrainRun, deadline: float, what: str) -> dict[str, Any]:
    """The job's next event; fails at ``deadline``, or as soon as the job has exited with nothing more to say."""
    while True:
        try:
            event = job.wait_for_json(min(max(deadline - time.monotonic(), 0.01), 5.0), what)
        except AssertionError:
            exited = job._proc.poll() is not None  # the kit keeps its process private
            if time.monotonic() < deadline and not (exited and job.lines.empty()):
                continue
            raise AssertionError(f"{'the job exited' if exited else 'timed out'} waiting for {what}; output:\n"
                                 + "\n".join(job.output[-30:])) from None
        run.events.append(event)
        return event


def train(tc: TrainCluster, name: str, *, outbids: int = 0, steps: int = 40, checkpoint_every: int = 10,
          step_seconds: float = 0.5, past_checkpoint: int | Sequence[int] = 2, timeout_s: float = 900) -> TrainRun:
    """Submit the example and outbid ``outbids`` different workers (each an original worker of the run, one per
    attempt), each once its attempt is ``past_checkpoint`` steps (one number, or one per outbid) past that attempt's
    first new checkpoint."""
    pasts = [past_checkpoint] * outbids if isinstance(past_checkpoint, int) else list(past_checkpoint)
    assert len(pasts) == outbids, (pasts, outbids)
    # ray submit pastes its arguments into a shell command line unquoted: quote each (the URI has a '&').
    args = ["--json", "--storage", shlex.quote(tc.storage()), "--name", name, "--steps", str(steps),
            "--checkpoint-every", str(checkpoint_every), "--step-seconds", str(step_seconds), "--workers", str(WORKERS)]
    run = TrainRun(name)
    job = tc.cluster.submit_background(*args, script=EXAMPLE)
    deadline = time.monotonic() + timeout_s
    try:
        attempt = 0
        while len(run.outbids) < outbids:
            event = _next(job, run, deadline, f"attempt {attempt} to pass a checkpoint (outbid {len(run.outbids)+1})")
            if event["phase"] == "done":
                raise AssertionError(f"the run finished before outbid {len(run.outbids) + 1}: {run.events}")
            if event["phase"] != "step" or event["attempt"] != attempt:
                continue
            begins = run.begins(attempt)
            if len(begins) < WORKERS:
                continue
            start = min(b["start"] for b in begins.values())
            first_new_checkpoint = (start // checkpoint_every + 1) * checkpoint_every
            if event["step"] < first_new_checkpoint + pasts[len(run.outbids)]:
                continue
            originals = [b["instance"] for _, b in sorted(run.begins(0).items())]
            victim = int(originals[-1 - len(run.outbids)])  # rank 1's node first, then rank 0's
            assert str(victim) in {b["instance"] for b in begins.values()}, (victim, begins)
            tc.emulator.outbid(victim)
            run.outbids.append({"instance": victim, "t": time.time(), "attempt": attempt, "step": event["step"]})
            attempt += 1
        while True:
            event = _next(job, run, deadline, "the run to finish")
            if event["phase"] == "done":
                run.done = event
                break
        finished = job.wait(60)
        run.returncode = finished.returncode
        run.output_tail = finished.tail()
    finally:
        job.kill()
    return run


def leftover_processes(pids: list[int]) -> list[int]:
    return [pid for pid in pids if pid_alive(pid)]
