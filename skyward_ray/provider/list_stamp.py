"""Spacing of instance lists across the processes of one machine: ``ray up``, ``ray exec``, ``ray submit`` each start
with a list, and two from the same key and address within a second earn a 429. One small file per identity (a hash
of server and key, never the key) holds when the last list may have started; best effort."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skyward-ray" / "pace"


class ListStamp:
    """Books the start of a list call for an identity, shared by every process of this machine and user."""

    def __init__(
        self,
        identity: str,
        interval_s: float,
        *,
        directory: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
        self.path = (directory or default_dir()) / f"list-{digest}"
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep

    def wait_turn(self) -> float:
        """Reserve the next start at least ``interval_s`` after the last one booked, sleep until it (outside the
        file lock), and return the seconds waited."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.debug("list stamp %s unavailable: %s", self.path, exc)
            return 0.0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 64).decode(errors="replace").strip()
            last = float(raw) if raw else None
            now = self._clock()
            if last is not None and last > now + self.interval_s:
                last = None  # a stamp from the future (clock stepped back): ignore it
            start = now if last is None else max(now, last + self.interval_s)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{start:.6f}".encode())
        except (OSError, ValueError) as exc:
            log.debug("list stamp %s unusable: %s", self.path, exc)
            return 0.0
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # releases the lock
        delay = start - now
        if delay > 0:
            self._sleep(delay)
        return max(delay, 0.0)
