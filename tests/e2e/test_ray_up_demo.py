"""``skyward-ray demo``, the README's first command, end to end: exit 0, a readable run, a one-screen summary, nothing
left behind.

It uses what a user's run uses (the ``skyr`` prefix, port 8911 from ``skyward_ray/demo/emulator.yaml``), so it fails
(never skips) if a user's emulator holds them. HOME, TMPDIR and XDG_CACHE_HOME point at a temp dir, so the SSH key
``ray up`` generates and the staged files never touch the real ``~/.ssh`` or ``~/.cache``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from skyward_ray.emulator.netns import DEFAULT_PREFIX, clean_leftovers

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(900)

VENV_BIN = Path(sys.executable).parent
RULE = "=" * 100


def test_demo_runs_green_and_leaves_nothing(netns_host: None, netns_kit: NetnsKit, tmp_path: Path) -> None:
    assert not netns_kit.leftovers(DEFAULT_PREFIX), "a user's emulator holds the demo's prefix; stop it first"
    ssh_before = _ssh_dir_state()
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    env.pop("VAST_API_KEY", None)
    env.pop("VAST_URL", None)
    try:
        done = subprocess.run([str(VENV_BIN / "skyward-ray"), "demo", "--log-dir", str(tmp_path / "logs")],
                              capture_output=True, text=True, env=env, timeout=840, stdin=subprocess.DEVNULL)
    finally:
        swept = clean_leftovers(DEFAULT_PREFIX)  # only if the demo itself failed to clean up
        control = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        cluster = hashlib.sha256(b"emulator").hexdigest()[:10]
        shutil.rmtree(f"/tmp/ray_ssh_{control}/{cluster}", ignore_errors=True)
    out = done.stdout
    print(out)
    assert done.returncode == 0, f"demo exited {done.returncode}:\n{out[-3000:]}\n{done.stderr[-2000:]}"
    assert not swept, f"the demo left {swept}"

    # Readable progress: each step announced, Ray's own progress and each rental shown as they happen.
    for step in ("== [1] start the Vast emulator", "== [2] ray up", "== [3] ray submit", "== [4] ray down",
                 "== [5] stop the emulator"):
        assert step in out
    assert "| [7/7] Starting the Ray runtime" in out and "Adding 3 node(s)" in out
    assert len(re.findall(r"\+ rented worker instance \d+", out)) == 3
    assert "| job: 4 GPUs reserved on 4 nodes" in out

    # One screen: the summary between its rules, with what ran where.
    summary = out[out.index(RULE): out.rindex(RULE) + len(RULE)].splitlines()
    assert len(summary) <= 30, "\n".join(summary)
    text = "\n".join(summary)
    assert "result correct: True; 4 tasks on 4 Ray nodes" in text
    assert "left behind: nothing" in text
    # The run lives within Vast's documented rate limits: the emulator enforces them and refused nothing.
    assert re.search(r"Vast API: \d+ requests under documented rate limits, 0 refused with a 429", text), text
    rows = [line.split() for line in summary if re.match(r"\s+\d+\s+\d{5,}\s+(head|worker)\s", line)]
    assert len(rows) == 4 and sorted(r[2] for r in rows) == ["head"] + ["worker"] * 3
    assert len({r[3] for r in rows}) == 4, "four distinct Ray node IPs"
    assert len({r[5] for r in rows}) == 1, "one physical cluster"
    assert re.search(r"physical clusters: \d+; overlay 10\.\d+\.\d+\.\d+/\d+", text)

    # The logs hold the whole run, and the job's report agrees with the screen.
    submit_log = (tmp_path / "logs" / "ray-submit.log").read_text()
    report = json.loads(next(line for line in submit_log.splitlines() if line.startswith('{"tasks"')))
    assert report["sum_ok"] and sorted(report["nodes"]) == sorted(r[3] for r in rows)
    assert _ssh_dir_state() == ssh_before, "the real ~/.ssh was not touched"


def _ssh_dir_state() -> dict[str, float]:
    ssh_dir = Path("~/.ssh").expanduser()
    return {p.name: p.stat().st_mtime for p in ssh_dir.iterdir()} if ssh_dir.is_dir() else {}
