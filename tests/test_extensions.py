"""Extension points: a loss, a SAM-style step, a train rule and a data set, each one class and one
registration made here in the test (or in a plugin module), trained through ``ltsam train``.

Each extension is checked against a built-in it must reproduce exactly, so the test proves that the
entry and its option really drive the run: a rule returning the effective-number weights trains
bit for bit like ``--train-rule reweight``; a step doing SAM every k-th step equals ``sam`` at k = 1
and ``sgd`` when k exceeds the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltsam.cli import build_parser, main
from ltsam.data.builtin import in_memory_lt
from ltsam.data.catalog import DATASETS, DataRequest
from ltsam.losses import LOSSES, effective_number_weights
from ltsam.optim import STEPS, SAMStep, SGDStep, StepResult
from ltsam.registry import Option
from ltsam.rules import TRAIN_RULES, TrainRule
from tests.conftest import FAST_DIGITS

ONE_EPOCH = [*FAST_DIGITS, "--epochs", "1"]


class ScaledCE(nn.Module):
    """CE of logits times ``scale_t``: a loss with its own option; records what it was given."""

    seen: list[float] = []

    def __init__(self, cls_num_list: Sequence[int], weight: torch.Tensor | None = None, scale_t: float = 1.0):
        super().__init__()
        self.scale_t = scale_t
        ScaledCE.seen.append(scale_t)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.scale_t * logits, targets)


class EffectiveNumberRule(TrainRule):
    """The effective-number weights from the first epoch, with its own beta option."""

    def __init__(self, en_beta: float = 0.9999):
        self.beta = en_beta

    def class_weights(self, cls_num_list: Sequence[int], epoch: int) -> torch.Tensor | None:
        return effective_number_weights(cls_num_list, self.beta)


class SAMEveryK(SAMStep):
    """SAM on every ``k``-th step, a plain step of the same base optimizer otherwise."""

    def __init__(self, optimizer, autocast=contextlib.nullcontext, scaler=None, every_k: int = 1):
        super().__init__(optimizer, autocast, scaler)
        self.every_k, self.calls = every_k, 0

    def __call__(self, model: nn.Module, objective) -> StepResult:
        self.calls += 1
        if self.calls % self.every_k == 0:
            return super().__call__(model, objective)
        return SGDStep(self.optimizer.base_optimizer, self.autocast, self.scaler)(model, objective)


def _tiny_digits(req: DataRequest):
    from ltsam.data.digits import load_digits_split

    full, test = load_digits_split()
    return in_memory_lt("tiny_digits", full, test, req, norm="digits", pad=1, flip=False)


@pytest.fixture
def registered():
    """The test's own entries, registered for one test and removed after it."""
    LOSSES.register("scaled_ce", help="CE of scaled logits (test)",
                    options=[Option("scale_t", float, 1.0, "logit scale (test)", minimum=0.0)])(ScaledCE)
    TRAIN_RULES.register("en_weights", help="effective-number weights (test)",
                         options=[Option("en_beta", float, 0.9999, "its beta (test)", minimum=0.0, below=1.0)]
                         )(EffectiveNumberRule)
    STEPS.register("sam_every_k", help="SAM every k steps (test)",
                   options=[Option("every_k", int, 1, "steps between SAM steps (test)", minimum=1)])(SAMEveryK)
    DATASETS.register("tiny_digits", help="digits via a registered loader (test)", native_epochs=200,
                      defaults=dict(arch="small_cnn", epochs=1, batch_size=64, lr=0.05, imb_factor=0.1))(_tiny_digits)
    ScaledCE.seen.clear()
    yield
    for registry, name in ((LOSSES, "scaled_ce"), (TRAIN_RULES, "en_weights"), (STEPS, "sam_every_k"),
                           (DATASETS, "tiny_digits")):
        registry.remove(name)


def _train(out: Path, *flags: str) -> tuple[dict, list[dict]]:
    assert main(["train", *ONE_EPOCH, "--out", str(out), *flags]) == 0
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    metrics = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return weights, metrics


def _same(a: tuple[dict, list[dict]], b: tuple[dict, list[dict]], ignore: tuple[str, ...] = ()) -> bool:
    """Bitwise-equal final weights and identical metrics (timings and the ``ignore`` keys aside)."""
    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ignore} for r in rows]

    return (strip(a[1]) == strip(b[1]) and a[0].keys() == b[0].keys()
            and all(torch.equal(a[0][k], b[0][k]) for k in a[0]))


def test_help_lists_the_new_entries_and_their_options(registered) -> None:
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for word in ("scaled_ce", "--scale-t", "en_weights", "--en-beta", "sam_every_k", "--every-k", "tiny_digits"):
        assert word in text, word


