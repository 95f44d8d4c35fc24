"""Pretrained backbones (``--arch timm:NAME``, ``--tune``), offline: timm's tiny test models built without
weights, on the bundled digits.

Each ``--tune`` mode trains one epoch and must leave exactly its own parameters changed (frozen ones bitwise
equal, also through SAM's perturbation); LoRA through peft is checked against W + (alpha / r) B A computed
here; a checkpoint reloads to the same logits without network; a ``--pretrained PATH`` file loads its
weights; a missing extra and an unreachable hub are one line and exit 2.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

timm = pytest.importorskip("timm")
peft = pytest.importorskip("peft")

from ltsam.cli import main  # noqa: E402
from ltsam.config import resolve  # noqa: E402
from ltsam.errors import UserError  # noqa: E402
from ltsam.models import MODELS, build_model  # noqa: E402
from ltsam.models.pretrained import weights  # noqa: E402
from ltsam.models.pretrained.net import PretrainedNet  # noqa: E402
from ltsam.models.pretrained.tuning import apply_tune  # noqa: E402
from ltsam.runs import load_trained  # noqa: E402
from ltsam.trainer import Trainer  # noqa: E402
from tests.pretrained_helpers import save_weights  # noqa: E402
from tests.tolerances import rtol  # noqa: E402

# test_vit: 300k parameters, linear layers (LoRA); test_resnet: batch norm (a frozen backbone's statistics).
BASE = dict(dataset="digits", device="cpu", epochs=1, batch_size=64, loss="ce", optimizer="sgd", threads=1,
            pretrained="none", input_size=32, arch="timm:test_vit")
ARGV = ["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--loss", "ce", "--no-progress",
        "--threads", "1", "--input-size", "32"]


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way timm fetches weights raises, as with the network down."""
    import timm.models._builder as builder

    def down(*args, **kwargs):
        raise OSError("Network is unreachable")

    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file",
                 "load_custom_from_hf"):
        monkeypatch.setattr(builder, name, down)
    monkeypatch.setattr(weights, "reachable", lambda *a, **k: True)  # no probe: the library's own failure


def _train(run_dir: Path, **settings) -> tuple[Trainer, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    trainer = Trainer(resolve(BASE | settings), run_dir, progress=False)
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in trainer.model.named_buffers()}
    trainer.fit()
    return trainer, params, buffers


def _changed(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


HEAD = "net.head."  # test_vit's classifier (its pretrained_cfg's "classifier")


@pytest.mark.parametrize("tune, optimizer, arch, intended", [
    ("full", "sgd", "timm:test_vit", lambda n: True),
    ("linear", "sgd", "timm:test_resnet", lambda n: n.startswith("net.fc.")),
    ("bias", "sam", "timm:test_vit", lambda n: n.startswith(HEAD) or n.endswith(".bias")),
    ("lora", "sam", "timm:test_vit", lambda n: n.startswith(HEAD) or ".lora_" in n),
])
def test_tune_mode_changes_exactly_its_parameters(tmp_path, monkeypatch, tune, optimizer, arch, intended):
    _no_network(monkeypatch)
    trainer, before, buffers = _train(tmp_path / "run", tune=tune, optimizer=optimizer, arch=arch)
    model = trainer.model
    names = [n for n, _ in model.named_parameters()]
    wanted = {n for n in names if intended(n)}
    assert wanted and (tune == "full" or wanted != set(names))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == wanted
    assert _changed(model, before) == wanted  # every trainable one moved; every frozen one bitwise equal
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in wanted}
    if tune == "lora":
        assert any(".lora_A." in n for n in wanted) and any(".lora_B." in n for n in wanted)
    if tune == "linear":  # the frozen backbone ran in eval mode: its batch-norm statistics are untouched
        bn = [n for n in buffers if "running_mean" in n]
        assert bn and all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


