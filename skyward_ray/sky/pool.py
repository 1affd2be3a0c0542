"""``sky.ComputePool`` / ``sky.pool``: a Ray cluster for the length of a ``with`` block or a decorated call.

Entering gets a cluster from a launcher, connects to Ray unless already connected, waits for and ranks the nodes, and
makes the pool the target of ``>> sky``. Leaving (normally, on an exception, Ctrl-C or SIGTERM) undoes exactly that,
with Ctrl-C held back, so a second Ctrl-C cannot leave half a cluster behind.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType
from typing import Any, ParamSpec, TypeVar, overload

import ray

from skyward_ray.errors import ConfigError
from skyward_ray.sky.active_pool import pop_pool, push_pool
from skyward_ray.sky.autoscale import NodeRequest
from skyward_ray.sky.dispatch import Dispatcher
from skyward_ray.sky.image import missing_apt_packages, missing_requirements
from skyward_ray.sky.launcher import AttachLauncher, ClusterHandle, Launcher, LaunchError, discover_address
from skyward_ray.sky.nodes import NodeInfo, wait_for_nodes
from skyward_ray.sky.pending import ComputeFunction, PendingCompute, gather
from skyward_ray.sky.spec import PoolSpec

log = logging.getLogger(__name__)

CLIENT_CONNECT_ATTEMPTS = 3
CLIENT_RETRY_PAUSE_S = 2.0

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class _Running:
    launcher: Launcher
    handle: ClusterHandle
    owns_connection: bool
    nodes: tuple[NodeInfo, ...]
    dispatcher: Dispatcher
    token: Any
    node_request: NodeRequest | None = None


def _image_report(pip: tuple[str, ...], apt: tuple[str, ...]) -> dict[str, list[str]]:
    return {"pip": missing_requirements(pip), "apt": missing_apt_packages(apt)}


_check_image = ComputeFunction(_image_report)


class ComputePool:
    """A pool of Ray nodes: ``with sky.ComputePool(...) as pool:`` or ``@sky.ComputePool(...)`` on a function.

    Arguments: ``provider``, ``accelerator``, ``nodes``, ``allocation``, ``image``, ... ``address``
    attaches to a running Ray cluster; ``launcher`` supplies the cluster another way (e.g. ``LocalLauncher``).
    A pool object is reusable, one ``with`` at a time.
    """

    def __init__(
        self,
        provider: Any = None,
        accelerator: Any = None,
        nodes: int = 1,
        allocation: str = "spot-if-available",
        image: Any = None,
        *,
        vcpus: float | None = None,
        memory_gb: float | None = None,
        address: str | None = None,
        name: str | None = None,
        ready_timeout: float = 600.0,
        launcher: Launcher | None = None,
    ) -> None:
        self.spec = PoolSpec.build(
            provider=provider, accelerator=accelerator, nodes=nodes, allocation=allocation, image=image,
            vcpus=vcpus, memory_gb=memory_gb, address=address, name=name, ready_timeout=ready_timeout,
        )
        if launcher is not None and not (callable(getattr(launcher, "up", None))
                                         and callable(getattr(launcher, "down", None))):
            raise ConfigError(
                f"pool.launcher: {launcher!r} is not allowed; allowed: None (attach, or launch on Vast for "
                "sky.VastAI(...)), or a launcher object such as sky.LocalLauncher() or sky.VastLauncher()"
            )
        self._launcher = launcher
        self._running: _Running | None = None
        self._lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    def _choose_launcher(self) -> Launcher:
        if self._launcher is not None:
            return self._launcher
        address = discover_address(self.spec.address)
        if address is None and ray.is_initialized():
            address = "auto"
        if address is not None:
            return AttachLauncher(address)
        if self.spec.provider is not None:
            # Loaded only for a launch: it brings in the Vast client and the provider's config, which attach needs not.
            from skyward_ray.sky.vast_launcher import VastLauncher

            return VastLauncher()
        raise LaunchError(
            "no Ray cluster to attach to, and this pool has no provider to launch one: pass provider=sky.VastAI(...) "
            "to launch on Vast, run this script on a cluster with `ray submit`, or pass address='ray://<head>:10001' "
            "(or set RAY_ADDRESS)."
        )

    def start(self) -> ComputePool:
        """Bring the pool up (what ``__enter__`` does). Cleans up after itself if anything fails or is interrupted."""
        with self._lock:
            if self._running is not None:
                raise RuntimeError("this pool is already running; leave its `with` block before entering it again")
            launcher = self._choose_launcher()
            handle: ClusterHandle | None = None
            owns_connection = False
            node_request: NodeRequest | None = None
            try:
                handle = launcher.up(self.spec)
                owns_connection = self._connect(handle)
                if handle.created:  # the launcher brought up every node already
                    nodes = tuple(wait_for_nodes(self.spec.nodes, ray.nodes, timeout_s=self.spec.ready_timeout))
                else:  # a cluster found as it is: ask its autoscaler for what is missing, and say so
                    gpus = self.spec.accelerator.count if self.spec.accelerator is not None else 0
                    node_request = NodeRequest(self.spec.nodes, gpus)
                    nodes = tuple(node_request.wait(ray.nodes, timeout_s=self.spec.ready_timeout))
                ready = getattr(launcher, "ready", None)  # a launcher that reports progress says "connected"
                if ready is not None:
                    ready(nodes)
                self._warn_on_shape(nodes)
                dispatcher = Dispatcher(nodes, self.spec.image.runtime_env())
                if not handle.image_installed:
                    self._report_image(dispatcher)
            except BaseException:
                with _teardown_shield():
                    self._teardown(launcher, handle, owns_connection, node_request)
                raise
            token = push_pool(self)
            self._running = _Running(launcher, handle, owns_connection, nodes, dispatcher, token, node_request)
            _SIGTERM.acquire(handle.created)
        log.info("pool ready: %s", ", ".join(f"rank {n.rank} {n.ip} ({n.gpus} GPU)" for n in nodes))
        return self

    def stop(self) -> None:
        """Tear the pool down (what ``__exit__`` does). Safe to call when it is not running."""
        with self._lock:
            running, self._running = self._running, None
            if running is None:
                return
            with _teardown_shield():
                pop_pool(self, running.token)
                _SIGTERM.release(running.handle.created)
                self._teardown(running.launcher, running.handle, running.owns_connection, running.node_request)

    def __enter__(self) -> ComputePool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Use the pool as a decorator: each call of ``fn`` runs inside a fresh copy of this pool."""

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            with self._copy():
                return fn(*args, **kwargs)

        return wrapper

    def _copy(self) -> ComputePool:
        clone = ComputePool.__new__(ComputePool)
        clone.spec, clone._launcher, clone._running, clone._lock = self.spec, self._launcher, None, threading.Lock()
        return clone

    @staticmethod
    def _connect(handle: ClusterHandle) -> bool:
        """Connect this process to the cluster; True when this call opened the connection (so the pool closes it)."""
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            wanted = handle.address
            if handle.created or (wanted not in ("auto", current) and not wanted.startswith("ray://")):
                raise ConfigError(
                    f"address: {wanted!r} is not allowed here; this process is already connected to Ray at {current} "
                    "and Ray allows one cluster per process (use that address, or ray.shutdown() first)"
                )
            return False
        kwargs: dict[str, Any] = {"address": handle.address}
        if not handle.address.startswith("ray://"):
            kwargs["log_to_driver"] = True  # Ray Client forwards it by default, and passing it there logs a line
            kwargs["include_dashboard"] = False
            if handle.driver_ip:
                kwargs["_node_ip_address"] = handle.driver_ip
        if not handle.address.startswith("ray://"):
            with _quiet_ray_init():
                ray.init(**kwargs)
            return True
        # Ray Client: the head's proxier forks a server process per client. With gRPC's fork support on, that child
        # could die in gRPC's fork handlers ("Starting Ray client server failed"); our heads start Ray with it off
        # (skyward_ray/provider/start_commands.py). A head started otherwise may still do it, and a new attempt gets
        # a new server process: the retry stays as a safety net, and says so when it happens.
        _quiet_client_log_stream()
        for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
            try:
                with _quiet_ray_init():
                    ray.init(**kwargs)
                return True
            except ConnectionError as exc:
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if attempt == CLIENT_CONNECT_ATTEMPTS:
                    raise
                log.warning("Ray Client connection to %s failed (attempt %d of %d), retrying: %s", handle.address,
                            attempt, CLIENT_CONNECT_ATTEMPTS, str(exc).strip().splitlines()[-1][:200])
                time.sleep(CLIENT_RETRY_PAUSE_S)
        raise AssertionError("unreachable")

    @staticmethod
    def _teardown(launcher: Launcher, handle: ClusterHandle | None, owns_connection: bool,
                  node_request: NodeRequest | None = None) -> None:
        try:
            if node_request is not None and ray.is_initialized():
                node_request.withdraw()
            if owns_connection and ray.is_initialized():
                ray.shutdown()
        finally:
            if handle is None or handle.created:
                launcher.down()

    def _warn_on_shape(self, nodes: tuple[NodeInfo, ...]) -> None:
        accelerator = self.spec.accelerator
        if accelerator is None:
            return
        for node in nodes:
            if node.gpus != accelerator.count:
                log.warning(
                    "node rank %d (%s) has %d GPU(s) but the pool asks for %s per node; calls there get %d",
                    node.rank, node.ip, node.gpus, accelerator, node.gpus,
                )

    def _report_image(self, dispatcher: Dispatcher) -> None:
        """A cluster the launcher did not set up is used as it is: say which image packages each node has or lacks."""
        image = self.spec.image
        if not image.pip and not image.apt:
            return
        reports = dispatcher.broadcast(_check_image(image.pip, image.apt))
        for node, report in zip(dispatcher.nodes, reports, strict=True):
            missing = [*report["pip"], *(f"apt:{p}" for p in report["apt"])]
            if missing:
                log.warning(
                    "image: node rank %d (%s) lacks %s; a cluster this pool did not set up is not changed: install "
                    "them in its setup commands", node.rank, node.ip, ", ".join(missing),
                )
        if not any(r["pip"] or r["apt"] for r in reports):
            log.info("image: %s already installed on all %d node(s); nothing to install",
                     ", ".join([*image.pip, *image.apt]), len(reports))

    # --- introspection -----------------------------------------------------------------------------------------------

    def _require(self) -> _Running:
        running = self._running
        if running is None:
            raise RuntimeError("this pool is not running; use it inside `with pool:` or a function decorated with it")
        return running

    @property
    def nodes(self) -> tuple[NodeInfo, ...]:
        """The pool's nodes in rank order (rank 0 is the Ray head)."""
        return self._require().nodes

    @property
    def address(self) -> str:
        return self._require().handle.address

    @property
    def running(self) -> bool:
        return self._running is not None

    # --- the operators' targets (see skyward_ray.sky.pending.Target) ----------------------------------------------

    def run(self, pending: PendingCompute[T]) -> T:
        return self._require().dispatcher.run(pending)

    def broadcast(self, pending: PendingCompute[T]) -> list[T]:
        return self._require().dispatcher.broadcast(pending)

    def submit(self, pending: PendingCompute[T]) -> Future[T]:
        return self._require().dispatcher.submit(pending)

    def run_group(self, items: tuple[PendingCompute[Any], ...], stream: bool = False) -> list[Any] | Iterator[Any]:
        return self._require().dispatcher.run_group(items, stream)

    def submit_group(self, items: tuple[PendingCompute[Any], ...]) -> Future[list[Any]]:
        return self._require().dispatcher.submit_group(items)

    def map(self, fn: Callable[[Any], PendingCompute[T]], items: Iterable[Any]) -> list[T]:
        """``[fn(x) for x in items]`` run concurrently on the pool; ``fn`` is a ``@sky.compute`` function."""
        return self.run_group(gather(fn(item) for item in items).items)  # type: ignore[return-value]

    def __repr__(self) -> str:
        state = f"{len(self._running.nodes)} node(s) at {self._running.handle.address}" if self._running else "stopped"
        return f"ComputePool(nodes={self.spec.nodes}, accelerator={self.spec.accelerator}, {state})"


