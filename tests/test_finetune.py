"""``ltsam eval --logit-adjust`` and ``ltsam finetune`` (cRT, LWS, tau-norm, weight balancing) end to end on a trained
digits run: what each stage may change (the classifier only: every backbone tensor bit-identical), the formula of
each stage's classifier against the parent's, class-balanced sampling, MaxNorm after every step, exact resume,
list-file data sets and torchrun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ltsam.cli import main
from tests.conftest import FAST_DIGITS
from tests.tolerances import rtol

PARENT_FLAGS = [*FAST_DIGITS, "--loss", "ce", "--optimizer", "sgd", "--seed", "1"]
HEAD = ("linear.weight", "linear.bias")


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parent") / "ce"
    assert main(["train", *PARENT_FLAGS, "--out", str(out)]) == 0
    return out


def _finetune(parent: Path, out: Path, *flags: str) -> dict:
    assert main(["finetune", str(parent), *flags, "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "final.json").read_text())


def _same_backbone(parent: Path, stage: Path) -> None:
    a, b = _ckpt(parent / "last.pt")["model"], _ckpt(stage / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        if k not in HEAD:
            assert torch.equal(a[k], b[k]), k  # weights and batch-norm statistics, bit for bit


def _eval_recomputes(run: Path, final: dict, tmp_path: Path) -> None:
    report = tmp_path / f"{run.name}_eval.json"
    assert main(["eval", str(run), "--which", "last", "--json", str(report)]) == 0
    again = json.loads(report.read_text())
    assert again["per_class_acc"] == final["final"]["per_class_acc"] and again["top1"] == final["final"]["top1"]


# --- post-hoc logit adjustment through the CLI ----------------------------------------------------

def test_eval_logit_adjust_on_a_trained_run(parent: Path, tmp_path: Path, capsys) -> None:
    from ltsam.data.loading import load_data
    from ltsam.runs import load_trained

    one = tmp_path / "one.json"
    assert main(["eval", str(parent), "--which", "last", "--logit-adjust", "0.5", "--json", str(one)]) == 0
    got = json.loads(one.read_text())
    model, cfg, ckpt = load_trained(parent, "last")
    data = load_data(cfg)
    counts, total = ckpt["cls_num_list"], sum(ckpt["cls_num_list"])
    correct = [0] * len(counts)
    seen = [0] * len(counts)
    with torch.no_grad():
        for x, y in data.test_batches(1000, "cpu"):
            for row, t in zip(model(x).double().tolist(), y.tolist()):
                adjusted = [v - 0.5 * math.log(n / total) for v, n in zip(row, counts)]
                seen[t] += 1
                correct[t] += int(max(range(len(row)), key=adjusted.__getitem__) == t)
    assert got["tau"] == 0.5
    assert got["top1"] == pytest.approx(100.0 * sum(correct) / sum(seen), abs=1e-12)
    assert got["per_class_acc"] == [100.0 * c / s for c, s in zip(correct, seen)]

    sweep = tmp_path / "sweep.json"
    assert main(["eval", str(parent), "--which", "last", "--logit-adjust", "0:1:0.5", "--json", str(sweep)]) == 0
    rows = json.loads(sweep.read_text())["logit_adjust"]
    assert [r["tau"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[1]["per_class_acc"] == got["per_class_acc"]
    plain = tmp_path / "plain.json"
    assert main(["eval", str(parent), "--which", "last", "--json", str(plain)]) == 0
    assert rows[0]["per_class_acc"] == json.loads(plain.read_text())["per_class_acc"]  # tau 0 is the model
    out = capsys.readouterr().out
    assert "post-hoc logit adjustment" in out and "many" in out


# --- the four stages --------------------------------------------------------------------------------

def test_crt_changes_only_the_classifier(parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "crt"
    final = _finetune(parent, out, "--stage", "crt", "--epochs", "2", "--batch-size", "128")
    _same_backbone(parent, out)
    before, after = _ckpt(parent / "last.pt")["model"], _ckpt(out / "last.pt")["model"]
    assert not torch.equal(before["linear.weight"], after["linear.weight"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stage"] == "crt" and cfg["parent"]["run"] == str(parent.resolve())
    import hashlib

    assert cfg["parent"]["sha256"] == hashlib.sha256((parent / "last.pt").read_bytes()).hexdigest()
    ckpt = _ckpt(out / "last.pt")
    assert ckpt["format"] == "ltsam-checkpoint-v1" and ckpt["epoch"] == 2 and ckpt["stage"]["name"] == "crt"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert final["parent"]["sha256"] == cfg["parent"]["sha256"] and final["epochs_done"] == 2
    # the parent's training configuration, unchanged (ltsam report groups the stage runs' seeds by it)
    assert final["parent_config"] == json.loads((parent / "config.json").read_text())
    _eval_recomputes(out, final, tmp_path)


def test_crt_samples_class_balanced(parent: Path, tmp_path: Path) -> None:
    """Over 20 epochs of draws every class is drawn n/C times within 5 binomial standard deviations; the
    weight-balancing stage's instance stream (for contrast) draws each class exactly as often as it has images."""
    from ltsam.finetune.parent import StageSettings, load_parent
    from ltsam.finetune.runner import StageRunner

    def runner(stage: str) -> StageRunner:
        p = load_parent(parent)
        settings = StageSettings(stage, {}, p.info)
        return StageRunner(settings, p, tmp_path / stage)

    crt = runner("crt")
    counts = torch.zeros(crt.data.num_classes, dtype=torch.long)
    for epoch in range(20):
        crt.source.set_epoch(epoch)
        for _, y in crt.source:
            counts += torch.bincount(y, minlength=len(counts))
    total, c = int(counts.sum()), len(counts)
    assert total == 20 * crt.data.train_size
    p = 1.0 / c
    assert float((counts - total * p).abs().max()) <= 5 * math.sqrt(total * p * (1 - p)), counts.tolist()
    wb = runner("weight-balancing")
    wb.source.set_epoch(0)
    instance = sum(torch.bincount(y, minlength=c) for _, y in wb.source)
    assert instance.tolist() == wb.data.cls_num_list  # 124 ... 12: far outside the balanced band above


