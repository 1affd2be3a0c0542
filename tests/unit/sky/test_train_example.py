"""examples/train_on_bids.py without a cluster: the step accounting the e2e test and benchmark report, the data that
makes a restored run equal an uninterrupted one, and its bad-input lines."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "train_on_bids.py"


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    saved = dict(os.environ)  # the example sets Ray Train's variables for its own process
    spec = importlib.util.spec_from_file_location("train_on_bids_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        os.environ.clear()
        os.environ.update(saved)


def _begin(attempt: int, rank: int, start: int, instance: str) -> dict[str, object]:
    return {"attempt": attempt, "rank": rank, "start": start, "instance": instance}


def test_accounting_counts_the_steps_run_twice(example: ModuleType) -> None:
    snapshot = {
        "begins": [_begin(0, 0, 0, "a"), _begin(0, 1, 0, "b"), _begin(1, 1, 10, "c"), _begin(1, 0, 10, "a"),
                   _begin(2, 0, 20, "a"), _begin(2, 1, 20, "d")],
        # attempt 0 died at step 13 (rank 1 got one step further), attempt 1 at 27, attempt 2 finished
        "steps": [{"attempt": 0, "rank": 0, "step": 12}, {"attempt": 0, "rank": 1, "step": 13},
                  {"attempt": 1, "rank": 0, "step": 27}, {"attempt": 1, "rank": 1, "step": 26},
                  {"attempt": 2, "rank": 0, "step": 40}, {"attempt": 2, "rank": 1, "step": 40}],
    }
    summary = example.accounting(snapshot, steps=40)
    assert [(a["start"], a["reached"]) for a in summary["attempts"]] == [(0, 13), (10, 27), (20, 40)]
    assert summary["executed_steps"] == 13 + 17 + 20
    assert summary["recomputed_steps"] == (13 - 10) + (27 - 20)
    assert summary["attempts"][1]["instances"] == {"1": "c", "0": "a"}


def test_an_uninterrupted_run_recomputes_nothing(example: ModuleType) -> None:
    snapshot = {"begins": [_begin(0, 0, 0, "a"), _begin(0, 1, 0, "b")],
                "steps": [{"attempt": 0, "rank": 0, "step": 40}, {"attempt": 0, "rank": 1, "step": 40}]}
    assert example.accounting(snapshot, steps=40)["recomputed_steps"] == 0


def test_a_steps_batch_is_the_same_in_every_attempt_and_split_by_rank(example: ModuleType) -> None:
    x0, y0 = example.batch(seed=0, step=7, rank=0, world=2)
    x1, y1 = example.batch(seed=0, step=7, rank=1, world=2)
    again, _ = example.batch(seed=0, step=7, rank=0, world=2)
    assert torch.equal(x0, again), "a restored attempt draws the same data for the same step"
    assert x0.shape == x1.shape == (example.GLOBAL_BATCH // 2, example.FEATURES)
    assert not torch.equal(x0, x1), "each rank its own half"
    other, _ = example.batch(seed=0, step=8, rank=0, world=2)
    assert not torch.equal(x0, other)
    assert y0.shape == y1.shape == (example.GLOBAL_BATCH // 2,)


@pytest.mark.parametrize("flag", ["--steps", "--checkpoint-every", "--workers"])
def test_bad_numbers_are_one_line(example: ModuleType, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        example.parse_args([flag, "0"])
    assert caught.value.code == 2
    assert f"{flag}: 0 is not allowed; allowed: 1 or more" in capsys.readouterr().err


def test_no_storage_on_a_bid_cluster_is_refused_before_ray_starts(
        example: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYWARD_TRAIN_STORAGE", raising=False)
    assert example.main(["--on-bids", "yes"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("Error: RunConfig.storage_path: not set"), out
