"""tau-normalisation as a stage without epochs: one pass for the classifier's inputs, every tau of the grid
scored on them, the chosen tau folded into the saved model (``sweep.json``, ``metrics.jsonl``: the sweep)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import torch

from ltsam.errors import UserError
from ltsam.evaluate import evaluate_offsets
from ltsam.finetune.heads import set_module
from ltsam.finetune.stages import TauNormalisation
from ltsam.io import write_json
from ltsam.run.checkpoints import save_run_checkpoints
from ltsam.run.files import SWEEP_NAME
from ltsam.run.records import MetricsLog


def fit_tau_norm(runner: Any) -> dict[str, Any]:
    """tau-norm: one pass for the classifier's inputs, every tau of the grid scored on them, the chosen
    tau folded into the saved model. ``runner``: the ``StageRunner`` that calls it (not imported here, so
    that the runner may import this module)."""
    stage = runner.stage
    assert isinstance(stage, TauNormalisation)
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
def _features(runner: Any, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
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

def _sweep(runner: Any, split: str, features: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, Any]]:
    rows = []
    for tau in runner.stage.grid:
        head = runner.stage.head_for(tau)
        (result, _), = evaluate_offsets(head, features, runner.data.cls_num_list, [None], None, runner.ctx,
                                        runner.groups, confusion=False)
        rows.append({"tau": tau, "split": split, **result})
    return rows

def _val_batches(runner: Any, val_list: str):
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
