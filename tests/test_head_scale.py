"""``--head-scale S``: a cosine head's logits are S cos(feature, class vector) (LIFT's head: S = 25 with the
logit-adjusted loss); the scale is part of the model a checkpoint rebuilds, and refused where it would do nothing
or multiply LDAM's own scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ltsam.cli import main
from ltsam.config import resolve
from ltsam.errors import UserError
from ltsam.models import NormedLinear, build_model
from ltsam.runs import load_trained
from tests.conftest import FAST_DIGITS


def test_scaled_cosine_logits_equal_the_formula():
    """In float64: logits[i, k] = S x_i . w_k / (|x_i| |w_k|), worked out element by element."""
    torch.manual_seed(0)
    head = NormedLinear(5, 3, scale=30.0).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    w = head.weight.detach()
    want = torch.tensor([[30.0 * float(x[i] @ w[:, k]) / float(x[i].norm() * w[:, k].norm()) for k in range(3)]
                         for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(head(x), want, rtol=1e-12, atol=1e-12)
    unit = NormedLinear(5, 3).double()
    unit.weight.data.copy_(w)
    torch.testing.assert_close(unit(x), want / 30.0, rtol=1e-12, atol=1e-12)  # scale 1: LDAM's head, cosines


def test_build_model_sets_the_scale_of_the_cosine_head_only_when_asked():
    torch.manual_seed(0)
    plain = build_model("small_cnn", 4, True, 1)
    torch.manual_seed(0)
    scaled = build_model("small_cnn", 4, True, 1, head_scale=12.5)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(scaled(x), plain(x) * 12.5)
    with pytest.raises(ValueError, match="cosine head"):
        build_model("small_cnn", 4, False, 1, head_scale=2.0)


def test_a_scaled_run_rebuilds_with_its_scale(tmp_path: Path):
    """Trained through the CLI with LA + cosine head + S = 30, the checkpoint's model has S = 30, and its logits on
    the test images equal those of the model the trainer saved (same weights, same scale)."""
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--loss", "la", "--head", "cosine", "--head-scale", "30",
                 "--optimizer", "sgd", "--out", str(out)]) == 0
    model, _, ckpt = load_trained(out, "last")
    assert ckpt["model_meta"]["head_scale"] == 30.0
    heads = [m for m in model.modules() if isinstance(m, NormedLinear)]
    assert [h.scale for h in heads] == [30.0]
    x = torch.rand(6, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        heads[0].scale = 1.0
        cosines = model(x)
    assert cosines.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(logits, 30.0 * cosines, rtol=4 * torch.finfo(torch.float32).eps, atol=0.0)


def test_unscaled_checkpoints_record_no_scale():
    cfg = resolve(dict(dataset="digits", loss="ldam"))
    assert cfg.head_scale == 1.0 and cfg.use_norm


@pytest.mark.parametrize("settings, words", [
    (dict(loss="ldam", head_scale=30.0), ["--loss ldam", "drop --head-scale"]),
    (dict(loss="la", head_scale=30.0), ["--head cosine"]),
    (dict(loss="la", use_norm=True, head_scale=-1.0), ["--head-scale", "positive"]),
    (dict(loss="la", use_norm=True, head_scale=float("nan")), ["--head-scale", "finite"]),
    (dict(method="glmc", use_norm=True, head_scale=30.0), ["--method glmc"]),
])
def test_refusals(settings, words):
    with pytest.raises(UserError) as info:
        resolve(dict(dataset="digits", **settings))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_cli_refusal_is_one_line(tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--loss", "ldam", "--head-scale", "30", "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--head-scale" in err[0] and not out.exists()
