"""``skyward-ray validate FILE``: check a Vast cluster YAML the way ``ray up`` will, without renting anything.

Ray's own preparation and schema check plus ours (the ``provider:`` section, every ``node_config``, known GPU names),
with no API call and no key. Bad input is one line placed in the file like a compiler's (``vast.yaml:14:3: ...``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from skyward_ray.errors import ConfigError
from skyward_ray.placement.gpus import closest_gpu_names, known_gpu_names, resolve_gpu
from skyward_ray.provider.bootstrap import check_required_keys, fill_node_resources, validate
from skyward_ray.provider.config import HEAD_KIND, WORKER_KIND, check_head_node_type, overlay_name_for

_MERGE_TAG = "tag:yaml.org,2002:merge"
# The field a message of ours starts with: "provider.min_reliability: 1.5 is not allowed (...)".
_LEADING_FIELD = re.compile(r"([^\s:;,]+): ")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key repeated in one mapping is an error: PyYAML keeps the last one silently, so
    the user's first value would vanish without a word."""

    def check_duplicate_keys(self, node: yaml.Node, path: tuple[str, ...] = (), seen: set[int] | None = None) -> None:
        seen = set() if seen is None else seen
        if id(node) in seen:  # an alias to a node already walked (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.check_duplicate_keys(item, (*path, str(index)), seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None:
                    field = ".".join((*path, str(key)))
                    mark = key_node.start_mark
                    if key in first:
                        raise ConfigError(
                            f"{_place(mark)}{field}: duplicate key at line {mark.line + 1}, column {mark.column + 1} "
                            f"(first at line {first[key].line + 1}); allowed: each key once per mapping")
                    first[key] = mark
                self.check_duplicate_keys(value_node, (*path, str(key)), seen)


def _place(mark: yaml.Mark | None) -> str:
    return "" if mark is None else f"{mark.line + 1}:{mark.column + 1}: "


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def compose_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node]:
    """The file's data and its YAML node tree (where each key sits, for messages). Raises ConfigError naming the
    file, and the line and column where the text is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte at offset {exc.start} is not UTF-8; allowed: a UTF-8 text file") from None
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            loader.check_duplicate_keys(root)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML at line {mark.line + 1}, column " \
                f"{mark.column + 1}" if mark is not None else f"{path}: not valid YAML"
        raise ConfigError(_one_line(f"{where} ({getattr(exc, 'problem', None) or exc})")) from None
    except ConfigError as exc:  # a duplicate key: its message starts with "line:column: "
        raise ConfigError(f"{path}:{exc.message}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is {type(data).__name__}; allowed: a mapping (a cluster config)")
    assert root is not None
    return data, root


def load_yaml(path: Path) -> dict[str, Any]:
    """The file's data; malformed YAML and duplicate keys are a ConfigError with their line and column."""
    return compose_yaml(path)[0]


def locate(root: yaml.Node, field: Iterable[str]) -> yaml.Mark | None:
    """Where the deepest key along ``field`` (a path of keys and list indexes) sits in the file; None when not even
    its first key is there (a key Ray filled in, a missing one). A part may itself contain dots (a node type name
    "a.b"), so each step tries the longest joined run of parts first."""
    parts = list(field)
    node, mark, index = root, None, 0
    while index < len(parts):
        if isinstance(node, yaml.SequenceNode) and parts[index].isdigit() and int(parts[index]) < len(node.value):
            node, index = node.value[int(parts[index])], index + 1
            mark = node.start_mark
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for end in range(len(parts), index, -1):
            wanted = ".".join(parts[index:end])
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == wanted), None)
            if found is not None:
                mark, node, index = found[0].start_mark, found[1], end
                break
        else:
            break
    return mark


def _located(path: Path, root: yaml.Node, field: Iterable[str] | None, message: str) -> ConfigError:
    """``FILE:LINE:COLUMN: message`` (``FILE: message`` when the field is not in the file), on one line."""
    mark = locate(root, field) if field is not None else None
    place = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return ConfigError(_one_line(f"{path}{place}: {message}"))


def _leading_field(message: str) -> list[str] | None:
    match = _LEADING_FIELD.match(message)
    return match.group(1).split(".") if match else None


