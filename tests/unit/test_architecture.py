"""The package's shape stays readable: no import cycle between its modules, no source file over the line limit, no
private name imported from another module, and docs/architecture.md names only modules that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import skyward_ray

PACKAGE = Path(skyward_ray.__file__).resolve().parent
REPO = PACKAGE.parent
MAX_FILE_LINES = 500
ARCHITECTURE_PAGE = REPO / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def absolute_base(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imported_modules(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere: at load time, inside functions, and for type checking
    alone (a cycle hidden in a function or behind ``TYPE_CHECKING`` still ties the two modules into one). ``from a
    import b`` counts ``a.b`` when that is a module of its own; the root package, which every module's import loads
    anyway, does not count."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute_base(module, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in MODULES else base)
    return {t for t in targets if t in MODULES and t not in (module, "skyward_ray")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the list of modules along it, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path: list[str] = [root]
        children = [iter(sorted(graph[root]))]
        state[root] = 1
        while children:
            child = next(children[-1], None)
            if child is None:
                state[path.pop()] = 2
                children.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                children.append(iter(sorted(graph[child])))
    return None


def test_find_cycle_sees_a_cycle_and_a_clean_graph() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_the_packages_modules() -> None:
    graph = {module: imported_modules(module) for module in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_source_file_over_the_line_limit() -> None:
    too_long = {str(p.relative_to(REPO)): n for p in MODULES.values()
                if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not too_long, f"split these (limit {MAX_FILE_LINES} lines): {too_long}"


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders: list[str] = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and absolute_base(module, node).startswith("skyward_ray"):
                offenders += [f"{module} imports {absolute_base(module, node)}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
    assert not offenders, offenders


# Comments and docstrings speak in the code's own terms, not of papers a reader of the repository does not have.
OUTSIDE_REFERENCES = re.compile(r"DESIGN\.md|DESIGN decision|seed document|\bseed's\b|\bissue \d+|\bphase \d+",
                                re.IGNORECASE)


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_source_never_cites_documents_outside_the_repository(path: Path) -> None:
    cited = [f"{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
             if OUTSIDE_REFERENCES.search(line)]
    assert not cited, cited


def test_the_architecture_page_names_only_modules_that_exist() -> None:
    text = ARCHITECTURE_PAGE.read_text()
    named = set(re.findall(r"skyward_ray(?:[./][A-Za-z_]+)+(?:\.py|\.sh|\.yaml)?", text))
    assert len(named) >= 20, "the page should walk through the package's modules"
    missing = []
    for name in named:
        if "/" in name:
            exists = (REPO / name).exists()
        else:
            exists = name in MODULES or any(m.startswith(name + ".") for m in MODULES)
        if not exists:
            missing.append(name)
    assert not missing, f"docs/architecture.md names modules that do not exist: {sorted(missing)}"
