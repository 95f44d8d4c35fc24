"""Named recipes: every line of the reference ``run.sh`` as one runnable configuration.

CIFAR defaults apply (ResNet-32, 200 epochs, batch 128, lr 0.1, momentum 0.9, wd 2e-4, seed 0,
exp profile, imbalance factor 0.01). The reference's CIFAR-100 SGD lines for CE-DRW and LDAM-DRW
pass ``--dataset cifar10`` by mistake; these recipes train CIFAR-100 as intended.
"""

from __future__ import annotations

from typing import Any

from ltsam.errors import UserError

_CIFAR = dict(imb_type="exp", imb_factor=0.01, arch="resnet32", epochs=200, batch_size=128, lr=0.1,
              momentum=0.9, wd=2e-4, seed=0, lr_schedule="step")

# (dataset, loss, rule, rho or None for SGD), as in the reference run.sh's CIFAR-10-LT and CIFAR-100-LT lines.
_LINES = [
    ("cifar10", "ce", "none", None), ("cifar10", "ce", "drw", None), ("cifar10", "ldam", "drw", None),
    ("cifar10", "ce", "none", 0.1), ("cifar10", "ce", "drw", 0.5), ("cifar10", "ldam", "drw", 0.8),
    ("cifar100", "ce", "none", None), ("cifar100", "ce", "drw", None), ("cifar100", "ldam", "drw", None),
    ("cifar100", "ce", "none", 0.2), ("cifar100", "ce", "drw", 0.8), ("cifar100", "ldam", "drw", 0.8),
]

PAPER_TOP1 = {"cifar10-lt-ldam-drw-sam": 81.9, "cifar10-lt-ce-drw-sam": 80.6,
              "cifar100-lt-ldam-drw-sam": 45.4, "cifar100-lt-ce-drw-sam": 44.6,
              "imagenet-lt-ldam-drw-sam": 53.1, "imagenet-lt-ce-drw-sam": 47.1,
              "inat18-ldam-drw-sam": 70.1, "inat18-ce-drw-sam": 65.3}

# ImageNet-LT and iNaturalist-2018 lines of the reference run.sh: ResNet-50, batch 256,
# 90 epochs, cosine LR, DRW switching at epoch 60; step rho after epochs 5, 60, 75.
_LARGE = dict(arch="resnet50", epochs=90, batch_size=256, lr_schedule="cosine", momentum=0.9,
              train_rule="drw")
_LARGE_LINES = {
    "imagenet-lt-ce-drw": dict(dataset="imagenet_lt", loss="ce", lr=0.2, wd=2e-4, seed=1, optimizer="sgd"),
    "imagenet-lt-ldam-drw": dict(dataset="imagenet_lt", loss="ldam", lr=0.2, wd=2e-4, margin=0.3, seed=0,
                                 optimizer="sgd"),
    "imagenet-lt-ce-drw-sam": dict(dataset="imagenet_lt", loss="ce", lr=0.2, wd=2e-4, seed=0, optimizer="sam",
                                   rho_schedule="step", rho_steps=[0.05, 0.1, 0.5, 0.5]),
    "imagenet-lt-ldam-drw-sam": dict(dataset="imagenet_lt", loss="ldam", lr=0.2, wd=2e-4, margin=0.3, seed=0,
                                     optimizer="sam", rho_schedule="step", rho_steps=[0.05, 0.1, 0.5, 0.5]),
    "inat18-ce-drw": dict(dataset="inat18", loss="ce", lr=0.1, wd=2e-4, seed=0, optimizer="sgd"),
    "inat18-ldam-drw": dict(dataset="inat18", loss="ldam", lr=0.1, wd=1e-4, margin=0.3, seed=0, optimizer="sgd"),
    "inat18-ce-drw-sam": dict(dataset="inat18", loss="ce", lr=0.1, wd=2e-4, seed=1, optimizer="sam",
                              rho_schedule="step", rho_steps=[0.05, 0.1, 0.1, 0.2]),
    "inat18-ldam-drw-sam": dict(dataset="inat18", loss="ldam", lr=0.1, wd=1e-4, margin=0.3, seed=0,
                                optimizer="sam", rho_schedule="step", rho_steps=[0.05, 0.1, 0.5, 0.5]),
}


