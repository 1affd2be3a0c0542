"""The emulator commands of examples/README.md work as written: this test reads the block after the
``<!-- emulator-commands ... -->`` marker and runs it line by line, as a user with two terminals would.

The first command (``skyward-ray emulator serve ...``) runs in the background, as in terminal 1; ``<url>`` and
``<api_key>`` in the ``export`` line are replaced by what it printed; every other line runs with bash, in the repo,
with the environment so far, and must exit 0. At the end the emulator gets SIGINT (the README's Ctrl-C) and must
leave nothing behind.

Like ``skyward-ray demo``, the README uses the default ``skyr`` prefix and the cluster name ``emulator``, so this
fails (never skips) if a user's emulator holds them. HOME, TMPDIR and XDG_CACHE_HOME point at a temp dir, so the
SSH key and the staged files never touch the real ``~/.ssh`` or ``~/.cache``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from skyward_ray.emulator.netns import DEFAULT_PREFIX, clean_leftovers

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(1200)

REPO = Path(__file__).resolve().parents[2]
README = REPO / "examples" / "README.md"
VENV_BIN = Path(sys.executable).parent
MARKER = "<!-- emulator-commands"
EXPECTED = {  # what each command must print, beyond exiting 0
    "python examples/basic_usage.py": "hello from ",
    "ray submit skyward_ray/demo/emulator.yaml examples/ray_remote_on_ray_up.py":
        "sum of squares: 1240 (expected 1240)",
}


def readme_commands() -> list[str]:
    """The commands of the block after the marker, comments and blank lines left out."""
    text = README.read_text()
    assert MARKER in text, f"{README} has no {MARKER} block"
    block = re.search(r"```(?:sh|bash)?\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block is not None, "no fenced block after the marker"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_block_is_what_the_test_expects() -> None:
    commands = readme_commands()
    assert commands[0].startswith("skyward-ray emulator serve ")
    assert commands[1].startswith("export ") and "<url>" in commands[1] and "<api_key>" in commands[1]
    assert set(EXPECTED) <= set(commands[2:])


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def test_the_readme_emulator_commands_work_as_written(netns_host: None, netns_kit: NetnsKit, tmp_path: Path) -> None:
    assert not netns_kit.leftovers(DEFAULT_PREFIX), "a user's emulator holds the default prefix; stop it first"
    serve, export, *rest = readme_commands()
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("VAST_URL", "VAST_API_KEY", "RAY_ADDRESS"):
        env.pop(name, None)
    emulator = subprocess.Popen(shlex.split(serve), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=(tmp_path / "emulator.log").open("w"), text=True,
                                start_new_session=True)
    outputs: list[str] = []
    try:
        lines: queue.Queue[str] = queue.Queue()
        assert emulator.stdout is not None
        threading.Thread(target=_pump, args=(emulator.stdout, lines), daemon=True).start()
        ready = json.loads(lines.get(timeout=120))
        exported = export.replace("<url>", ready["url"]).replace("<api_key>", ready["api_key"])
        for assignment in shlex.split(exported)[1:]:
            name, _, value = assignment.partition("=")
            env[name] = value
        for command in rest:
            done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=600)
            output = done.stdout + done.stderr
            outputs.append(f"$ {command}\n{output}")
            assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output[-3000:]}"
            if command in EXPECTED:
                assert EXPECTED[command] in done.stdout, output[-3000:]
            if command.startswith("ray up"):
                # Quiet without a TTY: Ray's own steps, not every ssh command in full (Ray's verbose lines).
                assert not any(mark in output for mark in ("Full command is", "ControlPersist", "VINFO")), output
        emulator.send_signal(signal.SIGINT)  # the README's Ctrl-C in terminal 1
        assert emulator.wait(timeout=120) == 0
    finally:
        if emulator.poll() is None:
            os.killpg(emulator.pid, signal.SIGKILL)
            emulator.wait(timeout=30)
        swept = clean_leftovers(DEFAULT_PREFIX)
        user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        cluster = hashlib.sha256(b"emulator").hexdigest()[:10]
        shutil.rmtree(f"/tmp/ray_ssh_{user}/{cluster}", ignore_errors=True)
        (tmp_path / "commands.log").write_text("\n".join(outputs))
    assert not swept, f"the README's commands left {swept} behind"
    assert not netns_kit.leftovers(DEFAULT_PREFIX)
