"""The tag <-> Vast label codec: the one place that knows how Ray tags live in an instance's label. Vast has one
free-text label per instance (256 characters at creation, 1024 on relabel); every Ray tag of a node and our own
(physical cluster, overlay subnet, rental nonce) is encoded in it, so every process rebuilds the same tags from one
list call. Format: see :func:`encode_label`."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_UNMANAGED,
    NODE_KIND_WORKER,
    STATUS_SETTING_UP,
    STATUS_SYNCING_FILES,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    STATUS_UPDATE_FAILED,
    STATUS_WAITING_FOR_SSH,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_FILE_MOUNTS_CONTENTS,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_REPLICA_INDEX,
    TAG_RAY_RUNTIME_CONFIG,
    TAG_RAY_USER_NODE_TYPE,
)

LABEL_VERSION = "skyr1"
MAX_LABEL_LENGTH = 1024  # PUT /instances/{id}/ (relabel) rejects longer labels with a 400
MAX_CREATE_LABEL_LENGTH = 256  # PUT /asks/{id}/ (create) rejects longer labels with a 400

# Our own tags, kept next to Ray's so that one list call restores them too.
TAG_PHYSICAL_CLUSTER = "skyward-physical-cluster"  # Vast cluster_id the cluster's nodes live on
TAG_OVERLAY_SUBNET = "skyward-overlay-subnet"  # the overlay's internal_subnet, to pick the overlay IP
TAG_RENTAL = "skyward-rental"  # nonce of the rental request that made the instance (ghost detection)
TAG_OVERLAY_IP = "skyward-overlay-ip"  # the overlay address, when learned on the node (the API may not list it)

_KEY_CODES: dict[str, str] = {
    TAG_RAY_NODE_KIND: "k",
    TAG_RAY_USER_NODE_TYPE: "t",
    TAG_RAY_NODE_STATUS: "s",
    TAG_RAY_LAUNCH_CONFIG: "l",
    TAG_RAY_RUNTIME_CONFIG: "r",
    TAG_RAY_FILE_MOUNTS_CONTENTS: "f",
    TAG_RAY_LAUNCH_REQUEST: "q",
    TAG_RAY_NODE_NAME: "n",
    TAG_RAY_REPLICA_INDEX: "i",
    TAG_PHYSICAL_CLUSTER: "c",
    TAG_OVERLAY_SUBNET: "o",
    TAG_RENTAL: "g",
    TAG_OVERLAY_IP: "a",
}
_CODE_KEYS = {code: key for key, code in _KEY_CODES.items()}

_WORD_CODES: dict[str, str] = {
    NODE_KIND_HEAD: "h",
    NODE_KIND_WORKER: "w",
    NODE_KIND_UNMANAGED: "u",
    STATUS_UNINITIALIZED: "U",
    STATUS_WAITING_FOR_SSH: "W",
    STATUS_SYNCING_FILES: "S",
    STATUS_SETTING_UP: "P",
    STATUS_UPDATE_FAILED: "F",
    STATUS_UP_TO_DATE: "D",
}
_CODE_WORDS = {code: word for word, code in _WORD_CODES.items()}

# Characters with a meaning in the format; escaped wherever they occur in a literal key or value.
_RESERVED = frozenset(";=:%~^!")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LabelTooLongError(ValueError):
    """The encoded tags would not fit in Vast's label (256 characters at create, 1024 later)."""


