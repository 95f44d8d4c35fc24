"""``--tune adapter`` (AdaptFormer's parallel bottleneck adapters), offline: timm's tiny ``test_vit`` and a tiny
open_clip config written here, built without weights, on the bundled digits.

The untrained adapter model's logits equal the backbone's (the up projection starts at zero); one block's output
equals x' + MLP(LN2(x')) + s up(ReLU(down(LN2(x')))) computed here in float64, for timm's and open_clip's blocks;
one epoch changes exactly the adapters and the head (frozen parameters bitwise equal, also under SAM); a
checkpoint reloads offline to bitwise-equal logits; a model without transformer blocks is one line and exit 2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

from ltsam.cli import main  # noqa: E402
from ltsam.config import resolve  # noqa: E402
from ltsam.errors import UserError  # noqa: E402
from ltsam.models import build_model  # noqa: E402
from ltsam.models.pretrained.tuning import apply_tune  # noqa: E402
from ltsam.runs import load_trained  # noqa: E402
from ltsam.trainer import Trainer  # noqa: E402
from tests.pretrained_helpers import TINY_CLIP, assert_hessian_backends_agree, registered_clip_configs  # noqa: E402
from tests.test_pretrained import _no_network  # noqa: E402
from tests.tolerances import rtol  # noqa: E402

NAME = "ltsam-Adapter-Test"
CLIP = "clip:" + NAME.lower()
TINY = TINY_CLIP
TINY_RN = dict(TINY, vision_cfg=dict(image_size=32, layers=[1, 1, 1, 1], width=8))  # a ModifiedResNet tower
BASE = dict(dataset="digits", device="cpu", epochs=1, batch_size=64, loss="ce", optimizer="sgd", threads=1,
            pretrained="none", input_size=32, tune="adapter", adapter_dim=4)
OPTIONS = dict(pretrained="none", tune="adapter", lora_rank=8, lora_alpha=16.0, lora_targets="all-linear",
               input_size=32, adapter_dim=4, adapter_scale=0.1, adapter_style="adaptformer",
               feature_cache=False)


@pytest.fixture(scope="module", autouse=True)
def tiny_config(tmp_path_factory):
    yield from registered_clip_configs(tmp_path_factory.mktemp("open_clip"), {NAME: TINY, NAME + "-RN": TINY_RN})


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """timm's and open_clip's weight downloads raise, as with the network down."""
    import open_clip.factory as factory

    _no_network(monkeypatch)

    def down(*args, **kwargs):
        raise OSError("Network is unreachable")

    for name in ("download_pretrained", "download_pretrained_from_hf"):
        monkeypatch.setattr(factory, name, down)


def _options(arch: str, **changes) -> dict:
    extra = dict(head_init="random") if arch.startswith("clip:") else {}
    return OPTIONS | extra | changes


@pytest.mark.parametrize("arch", ["timm:test_vit", CLIP])
def test_untrained_adapters_leave_the_backbone_exactly(arch):
    """The same seed builds the same backbone and head with and without adapters; the adapters' zero up projection
    makes the logits bitwise equal, and every backbone tensor is the plain model's."""
    torch.manual_seed(0)
    plain = build_model(arch, 10, False, 1, options=_options(arch, tune="full")).eval()
    torch.manual_seed(0)
    adapted = build_model(arch, 10, False, 1, options=_options(arch)).eval()
    state, base = adapted.state_dict(), plain.state_dict()
    assert set(state) - set(base) == {k for k in state if ".adapter." in k} != set()
    assert all(torch.equal(base[k], state[k]) for k in base)
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(adapted(x), plain(x))


def _randomise(adapter: nn.Module) -> None:
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()


def _one_block(library: str, d: int, **adapter) -> tuple[nn.Module, nn.Module]:
    """(block + linear head with ``--tune adapter``'s adapters, in float64 eval mode; the block): one timm or
    open_clip transformer block of width ``d``."""
    if library == "timm":
        from timm.models.vision_transformer import Block

        block: nn.Module = Block(dim=d, num_heads=2)
    else:
        from open_clip.transformer import ResidualAttentionBlock

        block = ResidualAttentionBlock(d, 2, batch_first=True)
    net = nn.Sequential()
    net.add_module("block", block)
    net.add_module("head", nn.Linear(d, 3))
    return apply_tune(net, "head", "adapter", **adapter).double().eval(), block


