"""tau-normalisation as a stage without epochs: one pass for the classifier's inputs, every tau of the grid
scored on them, the chosen tau folded into the saved model (``sweep.json``, ``metrics.jsonl``: the sweep)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ltsam.errors import UserError
from ltsam.evaluate import evaluate_offsets
from ltsam.finetune.heads import get_module, set_module, tau_normalized
from ltsam.finetune.stages import STAGES, Stage, StageRun, batch_size_option
from ltsam.io import write_json
from ltsam.registry import Option
from ltsam.run.checkpoints import save_run_checkpoints
from ltsam.run.files import SWEEP_NAME
from ltsam.run.records import MetricsLog


@STAGES.register("tau-norm", help="tau-normalisation w_k / ||w_k||^tau, no training; tau chosen on --val-list or "
                                  "the parent's held-out split, else given (default 1), with the sweep reported",
                 options=[Option("tau", float, None, "tau-norm: the tau to keep (default: the best on --val-list or "
                                 "on the parent's --val-per-class split, else 1)", minimum=0.0),
                          Option("tau_grid", str, "0:2:0.1", "tau-norm: the taus swept, START:STOP:STEP or a list "
                                 "(default 0:2:0.1, the authors' grid)"),
                          Option("val_list", str, None, "tau-norm: list file of validation images (list-file data "
                                 "sets) on which tau is chosen"),
                          batch_size_option(512)], aliases=("tau_norm", "taunorm"))
class TauNormalisation(Stage):
    """tau-normalisation (Kang et al., ICLR 2020): w_k / ||w_k||^tau for each tau of the grid, evaluated on
    the frozen features; the model kept has the given tau, or the one best on the validation images (the
    --val-list, else the parent run's held-out split)."""

    trains = False

    def __init__(self, tau: float | None = None, tau_grid: str = "0:2:0.1", val_list: str | None = None,
                 batch_size: int = 512, **options: Any):
        super().__init__(epochs=1, batch_size=batch_size, **options)
        from ltsam.posthoc import parse_taus

        self.tau, self.val_list = tau, val_list
        self.grid = parse_taus(tau_grid, "--tau-grid")
        if tau is not None and tau not in self.grid:
            self.grid = sorted({*self.grid, tau})
        self.base: nn.Linear | None = None

    def install(self, model: nn.Module, path: str) -> list[nn.Parameter]:
        self.base = get_module(model, path)  # type: ignore[assignment]
        return []

    def head_for(self, tau: float) -> nn.Linear:
        assert self.base is not None
        return tau_normalized(self.base, tau)

    def fit_without_epochs(self, run: StageRun) -> dict[str, Any]:
        return fit_tau_norm(run, self)


def fit_tau_norm(runner: StageRun, stage: TauNormalisation) -> dict[str, Any]:
    """tau-norm: one pass for the classifier's inputs, every tau of the grid scored on them, the chosen
    tau folded into the saved model."""
    t0 = time.perf_counter()
    sweep: list[dict[str, Any]] = []
    chosen_on = "given" if stage.tau is not None else "default"
    val = None
    if stage.val_list:
        val = _sweep(runner, "val", _features(runner, _val_batches(runner, stage.val_list)))
    elif getattr(runner.data, "val_size", 0):  # the parent's held-out split (--val-per-class / --val-fraction)
        val = _sweep(runner, "val", _features(runner, runner.data.val_batches(
            runner.cfg.eval_batch_size, runner.device, False, runner.cfg.workers, runner.ctx.rank, runner.ctx.world)))
    if val is not None:
        sweep += val
    sweep += _sweep(runner, "test", _features(runner, runner.test_batches()))
    if stage.tau is not None:
        tau = stage.tau
    elif val is not None:
        tau = max(val, key=lambda r: (r["top1"], -r["tau"]))["tau"]
        chosen_on = "val"
    else:
        tau = 1.0
    set_module(runner.model, runner.path, stage.head_for(tau))
    runner.state.elapsed = time.perf_counter() - t0
    if runner.ctx.is_main:
        write_json(runner.run_dir / SWEEP_NAME, sweep)
        MetricsLog(runner.run_dir).write(sweep)
    test = next(r for r in sweep if r["split"] == "test" and r["tau"] == tau)
    runner.state.best_top1 = test["top1"]
    runner.state.best_record = {"epoch": 0, "test_top1": test["top1"], "test_top5": test["top5"],
                                "many_acc": test["shot_acc"]["many"], "medium_acc": test["shot_acc"]["medium"],
                                "few_acc": test["shot_acc"]["few"], "per_class_acc": test["per_class_acc"]}
    if runner.ctx.is_main:
        save_run_checkpoints(runner.run_dir, runner.payload(0), best=True)
    summary = runner.finish({"tau": tau, "tau_selected_on": chosen_on,
                           "sweep": [{k: v for k, v in r.items() if k != "per_class_acc"} for r in sweep]})
    if runner.ctx.is_main and runner.progress:
        from ltsam.console import print_sweep

        for split in ("val", "test"):
            rows = [r for r in sweep if r["split"] == split]
            if rows:
                print_sweep(rows, f"tau-normalisation on the {split} split (kept: tau {tau:g}, {chosen_on})")
    return summary

@torch.no_grad()
def _features(runner: StageRun, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(classifier input, labels) of every batch, captured at the classifier by a forward pre-hook."""
    captured: list[torch.Tensor] = []
    hook = runner.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float()))
    out = []
    try:
        for x, y in batches:
            with runner.autocast():
                runner.model(x)
            out.append((captured.pop(), y))
    finally:
        hook.remove()
    return out

def _sweep(runner: StageRun, split: str, features: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, Any]]:
    rows = []
    stage = cast(TauNormalisation, runner.stage)
    for tau in stage.grid:
        head = stage.head_for(tau)
        (result, _), = evaluate_offsets(head, features, runner.data.cls_num_list, [None], None, runner.ctx,
                                        groups=runner.groups, confusion=False)
        rows.append({"tau": tau, "split": split, **result})
    return rows

def _val_batches(runner: StageRun, val_list: str):
    from ltsam.data.builtin import attach_val_list
    from ltsam.data.lt_data import StreamingLTData

    data = runner.data
    if not data.streaming:
        raise UserError("--val-list is for list-file data sets (ImageNet-LT, iNaturalist); on this data set "
                        "train the parent with --val-per-class N (tau is then chosen on its held-out split) or "
                        "leave --val-list out (tau then defaults to 1, and the test sweep is reported)")
    attach_val_list(cast(StreamingLTData, data), Path(val_list), Path(runner.cfg.data_root))
    return data.val_batches(runner.stage.batch_size, runner.device, False, runner.cfg.workers, runner.ctx.rank,
                            runner.ctx.world)