def test_lws_learns_one_scale_per_class(parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "lws"
    final = _finetune(parent, out, "--stage", "lws", "--epochs", "2", "--batch-size", "128")
    _same_backbone(parent, out)
    w, b = (_ckpt(parent / "last.pt")["model"][k].double() for k in HEAD)
    w2, b2 = (_ckpt(out / "last.pt")["model"][k].double() for k in HEAD)
    scales = (w2 * w).sum(1) / (w * w).sum(1)  # f_k, read off the folded weights
    bound = rtol(torch.float32, n=w.shape[1], stages=3)
    torch.testing.assert_close(w2, scales[:, None] * w, rtol=bound, atol=bound * float(w.abs().max()))
    torch.testing.assert_close(b2, scales * b, rtol=bound, atol=bound * float(b.abs().max()))
    assert float((scales - 1).abs().max()) > 1e-3  # the scales did move
    head = _ckpt(out / "last.pt")["stage_head"]
    torch.testing.assert_close(head["scales"].double(), scales, rtol=bound, atol=0)
    _eval_recomputes(out, final, tmp_path)


def test_tau_norm_keeps_the_given_tau_and_reports_the_sweep(parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "tau"
    final = _finetune(parent, out, "--stage", "tau-norm", "--tau", "0.5", "--tau-grid", "0:1:0.25")
    _same_backbone(parent, out)
    w = _ckpt(parent / "last.pt")["model"]["linear.weight"].double()
    got = _ckpt(out / "last.pt")["model"]
    want = [[v / math.sqrt(sum(u * u for u in row)) ** 0.5 for v in row] for row in w.tolist()]
    bound = rtol(torch.float32, n=w.shape[1], stages=3)
    torch.testing.assert_close(got["linear.weight"].double(), torch.tensor(want, dtype=torch.float64), rtol=bound,
                               atol=0)
    assert torch.equal(got["linear.bias"], torch.zeros_like(got["linear.bias"]))
    assert final["tau"] == 0.5 and final["tau_selected_on"] == "given"
    rows = [r for r in final["sweep"] if r["split"] == "test"]
    assert [r["tau"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert next(r for r in rows if r["tau"] == 0.5)["top1"] == final["final"]["top1"]
    _eval_recomputes(out, final, tmp_path)


def test_tau_norm_chooses_tau_on_the_parents_held_out_split(tmp_path: Path) -> None:
    """A parent trained with --val-per-class: tau is the best on its validation images (ties: the smaller tau),
    never on the test set."""
    run = tmp_path / "ce_val"
    assert main(["train", *PARENT_FLAGS, "--val-per-class", "4", "--out", str(run)]) == 0
    final = _finetune(run, tmp_path / "tau", "--stage", "tau-norm", "--tau-grid", "0:2:0.5")
    val = [r for r in final["sweep"] if r["split"] == "val"]
    test = [r for r in final["sweep"] if r["split"] == "test"]
    assert [r["tau"] for r in val] == [r["tau"] for r in test] == [0.0, 0.5, 1.0, 1.5, 2.0]
    best = max(val, key=lambda r: (r["top1"], -r["tau"]))
    assert final["tau_selected_on"] == "val" and final["tau"] == best["tau"]
    assert final["final"]["top1"] == next(r for r in test if r["tau"] == best["tau"])["top1"]
    assert [r["top1"] for r in val] != [r["top1"] for r in test]  # two different image sets


def test_weight_balancing_projects_after_every_step(parent: Path, tmp_path: Path) -> None:
    """Run in process with MaxNorm's projection wrapped: called once per step, every norm within the cap after it;
    the cap from the parent's class vectors by hand."""
    from ltsam.finetune import heads
    from ltsam.finetune.parent import StageSettings, load_parent
    from ltsam.finetune.runner import StageRunner

    p = load_parent(parent)
    w = p.ckpt["model"]["linear.weight"].double().tolist()
    norms = [math.sqrt(sum(v * v for v in row)) for row in w]
    cap = min(norms) + 0.1 * (max(norms) - min(norms))
    out = tmp_path / "wb"
    out.mkdir()
    runner = StageRunner(StageSettings("weight-balancing", {"epochs": 2, "batch_size": 128}, p.info), p, out)
    bound = rtol(torch.float32, n=len(w[0]), stages=2)
    assert runner.stage.maxnorm.cap == pytest.approx(cap, rel=bound)
    calls = []
    project = heads.MaxNorm.project

    def checked(self, weight):
        project(self, weight)
        calls.append(float(weight.detach().norm(dim=1).max()))

    heads.MaxNorm.project = checked
    try:
        final = runner.fit()
    finally:
        heads.MaxNorm.project = project
    assert len(calls) == 2 * len(runner.source)
    assert max(calls) <= cap * (1 + bound)
    assert final["epochs_done"] == 2
    _same_backbone(parent, out)
    w2 = _ckpt(out / "last.pt")["model"]["linear.weight"]
    assert float(w2.norm(dim=1).max()) <= cap * (1 + bound)


@pytest.mark.parametrize("stage", ["crt", "weight-balancing"])
def test_a_stage_resumes_exactly(parent: Path, tmp_path: Path, stage: str) -> None:
    flags = ["--stage", stage, "--epochs", "3", "--batch-size", "128"]
    a, b = tmp_path / "a", tmp_path / "b"
    _finetune(parent, a, *flags)
    assert main(["finetune", str(parent), *flags, "--out", str(b), "--stop-after", "2", "--no-progress"]) == 0
    assert _ckpt(b / "last.pt")["epoch"] == 2
    assert main(["finetune", "--resume", str(b), "--no-progress"]) == 0
    for name in ("model", "stage_head", "optimizer"):
        ca, cb = _ckpt(a / "last.pt")[name], _ckpt(b / "last.pt")[name]
        flat_a, flat_b = _flatten(ca), _flatten(cb)
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]) if torch.is_tensor(flat_a[k]) else flat_a[k] == flat_b[k], k
    ma = [json.loads(x)["test_top1"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x)["test_top1"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb and len(ma) == 3


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}{i}/"))
        return out
    return {prefix: tree}


# --- heads, errors ------------------------------------------------------------------------------------

def test_crt_on_a_cosine_head_gives_a_linear_head_and_lws_refuses_one(tmp_path: Path, capsys) -> None:
    ldam = tmp_path / "ldam"  # the digits default: LDAM + DRW + SAM, a cosine (NormedLinear) head
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(ldam)]) == 0
    out = tmp_path / "crt"
    final = _finetune(ldam, out, "--stage", "crt", "--epochs", "1", "--batch-size", "256")
    ckpt = _ckpt(out / "last.pt")
    assert ckpt["model_meta"]["use_norm"] is False and ckpt["model"]["linear.weight"].shape == (10, 64)
    _eval_recomputes(out, final, tmp_path)
    capsys.readouterr()
    assert main(["finetune", str(ldam), "--stage", "lws", "--out", str(tmp_path / "lws")]) == 2
    assert "cosine head" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--stage", "crt", "--tau", "1"], ["--stage crt has no option --tau", "--epochs"]),
    ([], ["--stage is required", "crt"]),
    (["--stage", "nope"], ["unknown --stage", "weight-balancing"]),
    (["--stage", "tau-norm", "--tau-grid", "2:0:1"], ["--tau-grid"]),
    (["--stage", "crt", "--epochs", "0"], ["--epochs must be at least 1"]),
    (["--recipe", "la-posthoc-cifar10-lt-if100"], ["ltsam eval RUN --logit-adjust 1"]),
])
def test_finetune_errors_are_one_line(parent: Path, tmp_path: Path, capsys, args: list[str], words: list[str]) -> None:
    out = tmp_path / "x"
    assert main(["finetune", str(parent), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not out.exists()  # nothing written before the settings were checked


def test_resume_refuses_a_changed_parent(parent: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "parent"
    shutil.copytree(parent, copy)
    out = tmp_path / "crt"
    assert main(["finetune", str(copy), "--stage", "crt", "--epochs", "2", "--batch-size", "256", "--out", str(out),
                 "--stop-after", "1", "--no-progress"]) == 0
    ckpt = _ckpt(copy / "last.pt")
    ckpt["elapsed"] = 1.0 + float(ckpt.get("elapsed", 0.0))
    torch.save(ckpt, copy / "last.pt")
    capsys.readouterr()
    assert main(["finetune", "--resume", str(out)]) == 2
    assert "changed since this stage started" in capsys.readouterr().err


# --- list-file data sets and torchrun -----------------------------------------------------------------

def test_stages_on_a_list_file_data_set(tmp_path: Path) -> None:
    from tests.test_listfile import make_list_dataset

    root = make_list_dataset(tmp_path / "imnet")
    (root / "val.txt").write_text((root / "ImageNet_LT_test.txt").read_text())
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagenet_lt", "--data-root", str(root), "--image-size", "16", "--arch",
                 "resnet10", "--epochs", "1", "--batch-size", "8", "--loss", "ce", "--optimizer", "sgd",
                 "--workers", "0", "--no-progress", "--out", str(run)]) == 0
    wb = _finetune(run, tmp_path / "wb", "--stage", "weight-balancing", "--epochs", "1", "--batch-size", "8")
    assert wb["test_images"] == 8
    tau = _finetune(run, tmp_path / "tau", "--stage", "tau-norm", "--val-list", str(root / "val.txt"),
                    "--tau-grid", "0,1")
    assert tau["tau_selected_on"] == "val" and {r["split"] for r in tau["sweep"]} == {"val", "test"}
    val = {r["tau"]: r["top1"] for r in tau["sweep"] if r["split"] == "val"}
    assert val[tau["tau"]] == max(val.values())
    for name in ("wb", "tau"):
        model = _ckpt(tmp_path / name / "last.pt")["model"]
        parent = _ckpt(run / "last.pt")["model"]
        assert all(torch.equal(model[k], parent[k]) for k in parent if not k.startswith("net.fc."))


def test_weight_balancing_under_torchrun(parent: Path, tmp_path: Path) -> None:
    from tests.test_distributed import _torchrun

    out = tmp_path / "wb"
    proc = _torchrun(["-m", "ltsam", "finetune", str(parent), "--stage", "weight-balancing", "--epochs", "2",
                      "--batch-size", "64", "--no-progress", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["test_images"] == 540
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # written once, by rank 0
    _same_backbone(parent, out)
    _eval_recomputes(out, final, tmp_path)


def test_train_resume_on_a_stage_run_points_to_finetune(parent: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "crt"
    assert main(["finetune", str(parent), "--stage", "crt", "--epochs", "2", "--batch-size", "256", "--out",
                 str(out), "--stop-after", "1", "--no-progress"]) == 0
    (out / "last.pt").unlink()  # as if stopped before its first checkpoint: train --resume would clear it
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "second-stage run" in err and f"ltsam finetune --resume {out}" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