@pytest.mark.parametrize("library", ["timm", "open_clip"])
def test_block_output_equals_the_adaptformer_formula(library):
    """One block (float64, adapter weights random): x' = x + attn(LN1(x)), out = x' + MLP(LN2(x')) +
    s (ReLU(LN2(x') Wd^T + bd) Wu^T + bu), with Wd, bd, Wu, bu read from the adapter and multiplied here."""
    torch.manual_seed(0)
    d, r, s = 16, 3, 0.7
    net, block = _one_block(library, d, adapter_dim=r, adapter_scale=s)
    adapter = block.adapter
    _randomise(adapter)
    x = torch.randn(2, 5, d, dtype=torch.float64)
    norm1, norm2 = (block.norm1, block.norm2) if library == "timm" else (block.ln_1, block.ln_2)
    with torch.no_grad():
        if library == "timm":
            mid = x + block.attn(norm1(x))
        else:
            mid = x + block.attention(q_x=norm1(x))
        h = norm2(mid)
        hidden = torch.clamp(h @ adapter.down.weight.T + adapter.down.bias, min=0.0)
        expected = mid + block.mlp(h) + s * (hidden @ adapter.up.weight.T + adapter.up.bias)
        got = net.block(x)
        assert got.shape == x.shape
        scale = float((mid.abs() + block.mlp(h).abs() + s * (hidden @ adapter.up.weight.T.abs())).max())
    # float64, the same modules on both sides but for the adapter: its two sums of <= 16 terms
    assert torch.allclose(got, expected, rtol=0, atol=rtol(torch.float64, 16, 4) * scale)
    assert not torch.allclose(got, mid + block.mlp(h), rtol=0, atol=1e-3 * scale)  # the adapter contributes
    copied = copy.deepcopy(net)  # its hooks follow the copy's own adapters
    with torch.no_grad():
        assert torch.equal(copied.block(x), got)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        "block.adapter.down.weight", "block.adapter.down.bias", "block.adapter.up.weight", "block.adapter.up.bias",
        "head.weight", "head.bias"}


@pytest.mark.parametrize("library", ["timm", "open_clip"])
def test_block_output_equals_lifts_formula(library):
    """``--adapter-style lift``, one block in float64 with random adapter weights: out = x' + MLP(LN2(x')) +
    s (ReLU(LN_a(x') Wd^T + bd) Wu^T + bu), LN_a the adapter's own layer norm (its weight and bias read here and
    applied by hand: (v - mean) / sqrt(var + eps) g + b), s the adapter's learned scale; a new adapter's s is 1,
    its down projection non-zero and its up projection zero."""
    torch.manual_seed(0)
    d, r = 16, 3
    net, block = _one_block(library, d, adapter_dim=r, adapter_style="lift")
    adapter = block.adapter
    assert float(adapter.scale) == 1.0 and not torch.equal(adapter.down.weight, torch.zeros_like(adapter.down.weight))
    assert torch.equal(adapter.up.weight, torch.zeros_like(adapter.up.weight))
    _randomise(adapter)
    x = torch.randn(2, 5, d, dtype=torch.float64)
    norm1, norm2 = (block.norm1, block.norm2) if library == "timm" else (block.ln_1, block.ln_2)
    with torch.no_grad():
        mid = x + (block.attn(norm1(x)) if library == "timm" else block.attention(q_x=norm1(x)))
        centred = mid - mid.mean(-1, keepdim=True)
        own = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + adapter.norm.eps)
        own = own * adapter.norm.weight + adapter.norm.bias
        hidden = torch.clamp(own @ adapter.down.weight.T + adapter.down.bias, min=0.0)
        s = adapter.scale
        expected = mid + block.mlp(norm2(mid)) + s * (hidden @ adapter.up.weight.T + adapter.up.bias)
        got = net.block(x)
        scale = float((mid.abs() + block.mlp(norm2(mid)).abs() + s.abs() * (hidden @ adapter.up.weight.T.abs())).max())
    # float64; the layer norm's mean, variance and the adapter's two sums: <= 16 terms each
    assert torch.allclose(got, expected, rtol=0, atol=rtol(torch.float64, 16, 8) * scale)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        "block.adapter.norm.weight", "block.adapter.norm.bias", "block.adapter.scale", "block.adapter.down.weight",
        "block.adapter.down.bias", "block.adapter.up.weight", "block.adapter.up.bias", "head.weight", "head.bias"}


