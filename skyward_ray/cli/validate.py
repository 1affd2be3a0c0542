"""``skyward-ray validate FILE``: check a Vast cluster YAML the way ``ray up`` will, without renting anything.

It runs Ray's own preparation and schema check (``prepare_config``, ``validate_config``) plus ours (the ``provider:``
section, every ``node_config``, the keys Ray needs from an external provider's YAML), with the resources our
provider fills in. No API call, no key needed. Bad input: one line naming the field, the value and what is allowed,
exit code 2.
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from skyward_ray.errors import ConfigError


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is {type(data).__name__}; allowed: a mapping (a cluster config)")
    return data


def validate_cluster_file(path: Path) -> dict[str, Any]:
    """Everything ``ray up`` would check before renting; returns the prepared config. Raises ConfigError."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    from skyward_ray.provider.bootstrap import check_required_keys, fill_node_resources, validate

    raw = load_yaml(path)
    check_required_keys(raw)  # before Ray's preparation, which fails on some of them with a bare KeyError
    ray_util_log = logging.getLogger("ray.autoscaler._private.util")
    level = ray_util_log.level
    ray_util_log.setLevel(logging.ERROR)  # Ray warns about the empty legacy fields it adds itself
    try:
        config = prepare_config(copy.deepcopy(raw))
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        raise ConfigError(f"{path}: Ray's config preparation failed: {exc!r}") from None
    finally:
        ray_util_log.setLevel(level)
    fill_node_resources(config)
    try:
        validate_config(config)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise ConfigError(f"{path}: {where}: {exc.message}") from None
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    validate(config)
    return config


def describe(config: dict[str, Any]) -> str:
    from skyward_ray.provider.bootstrap import validate
    from skyward_ray.provider.config import HEAD_KIND, WORKER_KIND, overlay_name_for

    provider, shapes = validate(config)
    parts = []
    for name, shape in shapes.items():
        node = shape.node_config
        gpus = f"{node.gpus} x {node.accelerator}"
        if shape.kind == HEAD_KIND:
            parts.append(f"head {name}: {gpus} ({node.allocation_for(HEAD_KIND).value})")
        if shape.max_workers > 0:
            allocation = node.allocation_for(WORKER_KIND).value
            parts.append(f"workers {name}: {shape.min_workers}-{shape.max_workers} x [{gpus}] ({allocation})")
    multi = provider.use_overlay and any(shape.max_workers > 0 for shape in shapes.values())
    network = (f"overlay {provider.overlay_name or overlay_name_for(config['cluster_name'])} on one physical cluster"
               if multi else "no overlay")
    return f"cluster {config['cluster_name']!r}; " + "; ".join(parts) + f"; {network}"


def run(args: argparse.Namespace) -> int:
    for name in args.files:
        config = validate_cluster_file(Path(name))
        print(f"OK {name}: {describe(config)}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate", help="check a Vast cluster YAML as ray up would (no renting)",
        description="Run Ray's config preparation and schema check plus skyward-ray's provider and node_config "
        "checks on each FILE. Exit code 2 names the first problem.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="cluster YAML file(s)")
    parser.set_defaults(func=run)