@overload
def pool(fn: Callable[P, T], /) -> Callable[P, T]: ...
@overload
def pool(
    *,
    provider: Any = None,
    accelerator: Any = None,
    nodes: int = 1,
    allocation: str = "spot-if-available",
    image: Any = None,
    **options: Any,
) -> ComputePool: ...
def pool(fn: Callable[..., Any] | None = None, /, **kwargs: Any) -> Any:
    """``@sky.pool(...)`` decorator or ``with sky.pool(...) as p:``; bare ``@sky.pool`` attaches with the defaults."""
    if fn is not None:
        if kwargs or not callable(fn):
            raise TypeError("sky.pool takes keyword arguments only: sky.pool(provider=..., accelerator=..., nodes=...)")
        return ComputePool()(fn)
    return ComputePool(**kwargs)


# --- signals ---------------------------------------------------------------------------------------------------------


class _DropRayNotices(logging.Filter):
    """Lines Ray logs at every pool connection that tell the user nothing they can act on: ``ray.init`` outside the
    main thread warns "SIGTERM handler is not set ..." (a pool's teardown does not depend on Ray's handler; under Ray
    Client the server's own ``ray.init`` says it too, through the log stream), and Ray Client reports the ``ray.init``
    arguments it forwards ("Passing the following kwargs ...", always at least ``log_to_driver``)."""

    PREFIXES = ("SIGTERM handler is not set", "Passing the following kwargs to ray.init() on the server")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(self.PREFIXES)


