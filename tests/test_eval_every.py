"""``--eval-every K``: which epochs are evaluated, that training is the same bits whatever K, that best.pt is the
best of the evaluated epochs (the selection rule's meaning unchanged), that the last epoch is always evaluated,
and that a run stopped mid-way and resumed is bit for bit the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ltsam.cli import main
from ltsam.epoch_settings import evaluated
from tests.test_cli_errors import _assert_one_line, _run
from tests.test_faults import _assert_same, _ckpt, _metrics, _strip

# digits, 10 epochs of 9 steps; K = 3 evaluates epochs 3, 6, 9 and the last tenth (epoch 10), 1-indexed.
FLAGS = ["--dataset", "digits", "--epochs", "10", "--batch-size", "64", "--no-progress", "--seed", "3"]
TEST_FIELDS = ("test_loss", "test_top1", "test_top5", "many_acc", "medium_acc", "few_acc", "per_class_acc")


@pytest.mark.parametrize("epochs, k", [(200, 10), (200, 1), (10, 3), (7, 4), (1, 5), (30, 7)])
def test_evaluated_epochs_are_every_kth_and_the_last_tenth(epochs: int, k: int) -> None:
    """The set written out independently: multiples of K (1-indexed) and the last ceil(epochs / 10) epochs."""
    tail = -(-epochs // 10)
    expected = {e for e in range(epochs) if (e + 1) % k == 0} | set(range(epochs - tail, epochs))
    got = {e for e in range(epochs) if evaluated(SimpleNamespace(epochs=epochs, eval_every=k), e)}
    assert got == expected
    assert epochs - 1 in got  # the final epoch always
    if k == 1:
        assert got == set(range(epochs))
    if (epochs, k) == (200, 10):
        assert len(got) == 38  # 20 multiples of 10 plus epochs 181..199 not among them (18)


@pytest.fixture(scope="module")
def every_epoch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("k1") / "run"
    assert main(["train", *FLAGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def every_third(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("k3") / "run"
    assert main(["train", *FLAGS, "--eval-every", "3", "--out", str(out)]) == 0
    return out


def test_training_is_the_same_bits_and_best_is_the_best_evaluated_epoch(every_epoch: Path, every_third: Path) -> None:
    ref, run = _ckpt(every_epoch / "last.pt"), _ckpt(every_third / "last.pt")
    _assert_same(run["model"], ref["model"], "model")
    _assert_same(run["optimizer"], ref["optimizer"], "optimizer")
    all_epochs, some = _metrics(every_epoch), _metrics(every_third)
    assert [m["epoch"] for m in some] == list(range(10))  # every epoch recorded once
    measured = [m["epoch"] for m in some if m["test_top1"] is not None]
    assert measured == [2, 5, 8, 9]
    for a, b in zip(all_epochs, some):
        assert {k: v for k, v in a.items() if k not in TEST_FIELDS} == {k: v for k, v in b.items()
                                                                        if k not in TEST_FIELDS}
        if b["epoch"] in measured:
            assert {k: a[k] for k in TEST_FIELDS} == {k: b[k] for k in TEST_FIELDS}
        else:
            assert all(b[k] is None for k in TEST_FIELDS)
    # best: the highest test top-1 among the evaluated epochs, the earliest on a tie (as with K = 1 over all)
    best = max((m for m in all_epochs if m["epoch"] in measured), key=lambda m: (m["test_top1"], -m["epoch"]))
    best_pt = _ckpt(every_third / "best.pt")
    assert best_pt["epoch"] == best["epoch"] + 1
    assert run["best_record"]["epoch"] == best["epoch"]
    final, final_ref = (_strip(json.loads((d / "final.json").read_text())) for d in (every_third, every_epoch))
    assert final["final"] == final_ref["final"]  # the last epoch's model, evaluated
    assert final["best"]["epoch"] == best["epoch"] and final["best"]["top1"] == best["test_top1"]


def test_a_run_stopped_between_evaluations_resumes_to_the_same_bits(tmp_path: Path, every_third: Path,
                                                                      capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--eval-every", "3", "--stop-after", "4", "--out", str(out)]) == 0
    assert len(_metrics(out)) == 4
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    for name in ("last.pt", "best.pt"):
        _assert_same(_ckpt(out / name), _ckpt(every_third / name), name)
    assert _metrics(out) == _metrics(every_third)


def test_resume_may_change_k_and_training_stays_the_same(tmp_path: Path, every_epoch: Path, capsys) -> None:
    """K decides what is measured, never what is trained: a run resumed with another K ends on the same weights."""
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--eval-every", "5", "--stop-after", "3", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--eval-every", "1", "--no-progress"]) == 0
    _assert_same(_ckpt(out / "last.pt")["model"], _ckpt(every_epoch / "last.pt")["model"], "model")
    assert [m["test_top1"] is not None for m in _metrics(out)] == [False] * 3 + [True] * 7
    assert json.loads((out / "config.json").read_text())["eval_every"] == 1


def test_a_pack_evaluates_its_members_on_the_same_epochs(tmp_path: Path, every_third: Path) -> None:
    out = tmp_path / "pack"
    assert main(["train", *FLAGS, "--eval-every", "3", "--seeds", "3", "4", "--out", str(out)]) == 0
    for seed in (3, 4):
        measured = [m["epoch"] for m in _metrics(out / f"seed{seed}") if m["test_top1"] is not None]
        assert measured == [2, 5, 8, 9]
    assert _metrics(out / "seed3") == _metrics(every_third)  # the pack's member is its run alone


def test_eval_every_zero_is_one_line(tmp_path: Path, capsys) -> None:
    code, err = _run(["train", *FLAGS, "--eval-every", "0", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    _assert_one_line(err, "--eval-every")
    assert not (tmp_path / "run").exists()
