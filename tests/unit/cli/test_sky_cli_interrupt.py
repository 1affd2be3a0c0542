"""Ctrl-C ends a ``skyward-ray`` command with exit code 130 and one line on stderr, no traceback.

The command is ``skyward-ray offers`` against a loopback socket that accepts and never answers, so the process is
surely inside a command (blocked on the API) when SIGINT arrives. The only network is that loopback listener.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

from skyward_ray.cli import EXIT_INTERRUPTED


def test_ctrl_c_exits_130_with_one_line() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                conn, _ = listener.accept()
                held.append(conn)  # never answered: the client waits inside the command
                accepted.set()
        except OSError:
            return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    env = {**os.environ, "VAST_URL": f"http://127.0.0.1:{port}", "VAST_API_KEY": "k" * 32}
    proc = subprocess.Popen([sys.executable, "-m", "skyward_ray.cli", "offers", "--gpu", "RTX 4090"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert accepted.wait(60), "the command never reached the API"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        listener.close()
        for conn in held:
            conn.close()
    assert proc.returncode == EXIT_INTERRUPTED, (out, err)
    assert "Traceback" not in err, err
    assert err.strip().splitlines() == [f"skyward-ray: interrupted (exit {EXIT_INTERRUPTED})"], err


def test_interrupt_code_is_the_shells() -> None:
    assert EXIT_INTERRUPTED == 128 + signal.SIGINT
