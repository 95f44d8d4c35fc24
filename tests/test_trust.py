"""A run folder is data: loading one imports no code it names, a second stage never replaces the run it
is made from, and what a user gets wrong (or the system refuses) is one line with exit code 2.

Probed as issue 19 found them: ``finetune --out`` on or around its parent, plugins recorded in a run's
configuration (a module in the run folder, an installed module), plugins that fail while being imported,
a damaged stage configuration, post-hoc sweeps too long to build, the hessian's default folders, and the
per-sample forms of the logit-adjusted and Balanced Softmax losses.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltsam.cli import main
from tests.conftest import FAST_DIGITS
from tests.test_cli_errors import _assert_one_line, _run
from tests.tolerances import rtol

SRC = str(Path(__file__).resolve().parents[1] / "src")
ONE_EPOCH = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--no-progress", "--loss", "ce",
             "--optimizer", "sgd"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) by relative path -> SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A finished one-epoch digits run, with a validation split (so it has a best_val.pt)."""
    out = tmp_path_factory.mktemp("trust") / "run"
    assert main(["train", *ONE_EPOCH, "--val-per-class", "3", "--out", str(out)]) == 0
    return out


# --- 1. a stage's --out is never its parent, inside it, or around it ------------------------------------

@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_finetune_out_never_replaces_its_parent(parent: Path, tmp_path: Path, capsys, monkeypatch,
                                                where: str) -> None:
    if where == "around":  # a folder holding the parent: copy the parent one level down
        import shutil

        holder = tmp_path / "holder"
        run = holder / "run"
        shutil.copytree(parent, run)
        out = holder
    else:
        run = parent
        out = parent if where == "same" else parent / "stage"
    monkeypatch.chdir(tmp_path)
    before = _tree(run)
    code, err = _run(["finetune", str(run), "--stage", "tau-norm", "--out", str(out), "--overwrite",
                      "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, f"--out {out}", "parent run", "folder of its own")
    assert _tree(run) == before  # last.pt, best_val.pt, config.json ... byte for byte
    assert not (parent / "stage").exists()


# --- 2. a run folder's recorded plugins are never imported ------------------------------------------------

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")
"""


def _record_plugin(run: Path, module: str, tmp_path: Path) -> Path:
    """A copy of ``run`` whose configuration (config.json and every checkpoint) names plugin ``module``,
    with ``module``.py in the folder writing a marker file when imported; returns the copy."""
    import shutil

    bad = tmp_path / "handed"
    shutil.copytree(run, bad)
    marker = tmp_path / "MARKER"
    (bad / f"{module}.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((bad / "config.json").read_text())
    cfg["plugins"] = [module]
    (bad / "config.json").write_text(json.dumps(cfg))
    for pt in bad.glob("*.pt"):
        ckpt = torch.load(pt, map_location="cpu", weights_only=True)
        ckpt["config"]["plugins"] = [module]
        torch.save(ckpt, pt)
    return bad


def _python_m_ltsam(args: list[str], cwd: Path, extra_path: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (extra_path, SRC) if p), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ltsam", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_plugin_named_in_a_run_folder_is_never_imported(parent: Path, tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    bad = _record_plugin(parent, "evil_mod", tmp_path)
    marker = tmp_path / "MARKER"
    # `cd RUN && python -m ltsam eval .`: under -m the folder was importable, and the module named there.
    done = _python_m_ltsam(["eval", "."], cwd=bad)
    assert done.returncode == 2, done.stderr
    _assert_one_line(done.stderr, "evil_mod", "--plugin evil_mod")
    assert not marker.exists()
    # Every command that loads a run, with the module importable (on sys.path) all along: still not imported.
    monkeypatch.chdir(bad)
    monkeypatch.syspath_prepend(str(bad))
    commands = [["hessian", ".", "--classes", "0", "--power-iters", "2", "--trace-iters", "2", "--slq-steps", "2",
                 "--no-progress"],
                ["finetune", ".", "--stage", "tau-norm", "--out", str(tmp_path / "stage"), "--no-progress"],
                ["train", "--resume", ".", "--no-progress"]]
    for args in commands:
        code, err = _run(args, capsys)
        assert code == 2, (args, err)
        _assert_one_line(err, "evil_mod", "--plugin evil_mod")
        assert not marker.exists(), args
    assert not (tmp_path / "stage").exists()
    # Named on the command line, the user's choice: then it is imported, and the command works.
    trusted = _python_m_ltsam(["eval", ".", "--plugin", "evil_mod"], cwd=bad, extra_path=str(bad))
    assert trusted.returncode == 0, trusted.stderr
    assert marker.read_text() == "imported"


def test_an_installed_module_named_in_a_run_folder_is_not_imported(parent: Path, tmp_path: Path) -> None:
    bad = _record_plugin(parent, "this", tmp_path)  # `import this` prints the Zen of Python
    done = _python_m_ltsam(["eval", str(bad)], cwd=tmp_path)
    assert done.returncode == 2
    _assert_one_line(done.stderr, "--plugin this")
    assert "Beautiful is better than ugly" not in done.stdout + done.stderr


@pytest.mark.parametrize("body, words", [
    ("raise RuntimeError('registration failed')", ["RuntimeError", "registration failed"]),
    ("def broken(:\n    pass", ["SyntaxError", "broken_plugin.py:1"]),
    ("import no_such_module_anywhere", ["no_such_module_anywhere"]),
])
def test_a_plugin_that_fails_to_import_is_one_line(tmp_path: Path, capsys, monkeypatch, body: str,
                                                   words: list[str]) -> None:
    name = f"broken_plugin_{abs(hash(body)) % 10**6}"
    (tmp_path / f"{name}.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    if "SyntaxError" in words:
        words = ["SyntaxError", f"{name}.py:1"]
    code, err = _run(["train", "--plugin", name, *ONE_EPOCH, "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    _assert_one_line(err, name, *words)
    assert not (tmp_path / "run").exists()


# --- 9. damaged stage configuration, a system that refuses a file ---------------------------------------

@pytest.mark.parametrize("damage", [
    "{not json",
    json.dumps({"stage": "crt", "parent": 3, "options": {}}),
    json.dumps({"stage": "crt", "options": [], "parent": {"path": "x", "which": "last", "sha256": "0"}}),
    json.dumps({"stage": 7, "options": {}, "parent": {"path": "x", "which": "last", "sha256": "0"}}),
    json.dumps({"stage": "crt", "options": {}, "parent": {"path": "x", "which": "last", "sha256": "0"},
                "plugins": "evil"}),
])
def test_a_damaged_stage_config_on_resume_is_one_line(parent: Path, tmp_path: Path, capsys, damage: str) -> None:
    stage = tmp_path / "stage"
    assert main(["finetune", str(parent), "--stage", "crt", "--epochs", "1", "--out", str(stage),
                 "--no-progress", "--stop-after", "1"]) == 0
    (stage / "config.json").write_text(damage)
    code, err = _run(["finetune", "--resume", str(stage), "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, "config.json")


# --- 10. smaller ----------------------------------------------------------------------------------------

def test_a_too_long_logit_adjust_sweep_is_refused_before_it_is_built(parent: Path, capsys) -> None:
    code, err = _run(["eval", str(parent), "--logit-adjust", "0:1000000:0.000001"], capsys)
    assert code == 2
    _assert_one_line(err, "--logit-adjust", "1000000000001 values", "at most 1000")


def test_overwrite_replaces_a_tau_norm_folder(parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "tau"
    for _ in range(2):  # the second replaces the first, its sweep.json included
        assert main(["finetune", str(parent), "--stage", "tau-norm", "--out", str(out), "--overwrite",
                     "--no-progress"]) == 0
    assert (out / "sweep.json").is_file()


def test_finetuning_an_unfinished_parent_warns(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *ONE_EPOCH, "--epochs", "2", "--stop-after", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["finetune", str(run), "--stage", "tau-norm", "--out", str(tmp_path / "tau"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "warning: the parent run" in out and "has not finished" in out and f"--resume {run}" in out


def test_which_best_val_on_a_stage_run_says_what_it_keeps(parent: Path, tmp_path: Path, capsys) -> None:
    stage = tmp_path / "tau"
    assert main(["finetune", str(parent), "--stage", "tau-norm", "--out", str(stage), "--no-progress"]) == 0
    code, err = _run(["eval", str(stage), "--which", "best_val"], capsys)
    assert code == 2
    line = _assert_one_line(err, "second-stage run", "best.pt and last.pt")
    assert "validation split" not in line


def test_hessian_checkpoints_get_their_own_default_folders(parent: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(parent, run)
    fast = ["--classes", "0", "--power-iters", "2", "--trace-iters", "2", "--slq-steps", "4", "--no-progress"]
    for which in ("last", "best_val"):
        assert main(["hessian", str(run), "--which", which, *fast]) == 0
    last, best_val = (json.loads((run / "hessian" / d / "summary.json").read_text())
                      for d in ("train", "train_best_val"))
    assert last != best_val or (run / "hessian" / "train").resolve() != (run / "hessian" / "train_best_val").resolve()
    assert {p.name for p in (run / "hessian").iterdir()} >= {"train", "train_best_val"}
    assert main(["hessian-compare", str(run), str(run), "--which", "best_val", "--out",
                 str(tmp_path / "cmp.png")]) == 0


# --- 11. per-sample losses of LA and Balanced Softmax -----------------------------------------------------

@pytest.mark.parametrize("name", ["la", "balanced_softmax"])
@pytest.mark.parametrize("weighted", [False, True])
def test_per_sample_losses_average_to_the_loss(name: str, weighted: bool) -> None:
    """Worked out here: shift z_c by tau log(n_c / N) (LA, tau 1.5) or log n_c (BS), CE per sample, and the
    weighted-mean convention p_i = B w_{y_i} l_i / sum_j w_{y_j}; their mean is the loss."""
    from ltsam.losses import build_loss

    counts = [50, 20, 5, 1]
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (12,), generator=gen)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0]) if weighted else None
    options = {"la_tau": 1.5} if name == "la" else {}
    loss = build_loss(name, counts, weight=w, **options).double()
    n = torch.tensor(counts, dtype=torch.float64)
    shift = 1.5 * torch.log(n / n.sum()) if name == "la" else torch.log(n)
    shifted = z + shift.float().double()  # the loss keeps its offset as a float32 buffer
    ce = -(shifted.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(shifted, dim=1))
    wy = torch.ones(12, dtype=torch.float64) if w is None else w.double()[y]
    want = ce * wy * 12 / wy.sum()
    got = loss.per_sample(z, y)
    bound = rtol(torch.float64, 4, 8)
    torch.testing.assert_close(got, want, rtol=bound, atol=0)
    torch.testing.assert_close(got.mean(), loss(z, y), rtol=bound, atol=0)


def test_la_and_bs_train_with_imbsam(tmp_path: Path) -> None:
    for name in ("la", "balanced_softmax"):
        assert main(["train", *ONE_EPOCH, "--loss", name, "--optimizer", "imbsam", "--imbsam-eta", "100",
                     "--out", str(tmp_path / name)]) == 0


class _NoPerSample(nn.Module):
    def __init__(self, cls_num_list, weight=None):
        super().__init__()

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets)


def test_a_loss_without_per_sample_is_refused_before_the_run_folder(tmp_path: Path, capsys) -> None:
    from ltsam.losses import LOSSES

    LOSSES.add("no_per_sample_test", _NoPerSample, help="a test loss without per_sample")
    try:
        out = tmp_path / "run"
        code, err = _run(["train", *FAST_DIGITS, "--loss", "no_per_sample_test", "--optimizer", "focal_sam",
                          "--out", str(out)], capsys)
        assert code == 2
        _assert_one_line(err, "--optimizer focal_sam", "--loss no_per_sample_test", "per_sample")
        assert not out.exists()
    finally:
        LOSSES._entries.pop("no_per_sample_test", None)


# --- 12. the Focal-SAM recipe follows what the official code computes ------------------------------------

def test_focal_sam_recipes_use_the_logit_adjusted_loss_at_tau_1() -> None:
    from ltsam.config import resolve
    from ltsam.recipes import get_recipe

    for ds in ("cifar10", "cifar100"):
        cfg = resolve({}, get_recipe(f"focal-sam-{ds}-lt"))
        assert (cfg.loss, cfg.la_tau, cfg.optimizer) == ("la", 1.0, "focal_sam")
