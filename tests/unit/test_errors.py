"""Every error the package raises on purpose survives pickling (Ray ships a task's exception to the driver, and the
sky launcher's child process hands errors back), and every one is a click exception, so ``ray up``/``ray down`` and
our CLI print it as one ``Error:`` line instead of a traceback."""

from __future__ import annotations

import importlib
import pickle
import pkgutil
from typing import Any

import click
import pytest

import skyward_ray
from skyward_ray.errors import SkywardError
from skyward_ray.placement.explanation import Explanation, NoPlacementError
from skyward_ray.provider.renting import NodeLaunchError

for module in pkgutil.walk_packages(skyward_ray.__path__, "skyward_ray."):
    if not module.name.endswith("__main__"):  # a __main__ module runs its CLI when imported
        importlib.import_module(module.name)


def every_subclass(cls: type[BaseException]) -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for sub in cls.__subclasses__():
        found += [sub, *every_subclass(sub)]
    return found


def example(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, NoPlacementError):
        return cls(Explanation(request="2 x RTX 4090", stage="geolocation", reason="none in Atlantis",
                               suggestions=("geolocation: None",)))
    return cls("what went wrong; allowed: something else")


ERRORS = sorted({c for c in [SkywardError, *every_subclass(SkywardError)] if c.__module__.startswith("skyward_ray")},
                key=lambda c: c.__qualname__)


@pytest.mark.parametrize("cls", ERRORS, ids=[c.__qualname__ for c in ERRORS])
def test_every_error_survives_pickling_with_its_message_and_attributes(cls: type[SkywardError]) -> None:
    error = example(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and str(copy) == str(error)
    assert isinstance(copy, click.ClickException) and copy.format_message() == str(error)
    plain: dict[str, Any] = {k: v for k, v in vars(error).items() if k != "show_color"}
    assert {k: v for k, v in vars(copy).items() if k != "show_color"} == plain


def test_the_suite_sees_the_errors_that_matter() -> None:
    names = {c.__name__ for c in ERRORS}
    assert {"ConfigError", "NoPlacementError", "CredentialsError", "ConnectionFailedError", "LaunchError"} <= names


def test_node_launch_error_is_rays_exception_and_a_one_line_click_error() -> None:
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    error = NodeLaunchError("no-placement", "No placement for head: none in Atlantis.", None)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, NodeLaunchException) and isinstance(copy, click.ClickException)
    assert (copy.category, copy.description) == ("no-placement", "No placement for head: none in Atlantis.")
    assert copy.format_message() == "Node Launch Exception (no-placement): No placement for head: none in Atlantis."
