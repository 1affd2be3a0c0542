"""The emulator is an independent server implementation: it must never import our client, provider, compute or
placement (otherwise the client would be tested against its own code)."""

from __future__ import annotations

import ast
from pathlib import Path

import skyward_ray.emulator

FORBIDDEN = ("skyward_ray.vast", "skyward_ray.provider", "skyward_ray.sky", "skyward_ray.placement")
PACKAGE = Path(skyward_ray.emulator.__file__).parent
CLI = PACKAGE.parent / "cli" / "emulator.py"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_emulator_imports_none_of_our_client_side() -> None:
    files = [*sorted(PACKAGE.rglob("*.py")), CLI]
    assert len(files) > 10
    offenders = {str(path.name): sorted(name for name in imported_modules(path) if name.startswith(FORBIDDEN))
                 for path in files}
    assert {name: bad for name, bad in offenders.items() if bad} == {}