def _name(dataset: str, loss: str, rule: str, rho: float | None) -> str:
    parts = [f"{dataset}-lt", loss] + ([] if rule == "none" else [rule]) + ([] if rho is None else ["sam"])
    return "-".join(parts)


RECIPES: dict[str, dict[str, Any]] = {}
for _ds, _loss, _rule, _rho in _LINES:
    RECIPES[_name(_ds, _loss, _rule, _rho)] = dict(
        _CIFAR, dataset=_ds, loss=_loss, train_rule=_rule,
        optimizer="sgd" if _rho is None else "sam", rho=0.05 if _rho is None else _rho,
        rho_schedule="none")


for _key, _line in _LARGE_LINES.items():
    RECIPES[_key] = dict(_LARGE, **_line)


# GLMC + SAM (the reference's GLMC-2023/run.sh): ResNet-34, 200 epochs, batch 64, lr 0.01, wd 5e-3,
# resample weighting 0.0, label weighting 1.2, cosine LR, seed 3407; IF 50 as run.sh, IF 100 as the
# result table (same settings). The reference's "--contrast_weight 4.0" fails its int parser;
# ltsam takes floats.
_GLMC = dict(method="glmc", arch="glmc_resnet34", epochs=200, batch_size=64, lr=0.01, momentum=0.9, wd=5e-3,
             resample_weighting=0.0, label_weighting=1.2, lr_schedule="cosine", seed=3407, imb_type="exp",
             loss="ce", train_rule="none", rho_schedule="none")
GLMC_PAPER_TOP1 = {("cifar10", 0.02): (89.81, 91.56), ("cifar10", 0.01): (87.55, 89.18),
                   ("cifar100", 0.02): (62.49, 65.28), ("cifar100", 0.01): (57.63, 59.01)}
for (_ds, _f), (_plain, _sam) in GLMC_PAPER_TOP1.items():
    _tag = f"{_ds}-lt-if{round(1 / _f)}"
    _cw_sgd, _cw_sam = (4.0, 1.0) if _ds == "cifar10" else (4.0, 4.0)
    RECIPES[f"glmc-{_tag}"] = dict(_GLMC, dataset=_ds, imb_factor=_f, contrast_weight=_cw_sgd, optimizer="sgd",
                                   rho=0.05)
    RECIPES[f"glmc-sam-{_tag}"] = dict(_GLMC, dataset=_ds, imb_factor=_f, contrast_weight=_cw_sam, optimizer="sam",
                                       rho=0.05)
    PAPER_TOP1[f"glmc-{_tag}"], PAPER_TOP1[f"glmc-sam-{_tag}"] = _plain, _sam


# Long-tail baselines on CIFAR-10/100-LT, imbalance factor 100 (exp profile, f = 0.01), with each paper's released
# settings as far as ltsam expresses them (README "Long-tail baselines and second stages" lists what differs).
# Logit adjustment (Menon et al., ICLR 2021; google-research/logit_adjustment): ResNet-32, batch 128, SGD momentum
# 0.9 (Nesterov there), lr 0.1, L2 1e-4 (= weight decay 2e-4), 1241 / 1419 epochs with its warm-up + step schedule.
_LA = dict(_CIFAR, loss="la", la_tau=1.0, train_rule="none", optimizer="sgd", rho=0.05, rho_schedule="none",
           lr_schedule="la", wd=2e-4)
# Balanced Softmax (Ren et al., NeurIPS 2020; the released CIFAR configs): ResNet-32, batch 512, 13,000 iterations
# (537 / 614 epochs of the IF-100 sets), SGD momentum 0.9, peak lr 0.1 with cosine decay, weight decay 5e-4.
_BS = dict(_CIFAR, loss="balanced_softmax", train_rule="none", optimizer="sgd", rho=0.05, rho_schedule="none",
           batch_size=512, lr=0.1, wd=5e-4, lr_schedule="cosine")
