"""``--accumulate K``: a batch in K micro-batches, one forward/backward each, then one step.

Exactness in float64 on a model without batch norm (where micro-batches change nothing but the order of the
sums): one SGD or SAM step with K = 3 (a batch of 10 in micro-batches of 4, 3, 3) leaves the weights and the
momentum of the same step on the whole batch, for a weighted-mean loss (class-weighted CE, LDAM) and a plain-mean
one (focal). The bound: the gradients are sums of 10 per-sample terms and 3 partial sums, each rounding at
float64's eps relative to the terms, so 2 x 16 x eps of their size covers it; the update adds lr x g to w.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ltsam.cli import main
from ltsam.config import resolve
from ltsam.errors import UserError
from ltsam.losses import build_loss, effective_number_weights
from ltsam.objectives import accumulated_objective, supervised_objective
from ltsam.optim import StepSettings, build_step
from tests.conftest import FAST_DIGITS
from tests.tolerances import rtol

COUNTS = [40, 20, 10, 5]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 4)).double()


def _criterion(name: str) -> nn.Module:
    weight = effective_number_weights(COUNTS, 0.999)
    crit = build_loss(name, COUNTS, weight=weight)
    return crit.double()


@pytest.mark.parametrize("loss", ["ce", "ldam", "focal"])
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "asam"])
def test_one_accumulated_step_is_the_whole_batch_step(loss, optimizer):
    torch.manual_seed(1)
    x = torch.randn(10, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 0, 1, 3, 2, 0])
    crit = _criterion(loss)
    runs = {}
    for parts in (1, 3):
        model = _model()
        sizes: list[int] = []
        model.register_forward_pre_hook(lambda m, args, seen=sizes: seen.append(len(args[0])))
        step = build_step(optimizer, model.parameters(), StepSettings(lr=0.1, momentum=0.9, wd=5e-4, rho=0.5))
        for _ in range(2):  # the second step reads the first's momentum
            objective = (supervised_objective(x, y, crit) if parts == 1
                         else accumulated_objective(x, y, crit, parts, step.backward))
            out = step(model, objective).last
        runs[parts] = (model, step, out, sizes)
    (whole, s1, o1, n1), (acc, s3, o3, n3) = runs[1], runs[3]
    passes = 2 if optimizer != "sgd" else 1
    assert n1 == [10] * 2 * passes and n3 == [4, 3, 3] * 2 * passes
    tol = rtol(torch.float64, 16, 2)
    for a, b in zip(whole.parameters(), acc.parameters(), strict=True):
        scale = float(a.abs().max()) + 1.0
        assert torch.allclose(a, b, rtol=0, atol=tol * scale), float((a - b).abs().max())
    for state1, state3 in zip(s1.optimizer.state.values(), s3.optimizer.state.values(), strict=True):
        m1, m3 = state1["momentum_buffer"], state3["momentum_buffer"]
        assert torch.allclose(m1, m3, rtol=0, atol=tol * (float(m1.abs().max()) + 1.0))
    assert float(o3.report) == pytest.approx(float(o1.report), rel=tol)
    assert torch.allclose(o3.logits, o1.logits, rtol=0, atol=tol * (float(o1.logits.abs().max()) + 1))
    moved = [not torch.equal(p, q) for p, q in zip(whole.parameters(), _model().parameters())]
    assert all(moved)  # the steps did something to every tensor


def test_micro_batches_weigh_by_class_weights_not_by_size():
    """The weighted CE of a batch is not the mean of its micro-batches' losses: with weights 1 and 9 and
    micro-batches [class 0, class 0] / [class 1], the plain mean of the two losses would count class 1 half;
    the accumulated loss is the whole batch's."""
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 3.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1])
    crit = build_loss("ce", [2, 1], weight=torch.tensor([1.0, 9.0])).double()

    class Table(nn.Module):
        def forward(self, index):
            return logits[index]

    index = torch.arange(3)
    out = accumulated_objective(index, y, crit, 2, lambda loss: loss.backward())(Table())
    want = crit(logits, y)
    assert float(out.report) == pytest.approx(float(want), rel=1e-12)
    naive = (crit(logits[:2], y[:2]) + crit(logits[2:], y[2:])) / 2
    assert abs(float(naive) - float(want)) > 0.05  # 0.175 against 0.094


def test_a_run_with_accumulate_trains_and_records_it(tmp_path: Path):
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--accumulate", "4", "--optimizer", "sam",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["accumulate"] == 4
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_loss"] == record["train_loss"] and record["train_loss"] > 0


@pytest.mark.parametrize("settings, words", [
    (dict(optimizer="imbsam", rho=0.1), ["--optimizer imbsam", "sgd, sam, asam"]),
    (dict(method="glmc"), ["--method glmc"]),
    (dict(batch_size=4, accumulate=8), ["--accumulate 8", "lower --accumulate"]),
])
def test_refusals(settings, words):
    with pytest.raises(UserError) as info:
        resolve(dict(dataset="digits", **(dict(accumulate=2) | settings)))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_cli_refusal_is_one_line_and_seeds_train_one_by_one(tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--accumulate", "0", "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--accumulate" in err[0] and not out.exists(), err
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--accumulate", "2", "--seeds", "0", "1",
                 "--out", str(out)]) == 0  # a pack's step takes whole batches: the seeds train one after another
    assert "--accumulate 2 does not pack" in capsys.readouterr().out
    assert all(json.loads((out / s / "config.json").read_text())["accumulate"] == 2 for s in ("seed0", "seed1"))
