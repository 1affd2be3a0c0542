"""The provider's Vast client, made at its first use (Ray builds providers for commands that never call Vast) from the
key file ``ray up`` gave the head or the usual key lookup, with the instance list spaced across this machine's
processes."""

from __future__ import annotations

import threading
from pathlib import Path

from skyward_ray.provider.config import VastProviderConfig
from skyward_ray.provider.list_stamp import ListStamp
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import resolve_api_key
from skyward_ray.vast.pacing import identity_of

UNPAGED_LIST = "GET /api/v0/instances/"
# The unpaged list documents no limit; its paged successor documents 1 s per call. We keep 1.5 s between two of ours:
# a loaded machine delays one request more than the next, and the server counts arrivals.
UNPAGED_LIST_INTERVAL_S = 1.5


class VastAccess:
    """One provider's client (injected, or made lazily) and the cross-process list stamp that goes with it."""

    def __init__(self, config: VastProviderConfig, client: VastClient | None = None) -> None:
        self._config = config
        self._client = client
        self._lock = threading.Lock()
        self.list_stamp: ListStamp | None = None  # set with a client made here (not an injected one)

    def client(self) -> VastClient:
        with self._lock:
            if self._client is None:
                api_key = self.api_key()
                self._client = VastClient(
                    api_key=api_key,
                    base_url=self._config.api_url,
                    # The unpaged list has no documented limit; it is held to a little more than its successor's.
                    min_interval_s={"*": self._config.api_min_interval_s,
                                    UNPAGED_LIST: max(UNPAGED_LIST_INTERVAL_S, self._config.api_min_interval_s)},
                    rate_scale=self._config.api_rate_scale,
                )
                # Lists are also spaced across this machine's processes (ray up, then ray exec...).
                self.list_stamp = ListStamp(identity_of(self._client.base_url, api_key), UNPAGED_LIST_INTERVAL_S)
            return self._client

    def api_key(self) -> str:
        """The key file ray up gave the head, else the usual lookup (explicit env, then the key files)."""
        if self._config.api_key_file:
            path = Path(self._config.api_key_file).expanduser()
            if path.is_file():
                key = path.read_text().strip()
                if key:
                    return key
        return resolve_api_key(None)