# Weight balancing stage 1 (Alshammari et al., CVPR 2022; demo1_first-stage-training): CE, batch 64, SGD momentum
# 0.9, lr 0.01 with cosine decay, 320 epochs, weight decay 5e-3 (the large weight decay is the method).
_WB1 = dict(_CIFAR, loss="ce", train_rule="none", optimizer="sgd", rho=0.05, rho_schedule="none", batch_size=64,
            lr=0.01, wd=5e-3, lr_schedule="cosine", epochs=320)
for _ds, _la_epochs, _bs_epochs in (("cifar10", 1241, 537), ("cifar100", 1419, 614)):
    RECIPES[f"la-{_ds}-lt-if100"] = dict(_LA, dataset=_ds, epochs=_la_epochs)
    RECIPES[f"la-erm-{_ds}-lt-if100"] = {k: v for k, v in dict(_LA, dataset=_ds, epochs=_la_epochs, loss="ce").items()
                                          if k != "la_tau"}
    RECIPES[f"bs-{_ds}-lt-if100"] = dict(_BS, dataset=_ds, epochs=_bs_epochs)
    RECIPES[f"wb-stage1-{_ds}-lt-if100"] = dict(_WB1, dataset=_ds)
PAPER_TOP1["la-cifar100-lt-if100"] = 43.89  # Menon et al.: logit-adjusted loss, CIFAR-100-LT (error 56.11)
PAPER_TOP1["bs-cifar100-lt-if100"] = 46.1  # Ren et al., CIFAR-100-LT, imbalance factor 100

# Figures from others' runs of the released code, beside (never instead of) the papers'.
REPRODUCED_TOP1: dict[str, tuple[float, str]] = {
    "la-cifar10-lt-if100": (78.96, "PyTorch rerun, Chumsy0725/logit-adj-pytorch"),
    "la-cifar100-lt-if100": (44.02, "PyTorch rerun, Chumsy0725/logit-adj-pytorch"),
    "la-posthoc-cifar10-lt-if100": (78.44, "PyTorch rerun, Chumsy0725/logit-adj-pytorch"),
    "la-posthoc-cifar100-lt-if100": (44.04, "PyTorch rerun, Chumsy0725/logit-adj-pytorch"),
    "wb-cifar100-lt-if100": (51.98, "the authors' shipped log, exp/demo_2/MaxNorm_WD_note_bestModel.log"),
}

# Second stages and post-hoc adjustment (``ltsam finetune RUN --recipe NAME`` / ``ltsam eval RUN --logit-adjust``)
# on a finished run of the ``parent`` recipe. cRT / LWS / tau-norm: Kang et al.'s released ImageNet-LT settings
# (their only published ones; cRT 10 epochs, LWS 5, lr 0.2, wd 5e-4, batch 512, cosine, class-balanced sampling;
# tau swept over 0:2:0.1) on the reference CE run. Weight balancing stage 2 (demo2): 10 epochs, lr 0.01, wd 0.1,
# batch 64, class-balanced loss (beta 0.9999), MaxNorm threshold 0.1.
STAGE_RECIPES: dict[str, dict[str, Any]] = {}
for _ds in ("cifar10", "cifar100"):
    _ce = f"{_ds}-lt-ce"
    STAGE_RECIPES[f"crt-{_ds}-lt-if100"] = dict(parent=_ce, stage="crt", options=dict(
        epochs=10, lr=0.2, wd=5e-4, momentum=0.9, batch_size=512))
    STAGE_RECIPES[f"lws-{_ds}-lt-if100"] = dict(parent=_ce, stage="lws", options=dict(
        epochs=5, lr=0.2, wd=5e-4, momentum=0.9, batch_size=512))
    STAGE_RECIPES[f"tau-norm-{_ds}-lt-if100"] = dict(parent=_ce, stage="tau-norm", options=dict(
        tau_grid="0:2:0.1"))
    STAGE_RECIPES[f"wb-{_ds}-lt-if100"] = dict(parent=f"wb-stage1-{_ds}-lt-if100", stage="weight-balancing",
                                               options=dict(epochs=10, lr=0.01, wd=0.1, momentum=0.9, batch_size=64,
                                                            maxnorm_thresh=0.1, beta=0.9999))
    STAGE_RECIPES[f"la-posthoc-{_ds}-lt-if100"] = dict(parent=f"la-erm-{_ds}-lt-if100", logit_adjust="1")
