"""What :func:`~skyward_ray.placement.explain.explain` returns and :class:`NoPlacementError` carries: the stage that
emptied the result, why, and suggestions rendered as the cluster YAML or ``skyward-ray offers`` names each setting.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass

from skyward_ray.errors import SkywardError


class Style(enum.StrEnum):
    """How a suggestion names a setting: the cluster YAML's key, or ``skyward-ray offers``' flag."""

    YAML = "yaml"
    CLI = "cli"


# Placement names -> the YAML key (a provider key, or a node type's) and the flag of ``skyward-ray offers``.
_YAML_KEYS: dict[str, str] = {"gpus_per_node": "gpus", "nodes": "max_workers"}
_CLI_FLAGS: dict[str, str] = {
    "accelerator": "--gpu", "gpus_per_node": "--count-per-node", "nodes": "--nodes", "allocation": "--allocation",
    "min_reliability": "--min-reliability", "geolocation": "--geolocation", "min_cuda": "--min-cuda",
    "min_inet_down": "--min-inet-down", "disk_gb": "--disk-gb", "max_bid": "--max-bid",
    "max_hourly_cost": "--max-hourly-cost", "docker_image": "--docker-image", "verified_only": "--verified-only",
    "datacenter_only": "--datacenter-only",
}


def money(value: float) -> str:
    """A price as messages write it: ``$0.4123/h``."""
    return f"${value:.4g}/h"


@dataclass(frozen=True)
class Suggestion:
    """One change that would help: ``option`` set to ``value`` (as YAML writes it), or advice in ``template``,
    where ``{key}`` stands for the setting's name in the style at hand. ``note`` follows the setting."""

    option: str
    value: str | None = None
    note: str = ""
    template: str = ""
    cli_template: str | None = None  # advice worded differently for the CLI (e.g. not naming the command itself)
    other: str | None = None  # a second value of the same setting, written into ``note`` where it says ``{other}``

    def render(self, style: Style = Style.YAML) -> str:
        key = _CLI_FLAGS.get(self.option, self.option) if style is Style.CLI else _YAML_KEYS.get(self.option,
                                                                                                  self.option)
        if self.value is None:
            template = self.cli_template if style is Style.CLI and self.cli_template is not None else self.template
            text = template.format(key=key)
        elif style is Style.CLI and self.value in ("true", "false") and key.startswith("--"):
            text = key if self.value == "true" else "--no-" + key[2:]
        elif style is Style.CLI:
            text = f"{key} {shlex.quote(self.value)}"
        else:
            text = f"{key}: {self.value}"
        if not self.note:
            return text
        value_of = (lambda v: f"{key} {shlex.quote(v)}") if style is Style.CLI else (lambda v: f"{key}: {v}")
        return f"{text} {self.note.replace('{other}', value_of(self.other))}" if self.other is not None else \
            f"{text} {self.note}"


@dataclass(frozen=True)
class Explanation:
    """Which stage emptied the result (an option name, ``capacity`` or ``max_hourly_cost``), why, and what helps."""

    request: str
    stage: str
    reason: str
    group: str | None = None
    suggestions: tuple[str, ...] = ()  # as the cluster YAML names things (``advice`` rendered in Style.YAML)
    advice: tuple[Suggestion, ...] = ()

    def suggestions_for(self, style: Style = Style.YAML) -> tuple[str, ...]:
        if not self.advice:
            return self.suggestions
        return tuple(dict.fromkeys(item.render(style) for item in self.advice))

    def render(self, style: Style = Style.YAML) -> str:
        who = f"{self.group}: " if self.group else ""
        text = f"No placement for {self.request}: {who}{self.reason}."
        suggestions = self.suggestions_for(style)
        if suggestions:
            text += " Would help: " + "; ".join(suggestions) + "."
        return text

    @property
    def message(self) -> str:
        return self.render(Style.YAML)

    def __str__(self) -> str:
        return self.message


class NoPlacementError(SkywardError):
    """No offers fit a request; the message says which filter emptied the result and what would help."""

    def __init__(self, explanation: Explanation, style: Style = Style.YAML) -> None:
        super().__init__(explanation.render(style))
        self.explanation = explanation
        self.style = style

    def __reduce__(self) -> tuple[type[NoPlacementError], tuple[Explanation, Style]]:
        return type(self), (self.explanation, self.style)  # Ray ships exceptions between processes by pickle
