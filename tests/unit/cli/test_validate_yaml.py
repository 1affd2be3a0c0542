"""How ``skyward-ray validate`` reads the YAML text: duplicate keys at any depth, merge keys and aliases (which are
not duplicates), and placing a dotted field path back on the key's line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from skyward_ray.cli.validate import load_yaml, locate
from skyward_ray.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def test_a_duplicate_key_in_a_nested_mapping_is_named_with_its_path_and_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster_name: x\nprovider:\n  type: external\n  disk_gb: 50\n  disk_gb: 500\n")
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert str(caught.value) == (f"{path}:5:3: provider.disk_gb: duplicate key at line 5, column 3 (first at line 4); "
                                 "allowed: each key once per mapping")


def test_a_duplicate_key_inside_a_list_item_is_found(tmp_path: Path) -> None:
    path = write(tmp_path, "items:\n  - a: 1\n    a: 2\n")
    with pytest.raises(ConfigError, match=r":3:5: items\.0\.a: duplicate key"):
        load_yaml(path)


def test_merge_keys_aliases_and_equal_keys_in_different_mappings_are_not_duplicates(tmp_path: Path) -> None:
    text = "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\nthird:\n  <<: *b\n  x: 4\nlisted: [1, *b]\n"
    assert load_yaml(write(tmp_path, text)) == {
        "base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}, "third": {"x": 4, "y": 2}, "listed": [1, {"x": 1, "y": 2}]
    }


def test_keys_equal_only_after_typing_are_duplicates(tmp_path: Path) -> None:
    # 0x10 and 16 are the same int key once constructed: PyYAML would keep one of them silently.
    with pytest.raises(ConfigError, match="duplicate key"):
        load_yaml(write(tmp_path, "ports:\n  0x10: a\n  16: b\n"))


def test_locate_points_at_the_deepest_key_present_and_handles_dotted_names_and_lists() -> None:
    root = yaml.compose("a:\n  node.type.x:\n    node_config:\n      gpus: 0\nl:\n  - k: 1\n  - k: 2\n")
    assert root is not None

    def place(field: str) -> tuple[int, int] | None:
        mark = locate(root, field.split("."))
        return None if mark is None else (mark.line + 1, mark.column + 1)

    assert place("a.node.type.x.node_config.gpus") == (4, 7)
    assert place("a.node.type.x.node_config.missing") == (3, 5)  # the deepest key that is in the file
    assert place("l.1.k") == (7, 5)
    assert place("l.9.k") == (5, 1)
    assert place("nowhere") is None


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("cluster_name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert str(caught.value) == f"{path}: byte at offset 17 is not UTF-8; allowed: a UTF-8 text file"