PAPER_TOP1["wb-cifar100-lt-if100"] = 53.35  # Alshammari et al., Table 1 (WD + MaxNorm, CIFAR-100-LT IF 100)


def get_stage_recipe(name: str) -> dict[str, Any]:
    """A second-stage recipe (``ltsam finetune --recipe``); post-hoc recipes belong to ``ltsam eval``."""
    key = name.lower()
    if key not in STAGE_RECIPES:
        raise UserError(f"unknown second-stage recipe {name!r}; `ltsam recipes` lists them")
    recipe = STAGE_RECIPES[key]
    if "stage" not in recipe:
        raise UserError(f"{key} is post-hoc logit adjustment: `ltsam eval RUN --logit-adjust "
                        f"{recipe['logit_adjust']}` on a run of {recipe['parent']}")
    return dict(recipe, options=dict(recipe["options"]))


def _figures(name: str) -> str:
    paper = f"  paper {PAPER_TOP1[name]}" if name in PAPER_TOP1 else ""
    if name in REPRODUCED_TOP1:
        value, who = REPRODUCED_TOP1[name]
        paper += f"  reproduced {value} ({who})"
    return paper


def describe_stage(name: str) -> str:
    r = STAGE_RECIPES[name]
    if "stage" not in r:
        what = f"ltsam eval RUN --logit-adjust {r['logit_adjust']}"
    else:
        opts = ", ".join(f"{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"{k.replace('_', '-')} {v}"
                         for k, v in r["options"].items())
        what = f"ltsam finetune RUN --stage {r['stage']} ({opts})"
    return f"{name:<30} on {r['parent']:<26} {what}{_figures(name)}"


# Imbalance-aware SAM (ltsam.optim.imbalance) with the papers' CIFAR-LT (imbalance 100) hyper-parameters, on
# ltsam's ResNet-32. ImbSAM's and SSE-SAM's scripts train a ResNet-34 encoder (batch 64, lr 0.01, wd 1e-3,
# cosine LR, 200 epochs, seed 9826, CE); Focal-SAM's a ResNet-32 at batch 64 with the logit-adjusted loss, lr 0.1,
# cosine LR. Focal-SAM's cifar.sh passes tau 0.75, but its LALoss ignores the value and always uses tau 1: the
# paper's figures come from tau 1, so the recipe follows the code (--la-tau 0.75 gives the script's stated value).
# All three papers pick the best epoch on the test set.
_IMB_SAM = dict(_CIFAR, batch_size=64, lr_schedule="cosine", rho_schedule="none", train_rule="none")
_IMBSAM_SSE = dict(_IMB_SAM, loss="ce", lr=0.01, wd=1e-3, seed=9826)
RECIPES["imbsam-cifar100-lt"] = dict(_IMBSAM_SSE, dataset="cifar100", optimizer="imbsam", rho=0.05, imbsam_eta=20.0,
                                     imbsam_tail_weight=2.0)
for _ds in ("cifar10", "cifar100"):
    RECIPES[f"sse-sam-{_ds}-lt"] = dict(_IMBSAM_SSE, dataset=_ds, optimizer="sse_sam", rho=0.1, sse_head_rho=0.05,
                                        sse_gamma=0.7, sse_eta=100.0)
for _ds, _rho, _g, _lam, _wd in (("cifar10", 0.2, 3.0, 0.5, 2e-4), ("cifar100", 0.3, 3.2, 0.8, 1e-3)):
    RECIPES[f"focal-sam-{_ds}-lt"] = dict(_IMB_SAM, dataset=_ds, loss="la", la_tau=1.0, lr=0.1,
                                          wd=_wd, seed=0, optimizer="focal_sam", rho=_rho, focal_sam_gamma=_g,
                                          focal_sam_lambda=_lam)
