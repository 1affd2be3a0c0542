"""Generate ``cluster_configs/REFERENCE.md`` from the pydantic schema, so the reference cannot drift from the code.

    python -m skyward_ray.provider.reference > cluster_configs/REFERENCE.md

A unit test fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from skyward_ray.placement.options import PlacementOptions
from skyward_ray.provider.config import PROVIDER_MODULE, VastNodeConfig, VastProviderConfig
from skyward_ray.provider.start_commands import START_COMMAND_KEYS

_RAY_KEYS = frozenset({"type", "module", "use_internal_ips", "use_external_head_ip", "disable_node_updaters",
                       "disable_launch_config_check", "foreground_node_launch", "worker_liveness_check",
                       "cache_stopped_nodes", "config_cache_path"})
_BOOTSTRAP_KEYS = frozenset({"ssh_public_key", "node_types"})


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        name = "list" if origin in (frozenset, set, tuple) else getattr(origin, "__name__", str(origin))
        return f"{name}[{args}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(json.dumps(member.value) for member in annotation)
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
        getattr(annotation, "__name__", str(annotation)), getattr(annotation, "__name__", str(annotation))
    )


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return ""
    else:
        value = field.default
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, frozenset | set):
        value = sorted(value)
    return "`" + json.dumps(value) + "`"


def _rows(model: type[BaseModel], names: list[str]) -> list[str]:
    rows = []
    for name in names:
        field = model.model_fields[name]
        key = field.alias or name
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
    return rows


def _table(model: type[BaseModel], names: list[str]) -> list[str]:
    return ["| key | type | default | meaning |", "|---|---|---|---|", *_rows(model, names)]


def render() -> str:
    provider_fields = list(VastProviderConfig.model_fields)
    placement = [name for name in provider_fields if name in PlacementOptions.model_fields]
    ray_keys = [name for name in provider_fields if name in _RAY_KEYS]
    bootstrap = [name for name in provider_fields if name in _BOOTSTRAP_KEYS]
    ours = [name for name in provider_fields if name not in {*placement, *ray_keys, *bootstrap}]
    lines = [
        "# Cluster config reference: `provider:` and `node_config:`",
        "",
        "Generated from the pydantic schema by `python -m skyward_ray.provider.reference` (a test keeps it current);",
        "do not edit by hand. `skyward-ray validate FILE` checks a YAML against it (unknown keys are errors).",
        "",
        "## `provider:`",
        "",
        f"Ray loads the provider with `type: external` and `module: {PROVIDER_MODULE}`.",
        "",
        "### Placement (where nodes go and what they cost)",
        "",
        "Shared with `sky.VastAI(...)` and `skyward-ray offers` (`skyward_ray.placement.PlacementOptions`).",
        "",
        *_table(VastProviderConfig, placement),
        "",
        "### The Vast API and the provider's behaviour",
        "",
        *_table(VastProviderConfig, ours),
        "",
        "### Ray's own keys",
        "",
        *_table(VastProviderConfig, ray_keys),
        "",
        "### Set by `bootstrap_config` (leave them out)",
        "",
        *_table(VastProviderConfig, bootstrap),
        "",
        "## `available_node_types.<name>.node_config:`",
        "",
        "`resources` get `GPU` (the `gpus` value) and `accelerator_type:<model>: 1` (the canonical model name with",
        "hyphens, as Ray names accelerator types, e.g. `accelerator_type:RTX-4090`, `accelerator_type:H100`) unless",
        "the YAML sets them. Declare `CPU` yourself.",
        "",
        *_table(VastNodeConfig, list(VastNodeConfig.model_fields)),
        "",
        "## Default start commands",
        "",
        "Filled in by `bootstrap_config` when the YAML leaves the key out (`skyward_ray/provider/start_commands.py`).",
        "",
    ]
    for key, commands in START_COMMAND_KEYS.items():
        lines += [f"`{key}`:", "", "```yaml", *(f"- {json.dumps(command)}" for command in commands), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