def _schema_error_field(exc: Any) -> list[str]:
    """The path of a Ray schema error; for an unknown key, the path of that key (the first one)."""
    field = [str(part) for part in exc.absolute_path]
    if exc.validator == "additionalProperties" and isinstance(exc.instance, dict):
        known = set((exc.schema or {}).get("properties", {}))
        patterns = list((exc.schema or {}).get("patternProperties", {}))
        extra = [key for key in exc.instance if key not in known and not any(re.search(p, str(key)) for p in patterns)]
        if extra:
            field.append(str(extra[0]))
    return field


def validate_cluster_file(path: Path) -> dict[str, Any]:
    """Everything ``ray up`` would check before renting; returns the prepared config. Raises ConfigError whose one
    line starts with ``FILE:LINE:COLUMN:`` of the field at fault when the field is in the file."""
    raw, root = compose_yaml(path)
    try:
        check_required_keys(raw)  # before Ray's preparation, which fails on some of them with a bare KeyError
        if isinstance(raw.get("available_node_types"), dict):
            check_head_node_type(raw)  # Ray's own message names neither the value nor the choices
    except ConfigError as exc:
        raise _located(path, root, _leading_field(exc.message), exc.message) from None
    ray_util_log = logging.getLogger("ray.autoscaler._private.util")
    level = ray_util_log.level
    ray_util_log.setLevel(logging.ERROR)  # Ray warns about the empty legacy fields it adds itself
    try:
        config = prepare_config(copy.deepcopy(raw))
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        raise _located(path, root, None, f"Ray's config preparation failed: {exc!r}") from None
    finally:
        ray_util_log.setLevel(level)
    fill_node_resources(config)
    try:
        validate_config(config)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise _located(path, root, _schema_error_field(exc), f"{where}: {exc.message}") from None
    except (ValueError, RuntimeError) as exc:
        raise _located(path, root, None, str(exc)) from None
    try:
        validate(config)
    except ConfigError as exc:
        raise _located(path, root, _leading_field(exc.message), exc.message) from None
    return config


# What only the market can answer (``skyward-ray offers`` asks it). Node types with different GPU models may share one
# physical cluster: Vast has no rule against it, so whether one cluster has them all is a market question too.
MARKET_CHECKS = (
    "whether offers match each node type (GPU, reliability, region, CUDA, disk)",
    "whether one physical cluster holds the head and every node type at max_workers (mixed GPU models are allowed)",
    "prices against max_hourly_cost and max_bid",
)
def check_accelerators(path: Path, root: yaml.Node, config: dict[str, Any]) -> None:
    """Every node type's accelerator is a GPU name the table knows; else one error with the closest names."""
    for name, settings in (config.get("available_node_types") or {}).items():
        accelerator = ((settings or {}).get("node_config") or {}).get("accelerator")
        if not isinstance(accelerator, str) or resolve_gpu(accelerator).model is not None:
            continue
        close = closest_gpu_names(accelerator)
        hint = f"closest: {', '.join(repr(c) for c in close)}; " if close else ""
        field = ["available_node_types", str(name), "node_config", "accelerator"]
        raise _located(path, root, field, (
            f"{'.'.join(field)}: {accelerator!r} is not a GPU name skyward-ray knows ({hint}allowed: a name such as "
            f"{', '.join(known_gpu_names()[:8])}, ...). ray up would search Vast for it as typed; for a GPU newer "
            "than skyward-ray's table, pass --allow-unknown-gpu"))


def describe(config: dict[str, Any]) -> str:
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
        path = Path(name)
        config = validate_cluster_file(path)
        if not args.allow_unknown_gpu:
            check_accelerators(path, compose_yaml(path)[1], config)
        print(f"OK {name}: {describe(config)}")
    print("Not checked offline (they need the market; `skyward-ray offers` asks it): " + "; ".join(MARKET_CHECKS))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate", help="check a Vast cluster YAML as ray up would (no renting)",
        description="Run Ray's config preparation and schema check plus skyward-ray's provider and node_config "
        "checks (known GPU names, regions, allocation, ...) on each FILE, offline. Exit code 2 names the first "
        "problem. Not checked (they need the market; `skyward-ray offers` asks it): " + "; ".join(MARKET_CHECKS) + ".")
    parser.add_argument("files", nargs="+", metavar="FILE", help="cluster YAML file(s)")
    parser.add_argument("--allow-unknown-gpu", action="store_true",
                        help="accept an accelerator name the GPU table does not know (searched on Vast as typed)")
    parser.set_defaults(func=run)