# What the papers report (official READMEs: ImbSAM 51.1, SSE-SAM 49.3, both CE on CIFAR-100-LT) and what others got
# rerunning them: SSE-SAM's own table gives ImbSAM 47.9; an independent rerun reported in ltsam issue 12 got 42.5.
PAPER_TOP1.update({"imbsam-cifar100-lt": 51.1, "sse-sam-cifar100-lt": 49.3})
REPRODUCED_TOP1["imbsam-cifar100-lt"] = (42.5, "independent rerun of the official code, ltsam issue 12; "
                                               "SSE-SAM's table gives 47.9")

# LIFT (Shi et al., ICML 2024; shijxcs/LIFT, configs/model/clip_vit_b16.yaml with adaptformer True): CLIP
# ViT-B/16 with OpenAI's weights at 224 px, LIFT's AdaptFormer adapters in all 12 blocks (bottleneck
# 2 ** floor(log2(C / 24)) = 4 for 100 classes), a cosine head of scale 25 (its config's ``scale: 25``, which
# replaces its CosineClassifier's default 30) initialised from the text features of
# "a photo of a {}.", the logit-adjusted loss (tau 1), 10 epochs, batch 128, SGD lr 0.01 momentum 0.9 wd 5e-4,
# cosine LR per epoch, seed 0, final epoch. The paper's figure is with its test-time ensembling (24 px expansion,
# five crops), which ltsam does not do; docs/pretrained.md "LIFT's recipe" lists what else differs.
RECIPES["lift-cifar100-lt-if100"] = dict(
    dataset="cifar100", imb_type="exp", imb_factor=0.01, arch="clip:vit-b-16", pretrained="openai", input_size=224,
    tune="adapter", adapter_style="lift", adapter_dim=4, head_init="text", use_norm=True, head_scale=25.0,
    loss="la", la_tau=1.0, train_rule="none", optimizer="sgd", rho=0.05, rho_schedule="none", epochs=10,
    batch_size=128, lr=0.01, momentum=0.9, wd=5e-4, lr_schedule="cosine", seed=0)
PAPER_TOP1["lift-cifar100-lt-if100"] = 81.7  # LIFT, Table 4 (CIFAR-100-LT, IF 100; ImageNet-LT 78.3, Places-LT 52.2)


def get_recipe(name: str) -> dict[str, Any]:
    key = name.lower()
    if key not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; `ltsam recipes` lists them")
    return dict(RECIPES[key], recipe=key)


def describe(name: str) -> str:
    from ltsam.optim.steps import step_label

    r = RECIPES[name]
    if r["optimizer"] == "sgd":
        opt = "SGD"
    elif r.get("rho_schedule") == "step":
        opt = "SAM step " + "/".join(f"{v:g}" for v in r["rho_steps"])
    else:
        opt = f"{step_label(r['optimizer'])} rho {r['rho']:g}"
    paper = _figures(name)
    margin = f", margin {r['margin']}" if "margin" in r else ""
    if "la_tau" in r:
        margin += f", tau {r['la_tau']:g}"
    margin += {"imbsam": lambda: f", eta {r['imbsam_eta']:g}, tail weight {r['imbsam_tail_weight']:g}",
               "sse_sam": lambda: f", head rho {r['sse_head_rho']:g} until {r['sse_gamma']:g} of the run, eta "
                                  f"{r['sse_eta']:g}",
               "focal_sam": lambda: f", gamma {r['focal_sam_gamma']:g}, lambda {r['focal_sam_lambda']:g}"
               }.get(r["optimizer"], lambda: "")()
    if "tune" in r:
        margin += (f", {r['pretrained']} weights, {r['tune']} ({r['adapter_style']}, dim {r['adapter_dim']}), "
                   f"cosine head x{r['head_scale']:g} from {r['head_init']}")
    if r.get("method") == "glmc":
        margin += f", cw {r['contrast_weight']:g}, IF {round(1 / r['imb_factor'])}"
    loss = "GLMC" if r.get("method") == "glmc" else {"balanced_softmax": "BS"}.get(r["loss"], r["loss"].upper())
    return (f"{name:<27} {r['dataset']:<11} {loss:<5} {r['train_rule']:<5} {opt:<22} "
            f"{r['arch']} {r['epochs']} ep, bs {r['batch_size']}, lr {r['lr']} ({r['lr_schedule']}), "
            f"wd {r['wd']}{margin}{paper}")