def test_a_registered_loss_trains_with_its_option(registered, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(out, "--loss", "scaled_ce", "--scale-t", "0.5", "--train-rule", "none")
    assert ScaledCE.seen and set(ScaledCE.seen) == {0.5}  # built with the flag's value, every epoch
    assert json.loads((out / "config.json").read_text())["scale_t"] == 0.5
    # and the value matters: another scale trains another model
    other = _train(tmp_path / "other", "--loss", "scaled_ce", "--scale-t", "2.0", "--train-rule", "none")
    assert not _same(_train(tmp_path / "again", "--loss", "scaled_ce", "--scale-t", "0.5", "--train-rule", "none"),
                     other)


def test_a_registered_rule_equals_the_builtin_it_reimplements(registered, tmp_path: Path) -> None:
    mine = _train(tmp_path / "mine", "--train-rule", "en_weights", "--en-beta", "0.99")
    builtin = _train(tmp_path / "builtin", "--train-rule", "reweight", "--beta", "0.99")
    assert _same(mine, builtin)
    assert not _same(mine, _train(tmp_path / "none", "--train-rule", "none"))


def test_a_registered_sam_step_equals_sam_and_sgd_at_its_extremes(registered, tmp_path: Path) -> None:
    every_step = _train(tmp_path / "k1", "--optimizer", "sam_every_k", "--every-k", "1")
    assert _same(every_step, _train(tmp_path / "sam", "--optimizer", "sam"))
    never = _train(tmp_path / "k1000", "--optimizer", "sam_every_k", "--every-k", "1000")
    assert _same(never, _train(tmp_path / "sgd", "--optimizer", "sgd"), ignore=("rho",))  # logs its radius
    assert not _same(every_step, never)


def test_a_registered_data_set_trains_and_evaluates(registered, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--dataset", "tiny_digits", "--out", str(out), "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "tiny_digits" and cfg["arch"] == "small_cnn" and cfg["epochs"] == 1  # its defaults
    assert main(["eval", str(out)]) == 0


def test_an_unknown_option_value_is_refused_like_a_builtin_one(registered, tmp_path: Path, capsys) -> None:
    code = main(["train", *ONE_EPOCH, "--out", str(tmp_path / "r"), "--optimizer", "sam_every_k", "--every-k", "0"])
    assert code == 2 and "--every-k must be at least 1" in capsys.readouterr().err


PLUGIN = '''
"""A user's module: one loss registered with ltsam's decorator."""
import torch.nn.functional as F
from torch import nn

from ltsam.losses import LOSSES
from ltsam.registry import Option


@LOSSES.register("plug_ce", help="plugin CE with a temperature", options=[Option("plug_temp", float, 1.0)])
class PlugCE(nn.Module):
    def __init__(self, cls_num_list, weight=None, plug_temp=1.0):
        super().__init__()
        self.temp = plug_temp

    def forward(self, logits, targets):
        return F.cross_entropy(logits / self.temp, targets, weight=None)
'''


def test_a_plugin_module_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "my_ltsam_plugin.py").write_text(PLUGIN)
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(src)]))

    def ltsam(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ltsam", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    helped = ltsam("train", "--plugin", "my_ltsam_plugin", "--help")
    assert helped.returncode == 0 and "plug_ce" in helped.stdout and "--plug-temp" in helped.stdout
    out = tmp_path / "run"
    run = ltsam("train", "--plugin", "my_ltsam_plugin", *ONE_EPOCH, "--loss", "plug_ce", "--plug-temp", "2",
                "--train-rule", "none", "--out", str(out))
    assert run.returncode == 0, run.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["plugins"] == ["my_ltsam_plugin"] and cfg["loss"] == "plug_ce" and cfg["plug_temp"] == 2.0
    # A later command imports nothing a run folder names: it asks for the plugin on one line, then works with it.
    unnamed = ltsam("eval", str(out))
    assert unnamed.returncode == 2 and "--plugin my_ltsam_plugin" in unnamed.stderr, unnamed.stderr
    assert len(unnamed.stderr.strip().splitlines()) == 1 and "Traceback" not in unnamed.stderr
    again = ltsam("eval", str(out), "--plugin", "my_ltsam_plugin")
    assert again.returncode == 0, again.stderr
    # Without the plugin the loss is unknown, named on one line.
    missing = ltsam("train", *ONE_EPOCH, "--loss", "plug_ce", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "plug_ce" in missing.stderr and "Traceback" not in missing.stderr
    bad = ltsam("train", "--plugin", "no_such_plugin_module", "--epochs", "1")
    assert bad.returncode == 2 and "no_such_plugin_module" in bad.stderr and "Traceback" not in bad.stderr
