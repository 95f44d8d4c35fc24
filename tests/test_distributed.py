"""torchrun with 2 gloo processes on the CPU: DDP-SAM equals single-process SAM at the same global batch,
and `ltsam train` runs end to end under torchrun (rank 0 writes the run folder)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.tolerances import rtol

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_ddp_sam_matches_single_process_at_same_global_batch(tmp_path: Path) -> None:
    from tests.ddp_worker import train

    out = tmp_path / "ddp.pt"
    proc = _torchrun([str(ROOT / "tests" / "ddp_worker.py"), str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = torch.load(out, weights_only=True)
    single = train(32, 0, 1).state_dict()
    init = __import__("tests.ddp_worker", fromlist=["tiny_model"]).tiny_model().state_dict()
    # float64: the all-reduced mean of two 16-image gradients against one 32-image gradient, summed in another
    # order. Longest sum: the convolution's weight gradient over 32 images x 8 x 8 pixels; stages: 3 steps x 2 SAM
    # passes x forward and backward x (convolution, linear head, all-reduce). Weights are of order one.
    bound = rtol(torch.float64, n=32 * 8 * 8, stages=3 * 2 * 2 * 3)
    for k in single:
        assert ddp[k].dtype == torch.float64
        assert not torch.equal(single[k], init[k]), k  # the steps did move the weights
        torch.testing.assert_close(ddp[k], single[k], rtol=bound, atol=bound)


def test_ltsam_train_under_torchrun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _torchrun(["-m", "ltsam", "train", "--epochs", "2", "--batch-size", "32", "--no-progress",
                      "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written once, by rank 0
    # The test set was split across ranks and the counts summed: every test image counted once.
    assert final["test_images"] == 540
    assert proc.stdout.count("epoch   1/2") == 1
    # The sharded, all-reduced evaluation equals a single-process evaluation of the same weights.
    from ltsam.cli import main

    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--which", "last", "--json", str(report)]) == 0
    single = json.loads(report.read_text())
    assert abs(single["top1"] - final["final"]["top1"]) < 1e-9
    assert single["per_class_acc"] == final["final"]["per_class_acc"]


def test_glmc_sam_on_list_files_under_torchrun(tmp_path: Path) -> None:
    from tests.test_listfile import make_list_dataset

    root = make_list_dataset(tmp_path / "imnet")
    out = tmp_path / "run"
    proc = _torchrun(["-m", "ltsam", "train", "--method", "glmc", "--dataset", "imagenet_lt", "--data-root", str(root),
                      "--image-size", "16", "--arch", "resnet10", "--epochs", "1", "--batch-size", "4",
                      "--rho", "0.05", "--workers", "1", "--no-progress", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["test_images"] == 8
    assert json.loads((out / "config.json").read_text())["method"] == "glmc"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