_RAY_NOTICES = _DropRayNotices()


def _quiet_client_log_stream() -> None:
    """The Ray Client server's notice arrives through the log stream at any time after connecting: filter it there
    for good (once)."""
    stream_log = logging.getLogger("ray.util.client.logsclient")
    if _RAY_NOTICES not in stream_log.filters:
        stream_log.addFilter(_RAY_NOTICES)


@contextlib.contextmanager
def _quiet_ray_init() -> Iterator[None]:
    """Ray's notices of one ``ray.init`` call (see :class:`_DropRayNotices`) left out while it runs."""
    loggers = [logging.getLogger("ray.client_builder")]
    if threading.current_thread() is not threading.main_thread():
        loggers.append(logging.getLogger("ray._private.worker"))
    notice_filter = _DropRayNotices()
    for logger in loggers:
        logger.addFilter(notice_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notice_filter)


@contextlib.contextmanager
def _teardown_shield() -> Iterator[None]:
    """Hold Ctrl-C back while tearing down (main thread only), then deliver it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def defer(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, defer)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


class _SigtermToExit:
    """While a pool that created its cluster is up, SIGTERM raises SystemExit so ``with`` blocks unwind and tear down.

    Only when SIGTERM has its default handler (we never override the user's) and only in the main thread.
    """

    def __init__(self) -> None:
        self._count = 0
        self._installed = False
        self._lock = threading.Lock()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def acquire(self, created: bool) -> None:
        if not created:
            return
        with self._lock:
            self._count += 1
            if (
                self._count == 1
                and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            ):
                signal.signal(signal.SIGTERM, self._handler)
                self._installed = True

    def release(self, created: bool) -> None:
        if not created:
            return
        with self._lock:
            self._count -= 1
            if self._count == 0 and self._installed and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                self._installed = False


_SIGTERM = _SigtermToExit()
