"""The emulator as an in-process server: a background thread with its own event loop, plus a ticker that moves the
market along its clock even when nobody calls. ``with EmulatorServer(...) as emu:`` then point a client at
``emu.url`` with ``emu.api_key``; ``emu.market`` is the state behind it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.faults import FaultConfig, parse_rate_limits
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.ratelimit import RateLimiter
from skyward_ray.emulator.runtime import HostRuntime
from skyward_ray.emulator.wire.app import build_app

log = logging.getLogger(__name__)

_WILDCARDS = ("", "0.0.0.0", "::")  # listening on every address already covers the runtime's bind address


class EmulatorServer:
    """A running Vast emulator. ``url`` (the API base, like ``https://console.vast.ai``) and ``api_key`` point any
    client at it; ``market`` is the state behind it for tests; ``admin_url`` is the ``/_emulator/`` API.

    ``rate_limits``: ``"documented"``, ``"off"`` or ``"x<scale>"`` (None keeps the scenario's);
    ``overlays_available=False`` answers every overlay call as an account without overlay networks. ``stop()``
    destroys what the runtime still holds and closes it."""

    def __init__(self, scenario: str = "default", seed: int = 0, api_key: str | None = None,
                 boot_delay_s: float = 3.0, runtime: HostRuntime | None = None, host: str = "127.0.0.1",
                 port: int = 0, *, clock: Clock | None = None, faults: FaultConfig | None = None,
                 credit: float | None = None, admin_key: str | None = None, tick_interval_s: float = 0.05,
                 start_timeout_s: float = 30.0, rate_limits: str | None = None,
                 rate_clock: Callable[[], float] | None = None, overlays_available: bool | None = None) -> None:
        if rate_limits is not None:
            parse_rate_limits(rate_limits)  # a ValueError naming the value, before anything is built
        if not 0 <= port <= 65535:
            raise ValueError(f"port: {port!r} is out of range; allowed: 0 (a free port) to 65535")
        if tick_interval_s <= 0:
            raise ValueError(f"tick_interval_s: {tick_interval_s!r} must be positive")
        self.market = Market(scenario, seed=seed, api_key=api_key, clock=clock, runtime=runtime,
                             boot_delay_s=boot_delay_s, faults=faults, credit=credit)
        if rate_limits is not None:
            self.market.set_faults(self.market.faults.merged({"rate_limit": {"mode": rate_limits}}))
        if overlays_available is not None:
            self.market.set_faults(self.market.faults.merged({"overlays_available": overlays_available}))
        self.host = host
        self.port = port
        self.admin_key = admin_key
        self.rate_clock = rate_clock  # a test's clock for the rate limiter (default: time.monotonic)
        self.tick_interval_s = tick_interval_s
        self.start_timeout_s = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopped = False

    @property
    def api_key(self) -> str:
        return self.market.default_user.api_key

    @property
    def url(self) -> str:
        """The API base URL; on the runtime's bind address when it has one (so instances in namespaces reach it)."""
        bind = self.market.runtime.api_bind_host
        host = bind or ("127.0.0.1" if self.host in _WILDCARDS else self.host)
        return f"http://{_url_host(host)}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{self.url}/_emulator"

    def __repr__(self) -> str:  # never the key
        return f"EmulatorServer(url={self.url!r}, scenario={self.market.scenario.name!r})"

    def start(self) -> EmulatorServer:
        """Listen and return once the socket accepts connections."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._serve, name="vast-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            self.stop()
            raise RuntimeError(f"the emulator did not start listening within {self.start_timeout_s} s")
        if self._startup_error is not None:
            error = self._startup_error
            self.stop()
            raise error
        self._ticker = threading.Thread(target=self._tick_forever, name="vast-emulator-ticker", daemon=True)
        self._ticker.start()
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported to start()
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> None:
        limiter = RateLimiter(now=self.rate_clock) if self.rate_clock is not None else None
        app = build_app(self.market, admin_key=self.admin_key, limiter=limiter)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        bind = self.market.runtime.api_bind_host
        if bind and bind != self.host and self.host not in _WILDCARDS:
            await web.TCPSite(self._runner, bind, self.port, reuse_address=True).start()

    def _tick_forever(self) -> None:
        while not self._stopping.wait(self.tick_interval_s):
            try:
                self.market.tick()
            except Exception:
                log.exception("emulator tick failed")

    def stop(self) -> None:
        """Stop serving, destroy what the runtime holds, close it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=30)
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.market.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def ready_line(self) -> dict[str, Any]:
        """What ``skyward-ray emulator serve`` prints once listening."""
        return {"url": self.url, "api_key": self.api_key, "admin_url": self.admin_url,
                "rate_limits": self.market.faults.rate_limit.mode}


def _url_host(host: str) -> str:
    try:
        socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return host
    return f"[{host}]"