def _escape(text: str) -> str:
    out: list[str] = []
    for char in text:
        if char in _RESERVED or not (char.isascii() and char.isprintable()) or char == " ":
            out.extend(f"%{byte:02X}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out)


def _unescape(text: str) -> str:
    raw = bytearray()
    index = 0
    while index < len(text):
        char = text[index]
        if char == "%" and _is_hex(text[index + 1 : index + 3]):
            raw.append(int(text[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.extend(char.encode())
            index += 1
    return raw.decode(errors="replace")


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_value(value: str) -> str:
    if value in _WORD_CODES:
        return "!" + _WORD_CODES[value]
    if _SHA1.fullmatch(value):
        return "~" + _b64(bytes.fromhex(value))
    if _UUID.fullmatch(value):
        return "^" + _b64(uuid.UUID(value).bytes)
    return _escape(value)


def _decode_value(text: str) -> str:
    try:
        if text.startswith("!") and text[1:] in _CODE_WORDS:
            return _CODE_WORDS[text[1:]]
        if text.startswith("~"):
            return _unb64(text[1:]).hex()
        if text.startswith("^"):
            return str(uuid.UUID(bytes=_unb64(text[1:])))
    except (ValueError, binascii.Error):
        pass  # not ours after all: fall through to the literal reading
    return _unescape(text)


def default_node_name(cluster_name: str, kind: str | None) -> str:
    """Ray's own ``ray-node-name`` value (``ray-<cluster>-head`` / ``-worker``), left out of labels."""
    return f"ray-{cluster_name}-{kind}"


def label_prefix(cluster_name: str) -> str:
    """Every label of ``cluster_name``'s instances starts with this, and no other cluster's label does."""
    return f"{LABEL_VERSION}:{_escape(cluster_name)};"


def encode_label(cluster_name: str, tags: Mapping[str, str], *, limit: int = MAX_LABEL_LENGTH) -> str:
    """The label carrying ``tags`` for a node of ``cluster_name``; deterministic (same tags, same label). ``limit``
    is the length Vast accepts where the label is sent (:data:`MAX_CREATE_LABEL_LENGTH` on a rental).

    Format (version 1): ``skyr1:<cluster>;k=w;t=gpu;s=!D;l=~<27 chars>;q=^<22 chars>;c=17;o=10.8.0.0/24;g=3f2a9c1b``.
    ``<cluster>`` is the exact cluster name, escaped (a cluster's instances are those whose label starts with
    :func:`label_prefix`). Known keys have one-letter codes (:data:`_KEY_CODES`), others are ``.<escaped key>``.
    Values are compacted losslessly: a 40-hex SHA-1 becomes ``~`` + 27 base64url characters, a UUID ``^`` + 22, a
    known kind or status ``!`` + one letter; everything else is percent-escaped. ``ray-cluster-name`` and a default
    ``ray-node-name`` are left out; :func:`decode_label` puts both back."""
    kind = tags.get(TAG_RAY_NODE_KIND)
    parts: list[str] = []
    for key in sorted(tags, key=lambda k: (k not in _KEY_CODES, _KEY_CODES.get(k, k))):
        value = str(tags[key])
        if key == TAG_RAY_CLUSTER_NAME:
            continue  # the label's cluster part
        if key == TAG_RAY_NODE_NAME and value == default_node_name(cluster_name, kind):
            continue
        code = _KEY_CODES.get(key, "." + _escape(key))
        parts.append(f"{code}={_encode_value(value)}")
    label = label_prefix(cluster_name) + ";".join(parts)
    if len(label) > limit:
        raise LabelTooLongError(
            f"the tags of a node of cluster {cluster_name!r} need {len(label)} characters in the Vast label; "
            f"at most {limit} are allowed (shorten the cluster name or the tag values)"
        )
    return label


def check_create_label_fits(cluster_name: str, node_type: str) -> None:
    """Refuse, before anything is rented, a cluster or node type name that leaves no room in the label a rental
    carries: the tags a node is created with, at their longest, must fit :data:`MAX_CREATE_LABEL_LENGTH`."""
    longest_create_tags = {
        TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
        TAG_RAY_USER_NODE_TYPE: node_type,
        TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED,
        TAG_RAY_LAUNCH_CONFIG: "f" * 40,
        TAG_RAY_LAUNCH_REQUEST: str(uuid.UUID(int=0)),
        TAG_RENTAL: "f" * 8,
        TAG_PHYSICAL_CLUSTER: "9" * 10,
        TAG_OVERLAY_SUBNET: "255.255.255.255/32",
    }
    encode_label(cluster_name, longest_create_tags, limit=MAX_CREATE_LABEL_LENGTH)


def decode_label(label: str | None) -> tuple[str, dict[str, str]] | None:
    """``(cluster_name, tags)`` from a label written by :func:`encode_label`, or None for any other label."""
    if not label or not label.startswith(LABEL_VERSION + ":"):
        return None
    head, sep, body = label[len(LABEL_VERSION) + 1 :].partition(";")
    if not sep:
        return None
    cluster_name = _unescape(head)
    tags: dict[str, str] = {TAG_RAY_CLUSTER_NAME: cluster_name}
    for part in body.split(";") if body else ():
        code, eq, raw = part.partition("=")
        if not eq:
            continue
        if code.startswith("."):
            key = _unescape(code[1:])
        elif code in _CODE_KEYS:
            key = _CODE_KEYS[code]
        else:
            continue  # a field of a later format revision: not ours to interpret
        tags[key] = _decode_value(raw)
    if TAG_RAY_NODE_NAME not in tags and TAG_RAY_NODE_KIND in tags:
        tags[TAG_RAY_NODE_NAME] = default_node_name(cluster_name, tags[TAG_RAY_NODE_KIND])
    return cluster_name, tags


def is_cluster_label(label: str | None, cluster_name: str) -> bool:
    """Whether an instance with this label belongs to ``cluster_name`` (the one ownership test)."""
    return bool(label) and label.startswith(label_prefix(cluster_name))  # type: ignore[union-attr]