def test_unknown_adapter_style_is_one_line():
    with pytest.raises(UserError, match="adapter-style"):
        resolve(BASE | dict(arch="timm:test_vit", adapter_style="houlsby"))


@pytest.mark.parametrize("arch, optimizer, blocks", [("timm:test_vit", "sam", ".blocks."),
                                                     (CLIP, "sgd", ".resblocks.")])
def test_one_epoch_changes_exactly_adapters_and_head(tmp_path, arch, optimizer, blocks):
    trainer = Trainer(resolve(BASE | dict(arch=arch, optimizer=optimizer)), tmp_path / "run", progress=False)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    names = [n for n, _ in model.named_parameters()]
    wanted = {n for n in names if n.startswith("net.head.") or ".adapter." in n}
    adapters = {n for n in wanted if ".adapter." in n}
    assert adapters and all(blocks in n for n in adapters) and wanted != set(names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == wanted
    assert {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])} == wanted
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in wanted}


def test_checkpoint_reloads_same_logits_offline(tmp_path):
    """last.pt rebuilds the adapters from plain-data meta (no network, no weights file): ``eval`` (load_trained)
    and ``--resume`` give bitwise-equal logits."""
    run = tmp_path / "run"
    settings = BASE | dict(arch="timm:test_vit", adapter_scale=0.5)
    trainer = Trainer(resolve(settings), run, progress=False)
    trainer.fit()
    x = trainer.data.test.images[:50].float() / 255.0
    with torch.no_grad():
        expected = trainer.model.eval()(x)
    meta = torch.load(run / "last.pt", weights_only=True)["model_meta"]
    assert meta["arch_options"] == OPTIONS | dict(adapter_scale=0.5)
    model, cfg, _ = load_trained(run, "last")
    assert cfg.tune == "adapter" and cfg.adapter_dim == 4 and cfg.adapter_scale == 0.5
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    resumed = Trainer(resolve(settings | dict(epochs=2)), run, resume=True, progress=False)
    with torch.no_grad():
        assert torch.equal(resumed.model.eval()(x), expected)


@pytest.mark.parametrize("arch", ["timm:test_resnet", CLIP + "-rn"])
def test_a_model_without_transformer_blocks_is_refused(tmp_path, capsys, arch):
    """One line and exit 2 before the run folder is made (the architecture checked on the meta device), and the
    same refusal from the build itself."""
    with pytest.raises(UserError, match="this model has none"):
        build_model(arch, 10, False, 1, options=_options(arch))
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--threads", "1", "--arch", arch,
            "--pretrained", "none", "--tune", "adapter", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--arch {arch} has none" in err and "ResidualAttentionBlock" in err, err
    assert not (tmp_path / "r").exists()
    assert main([*argv[:-2], "--arch", "small_cnn", "--out", str(tmp_path / "s")]) == 2
    assert "fine-tunes part of a pretrained backbone" in capsys.readouterr().err


def test_hessian_of_an_adapter_vit_takes_the_trainable_parameters():
    """``ltsam hessian`` through the adapters' hooks: the operator's dimension is the trainable parameters', and its
    two backends agree in float64 (the adapters' up projections set non-zero, so they take part)."""

    torch.manual_seed(0)
    model = build_model("timm:test_vit", 10, False, 1, options=OPTIONS).double().eval()
    for name, module in model.named_modules():
        if name.endswith(".adapter"):
            _randomise(module)
    assert_hessian_backends_agree(model, 800)  # sums of <= 800 terms
