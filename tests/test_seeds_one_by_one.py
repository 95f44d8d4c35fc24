"""``ltsam train --seeds`` for runs that do not pack (a pretrained backbone here: timm's tiny ``test_vit``,
built without weights): the seeds train one after another into OUT/seedN, each folder the run that seed trains
alone (weights bitwise equal), ``config.json`` saying which pack folder it trained in and that it trained one by
one; the report table ends the command; a stopped set resumes with ``--resume OUT`` to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

from ltsam.cli import main  # noqa: E402
from tests.test_pretrained import _no_network  # noqa: E402

ARGV = ["train", "--dataset", "digits", "--batch-size", "64", "--loss", "ce", "--optimizer", "sam", "--rho", "0.1",
        "--no-progress", "--threads", "1", "--arch", "timm:test_vit", "--pretrained", "none", "--input-size", "16",
        "--tune", "lora", "--lora-rank", "2"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    _no_network(monkeypatch)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_seeds_of_a_pretrained_backbone_train_one_by_one(tmp_path: Path, capsys):
    out = tmp_path / "seeds"
    assert main([*ARGV, "--epochs", "1", "--seeds", "3", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "do not pack" in printed and "one after another" in printed and "report in" in printed
    for seed in (3, 5):
        alone = tmp_path / f"alone{seed}"
        assert main([*ARGV, "--epochs", "1", "--seed", str(seed), "--out", str(alone)]) == 0
        member, single = _weights(out / f"seed{seed}"), _weights(alone)
        assert member.keys() == single.keys() and all(torch.equal(member[k], single[k]) for k in single)
        config = json.loads((out / f"seed{seed}" / "config.json").read_text())
        assert config["seed"] == seed and config["pack"]["one_by_one"] is True
        assert config["pack"]["folder"] == str(out) and config["pack"]["size"] == 2
    assert not torch.equal(_weights(out / "seed3")["net.head.weight"], _weights(out / "seed5")["net.head.weight"])


def test_a_stopped_set_resumes_to_the_uninterrupted_weights(tmp_path: Path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*ARGV, "--epochs", "2", "--seeds", "0", "1", "--out", str(whole)]) == 0
    assert main([*ARGV, "--epochs", "2", "--seeds", "0", "1", "--out", str(parts), "--stop-after", "1"]) == 0
    assert [len((parts / f"seed{s}" / "metrics.jsonl").read_text().splitlines()) for s in (0, 1)] == [1, 1]
    assert main(["train", "--resume", str(parts), "--no-progress"]) == 0
    for s in (0, 1):
        a, b = _weights(whole / f"seed{s}"), _weights(parts / f"seed{s}")
        assert all(torch.equal(a[k], b[k]) for k in a)