def test_lora_with_sam_in_bf16(tmp_path, monkeypatch):
    """``--amp bf16`` with a LoRA ViT and SAM: the forward runs in bfloat16 (peft's layers inside autocast), the
    weights stay float32, exactly the LoRA layers and the head move, and the epoch's loss is finite and not the
    float32 run's (the precision took effect)."""
    _no_network(monkeypatch)
    trainer, before, _ = _train(tmp_path / "bf16", tune="lora", optimizer="sam", amp="bf16")
    model = trainer.model
    wanted = {n for n, _ in model.named_parameters() if n.startswith(HEAD) or ".lora_" in n}
    assert _changed(model, before) == wanted
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad(), trainer.autocast():
        assert model(torch.rand(2, 1, 8, 8)).dtype == torch.bfloat16
    fp32, _, _ = _train(tmp_path / "fp32", tune="lora", optimizer="sam")
    bf16_loss = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    fp32_loss = json.loads((tmp_path / "fp32" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert math.isfinite(bf16_loss) and bf16_loss != fp32_loss


def test_checkpoint_reloads_same_logits_offline(tmp_path, monkeypatch):
    """last.pt rebuilds the LoRA model from plain-data meta (no network, no weights file) to the same logits,
    for ``eval`` (load_trained) and ``--resume``."""
    _no_network(monkeypatch)
    run = tmp_path / "run"
    trainer, _, _ = _train(run, tune="lora", lora_rank=2, lora_alpha=4.0)
    x = trainer.data.test.images[:50].float() / 255.0
    with torch.no_grad():
        expected = trainer.model.eval()(x)
    meta = torch.load(run / "last.pt", weights_only=True)["model_meta"]
    assert meta["arch_options"] == dict(pretrained="none", tune="lora", lora_rank=2, lora_alpha=4.0,
                                        lora_targets="all-linear", adapter_dim=64, adapter_scale=0.1,
                                        adapter_style="adaptformer", feature_cache=False, input_size=32)
    model, cfg, _ = load_trained(run, "last")
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert cfg.norm == "none" and cfg.tune == "lora"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    resumed = Trainer(resolve(BASE | dict(tune="lora", lora_rank=2, lora_alpha=4.0, epochs=2)), run,
                      resume=True, progress=False)
    with torch.no_grad():
        assert torch.equal(resumed.model.eval()(x), expected)


def test_lora_equals_hand_written_low_rank_update():
    """peft's LoRA on one nn.Linear: y = x W^T + b + (alpha / r) x A^T B^T, with B and A set here."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("body", nn.Linear(6, 5))
    net.add_module("head", nn.Linear(5, 3))
    w, b = net.body.weight.detach().clone(), net.body.bias.detach().clone()
    r, alpha = 2, 3.0
    net = apply_tune(net, "head", "lora", lora_rank=r, lora_alpha=alpha, targets="body")
    lora_a, lora_b = net.body.lora_A["default"].weight, net.body.lora_B["default"].weight
    assert lora_a.shape == (r, 6) and lora_b.shape == (5, r)
    with torch.no_grad():
        lora_a.copy_(torch.randn(r, 6))
        lora_b.copy_(torch.randn(5, r))
    x = torch.randn(4, 6)
    expected = x.double() @ (w.double() + alpha / r * lora_b.double() @ lora_a.double()).T + b.double()
    got = net.body(x)
    scale = (x.double().abs() @ (w.double().abs() + alpha / r * lora_b.double().abs() @ lora_a.double().abs()).T
             + b.double().abs())
    # float32: x W^T (6 terms) and the low-rank path (2 + 6 terms), then a sum: ~3 sums of <= 6 terms
    assert ((got.double() - expected).abs() <= rtol(torch.float32, 6, 3) * scale).all()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"body.lora_A.default.weight", "body.lora_B.default.weight", "head.weight", "head.bias"}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_path_loads_the_file(tmp_path, monkeypatch, suffix):
    """A state dict saved from a timm model (1000 classes) loads into ``timm:test_resnet`` for 10 classes: every
    tensor but the replaced head equal to the file's."""
    _no_network(monkeypatch)
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)
    state = source.state_dict()
    path = save_weights(state, tmp_path / f"weights{suffix}")
    options = dict(pretrained=str(path), tune="full", lora_rank=8, lora_alpha=16.0, lora_targets="all-linear",
                   input_size=32)
    model = build_model("timm:test_resnet", 10, False, 1, options=options, weights=True)
    loaded = model.net.state_dict()
    assert loaded["fc.weight"].shape == (10, state["fc.weight"].shape[1])
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    random = build_model("timm:test_resnet", 10, False, 1, options=options, weights=False)  # a checkpoint's rebuild
    first = next(k for k in state if k.endswith(".weight") and not k.startswith("fc."))
    assert not torch.equal(random.net.state_dict()[first], state[first])


def test_preprocessing_matches_normalise_then_resize():
    """The model's input: grey repeated to RGB, resized (bicubic, timm's) and normalised with its mean/std —
    computed here in the other order (normalise, then resize), which the interpolation's unit weights allow."""
    net = PretrainedNet(nn.Identity(), "", 16, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    expected = F.interpolate((x.repeat(1, 3, 1, 1) - mean.double()) / std.double(), size=(16, 16), mode="bicubic",
                             align_corners=False)
    got = net.preprocess(x)
    assert got.shape == (3, 3, 16, 16)
    # float64: 16-tap bicubic sums, one normalisation (mean/std were float32 values, used in float64 by both)
    assert torch.allclose(got, expected, rtol=0, atol=rtol(torch.float64, 16, 2) * float(expected.abs().max()))
    shrink = PretrainedNet(nn.Identity(), "", 4, "bilinear", (0.25,), (0.5,))  # antialiased: weights sum to 1
    flat = shrink.preprocess(torch.full((2, 1, 8, 8), 0.75))
    assert flat.shape == (2, 1, 4, 4)
    assert torch.allclose(flat, torch.ones_like(flat), rtol=0, atol=rtol(torch.float32, 16, 2))


def test_family_names_and_refusals(capsys):
    assert "timm:test_vit" in MODELS and "timm:NAME" in MODELS.choices()
    with pytest.raises(UserError, match="timm has no model"):
        MODELS.entry("timm:no_such_model")
    with pytest.raises(UserError, match="drop --norm"):
        resolve(BASE | dict(norm="cifar"))
    for arch in ("timm:test_vit", "clip:vit-b-16"):  # a backbone family GLMC cannot take: said so, not "unknown"
        with pytest.raises(UserError, match=f"--method glmc does not support {arch.partition(':')[0]}: backbones"):
            resolve(BASE | dict(method="glmc", arch=arch))
    with pytest.raises(UserError, match="--tune lora fine-tunes part of a pretrained backbone"):
        resolve(BASE | dict(arch="small_cnn", tune="lora"))
    for flags, says in ((["--arch", "timm:no_such_model"], "timm has no model"),):
        assert main([*ARGV, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err


@pytest.mark.parametrize("module, flags", [("timm", []), ("peft", ["--tune", "lora"])])
def test_missing_extra_is_one_line(tmp_path, monkeypatch, capsys, module, flags):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    code = main([*ARGV, "--arch", "timm:test_vit", "--pretrained", "none", *flags, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pip install 'ltsam[pretrained]'" in err and module in err


def test_unreachable_hub_is_one_line(tmp_path, monkeypatch, capsys):
    _no_network(monkeypatch)
    code = main([*ARGV, "--arch", "timm:test_vit", "--pretrained", "hub", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--pretrained PATH" in err and "Network is unreachable" in err


def test_without_the_extra_ltsam_imports_and_trains(tmp_path):
    """ltsam imports none of the extra's libraries by itself, and trains its own models with them missing."""
    import os
    import subprocess

    code = (
        "import sys\n"
        "import ltsam.cli, ltsam.extensions, ltsam.trainer\n"
        "assert not {'timm', 'peft', 'open_clip'} & set(sys.modules), sorted({'timm', 'peft'} & set(sys.modules))\n"
        "sys.modules.update(timm=None, peft=None, open_clip=None)\n"
        f"sys.exit(ltsam.cli.main(['train', '--epochs', '1', '--batch-size', '64', '--no-progress', "
        f"'--out', {str(tmp_path / 'run')!r}]))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "final.json").is_file()


def test_hessian_of_a_lora_vit_takes_the_trainable_parameters():
    """``ltsam hessian``'s operator on a LoRA ViT: its dimension is the trainable parameters', and the two
    backends (double backward, forward-over-reverse: attention through the math kernel, as fused kernels have
    no second derivative) agree in float64."""
    from ltsam.hessian.operator import HessianOperator

    torch.manual_seed(0)
    options = dict(pretrained="none", tune="lora", lora_rank=2, lora_alpha=4.0, lora_targets="all-linear",
                   input_size=32)
    model = build_model("timm:test_vit", 10, False, 1, options=options).double().eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    batches = [(torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.arange(6) % 10)]
    ops = [HessianOperator(model, F.cross_entropy, batches, backend=b) for b in ("double_backward",
                                                                                 "forward_over_reverse")]
    assert ops[0].dim == sum(p.numel() for p in trainable) < sum(p.numel() for p in model.parameters())
    v = torch.randn(ops[0].dim, dtype=torch.float64)
    hv, hv_fwd = (op.matvec(v) for op in ops)
    assert hv.abs().max() > 0
    # float64, one network's forward and two derivative passes: ~3 x 12 stages of sums of <= 800 terms
    assert torch.allclose(hv, hv_fwd, rtol=0, atol=rtol(torch.float64, 800, 36) * float(hv.abs().max()))


@pytest.mark.parametrize("flags, says", [
    (["--tune", "adapter", "--adapter-dim", "65"], "--adapter-dim 65: wider than block blocks.0's width 64"),
    (["--tune", "adapter", "--adapter-dim", str(10**9)], "a bottleneck is at most 64"),  # refused before allocating
    (["--tune", "lora", "--lora-rank", "65"], "--lora-rank 65: larger than layer blocks.0.attn.qkv's narrower side"),
    (["--tune", "lora", "--lora-rank", str(10**9)], "give at most 64"),
    (["--tune", "lora", "--lora-targets", "norm1"], "blocks.0.norm1 is a LayerNorm; LoRA adapts linear"),
    (["--tune", "lora", "--lora-targets", "no_such_layer"], "no layer of this model to adapt"),
])
def test_impossible_tuning_sizes_and_targets_are_one_line(tmp_path, capsys, flags, says):
    """Sizes a layer cannot take and LoRA targets that are no layer LoRA adapts: one line from the model's build
    (so the command refuses them before a run folder is made), exit 2."""
    options = dict(pretrained="none", tune=flags[1], input_size=32, lora_targets="all-linear")
    options.update({f.lstrip("-").replace("-", "_"): v for f, v in zip(flags[2::2], flags[3::2])})
    options = {k: int(v) if k in ("adapter_dim", "lora_rank") else v for k, v in options.items()}
    with pytest.raises(UserError, match=re.escape(says)):
        build_model("timm:test_vit", 10, False, 1, options=options)
    assert main([*ARGV, "--arch", "timm:test_vit", "--pretrained", "none", *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
