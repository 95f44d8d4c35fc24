"""Named recipes: every CIFAR line of the reference ``run.sh`` as one runnable configuration.

CIFAR defaults apply (ResNet-32, 200 epochs, batch 128, lr 0.1, momentum 0.9, wd 2e-4, seed 0,
exp profile, imbalance factor 0.01). The reference's CIFAR-100 SGD lines for CE-DRW and LDAM-DRW
pass ``--dataset cifar10`` by mistake; these recipes train CIFAR-100 as intended.
"""

from __future__ import annotations

from typing import Any

from ltsam.errors import UserError

_CIFAR = dict(imb_type="exp", imb_factor=0.01, arch="resnet32", epochs=200, batch_size=128, lr=0.1,
              momentum=0.9, wd=2e-4, seed=0, lr_schedule="step")

# (dataset, loss, rule, rho or None for SGD), as in run.sh sections 9.1 and 9.2 of SPEC.md.
_LINES = [
    ("cifar10", "ce", "none", None), ("cifar10", "ce", "drw", None), ("cifar10", "ldam", "drw", None),
    ("cifar10", "ce", "none", 0.1), ("cifar10", "ce", "drw", 0.5), ("cifar10", "ldam", "drw", 0.8),
    ("cifar100", "ce", "none", None), ("cifar100", "ce", "drw", None), ("cifar100", "ldam", "drw", None),
    ("cifar100", "ce", "none", 0.2), ("cifar100", "ce", "drw", 0.8), ("cifar100", "ldam", "drw", 0.8),
]

PAPER_TOP1 = {"cifar10-lt-ldam-drw-sam": 81.9, "cifar10-lt-ce-drw-sam": 80.6,
              "cifar100-lt-ldam-drw-sam": 45.4, "cifar100-lt-ce-drw-sam": 44.6}


def _name(dataset: str, loss: str, rule: str, rho: float | None) -> str:
    parts = [f"{dataset}-lt", loss] + ([] if rule == "none" else [rule]) + ([] if rho is None else ["sam"])
    return "-".join(parts)


RECIPES: dict[str, dict[str, Any]] = {}
for _ds, _loss, _rule, _rho in _LINES:
    RECIPES[_name(_ds, _loss, _rule, _rho)] = dict(
        _CIFAR, dataset=_ds, loss=_loss, train_rule=_rule,
        optimizer="sgd" if _rho is None else "sam", rho=0.05 if _rho is None else _rho,
        rho_schedule="none")


def get_recipe(name: str) -> dict[str, Any]:
    key = name.lower()
    if key not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; `ltsam recipes` lists them")
    return dict(RECIPES[key], recipe=key)


def describe(name: str) -> str:
    r = RECIPES[name]
    opt = f"SAM rho {r['rho']:g}" if r["optimizer"] == "sam" else "SGD"
    paper = f"  paper {PAPER_TOP1[name]}" if name in PAPER_TOP1 else ""
    return (f"{name:<28} {r['dataset']:<9} {r['loss'].upper():<5} {r['train_rule']:<5} {opt:<12} "
            f"{r['arch']} {r['epochs']} ep, bs {r['batch_size']}, lr {r['lr']}, wd {r['wd']}{paper}")
