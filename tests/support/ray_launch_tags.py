"""The tags Ray's launchers give a node at creation (``ray up`` for a head, autoscaler v2's launcher pool for a
worker), for tests that drive the provider the way Ray does."""

from __future__ import annotations

from ray.autoscaler.tags import (
    STATUS_UNINITIALIZED,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)


def request_id(index: int) -> str:
    """A launch-request id (a UUID's shape) numbered ``index``."""
    return f"00000000-0000-0000-0000-{index:012d}"


def head_tags(cluster: str, node_type: str = "head") -> dict[str, str]:
    """What ``ray up`` asks ``create_node`` for when it creates the head of ``cluster``."""
    return {TAG_RAY_NODE_KIND: "head", TAG_RAY_USER_NODE_TYPE: node_type, TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED,
            TAG_RAY_LAUNCH_CONFIG: "1" * 40, TAG_RAY_NODE_NAME: f"ray-{cluster}-head"}


def worker_tags(cluster: str, launch_request: str, node_type: str = "gpu") -> dict[str, str]:
    """What autoscaler v2 asks for when it launches one worker of ``cluster`` for a launch request."""
    return {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: node_type, TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED,
            TAG_RAY_LAUNCH_CONFIG: "2" * 40, TAG_RAY_LAUNCH_REQUEST: launch_request,
            TAG_RAY_NODE_NAME: f"ray-{cluster}-worker"}
