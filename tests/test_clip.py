"""CLIP image towers (``--arch clip:NAME``, ``--head-init text``), offline: a tiny open_clip config written here
and registered with ``open_clip.add_model_config``, built without weights, on the bundled digits.

Each ``--tune`` mode trains one epoch and leaves exactly its parameters changed; a checkpoint reloads to the same
logits without network; ``--pretrained PATH`` loads the file's image tower; the text-initialised head equals the
normalised text features of the prompts computed here, and the model's logits then equal CLIP's zero-shot
cosines computed here from the whole model; names resolve without regard to case; an unreachable hub, an
unknown name and misplaced ``--head-init text`` are one line and exit 2.
"""

from __future__ import annotations

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("peft")

from ltsam.cli import main  # noqa: E402
from ltsam.config import resolve  # noqa: E402
from ltsam.errors import UserError  # noqa: E402
from ltsam.models import MODELS  # noqa: E402
from ltsam.models.pretrained import weights  # noqa: E402
from ltsam.models.pretrained.clip_models import hub_tag  # noqa: E402
from ltsam.runs import load_trained  # noqa: E402
from ltsam.trainer import Trainer  # noqa: E402
from tests.pretrained_helpers import (  # noqa: E402
    TINY_CLIP,
    assert_hessian_backends_agree,
    registered_clip_configs,
    save_weights,
)
from tests.tolerances import rtol  # noqa: E402

NAME = "ltsam-Tiny-Test"  # mixed case: ltsam's lower-cased --arch must find it
ARCH = "clip:" + NAME.lower()
TINY = TINY_CLIP
BASE = dict(dataset="digits", device="cpu", epochs=1, batch_size=64, loss="ce", optimizer="sgd", threads=1,
            pretrained="none", arch=ARCH)
ARGV = ["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--loss", "ce", "--no-progress",
        "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def tiny_config(tmp_path_factory):
    yield from registered_clip_configs(tmp_path_factory.mktemp("open_clip"), {NAME: TINY})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every way open_clip fetches weights raises, as with the network down."""
    import open_clip.factory as factory

    def down(*args, **kwargs):
        raise OSError("Network is unreachable")

    for name in ("download_pretrained", "download_pretrained_from_hf"):
        monkeypatch.setattr(factory, name, down)
    monkeypatch.setattr(weights, "reachable", lambda *a, **k: True)  # no probe: the library's own failure


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


HEAD = "net.head."


@pytest.mark.parametrize("tune, optimizer, intended", [
    ("full", "sgd", lambda n: True),
    ("linear", "sgd", lambda n: n.startswith(HEAD)),
    ("bias", "sam", lambda n: n.startswith(HEAD) or n.endswith(".bias") or n.endswith("_bias")),
    ("lora", "sam", lambda n: n.startswith(HEAD) or ".lora_" in n),
])
def test_tune_mode_changes_exactly_its_parameters(tmp_path, tune, optimizer, intended):
    trainer = Trainer(resolve(BASE | dict(tune=tune, optimizer=optimizer)), tmp_path / "run", progress=False)
    model = trainer.model
    before = _params(model)
    trainer.fit()
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("net.visual.", HEAD)) for n in names)  # the image tower and the head: no text tower
    wanted = {n for n in names if intended(n)}
    assert wanted and (tune == "full" or wanted != set(names))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == wanted
    assert {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])} == wanted
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in wanted}
    if tune == "bias":
        assert any(n.endswith("attn.in_proj_bias") for n in wanted)
    if tune == "lora":  # attention (in_proj and out_proj, parametrized) and the MLPs adapted
        assert any(".attn.parametrizations.in_proj_weight.0.lora_A" in n for n in wanted)
        assert any(".attn.out_proj.parametrizations.weight.0.lora_B" in n for n in wanted)
        assert any(".mlp.c_fc.lora_A." in n for n in wanted)


def test_attention_lora_equals_hand_written_weights():
    """LoRA on nn.MultiheadAttention: the layer computes attention with W_in + (alpha / r) B A and
    W_out + (alpha / r) B' A' (set here), W_in and W_out themselves unchanged and frozen."""
    from torch import nn

    from ltsam.models.pretrained.tuning import apply_tune

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("attn", nn.MultiheadAttention(8, 2, batch_first=True))
    net.add_module("head", nn.Linear(8, 3))
    w_in, w_out = net.attn.in_proj_weight.detach().clone(), net.attn.out_proj.weight.detach().clone()
    r, alpha = 2, 3.0
    net = apply_tune(net, "head", "lora", lora_rank=r, lora_alpha=alpha)
    deltas = net.attn.parametrizations.in_proj_weight[0], net.attn.out_proj.parametrizations.weight[0]
    with torch.no_grad():
        for d in deltas:
            d.lora_A.normal_()
            d.lora_B.normal_()
    reference = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(w_in + alpha / r * deltas[0].lora_B @ deltas[0].lora_A)
        reference.in_proj_bias.copy_(net.attn.in_proj_bias)
        reference.out_proj.weight.copy_(w_out + alpha / r * deltas[1].lora_B @ deltas[1].lora_A)
        reference.out_proj.bias.copy_(net.attn.out_proj.bias)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        got, expected = net.attn(x, x, x)[0], reference(x, x, x)[0]
    # float32: the weights summed the same way; attention over 5 keys of 8-term products, two projections
    assert torch.allclose(got, expected, rtol=0, atol=rtol(torch.float32, 8, 6) * float(expected.abs().max()))
    assert torch.equal(net.attn.parametrizations.in_proj_weight.original, w_in)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"attn.parametrizations.in_proj_weight.0.lora_A",
                         "attn.parametrizations.in_proj_weight.0.lora_B",
                         "attn.out_proj.parametrizations.weight.0.lora_A",
                         "attn.out_proj.parametrizations.weight.0.lora_B", "head.weight", "head.bias"}


def test_checkpoint_reloads_same_logits_offline(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(resolve(BASE | dict(tune="lora", lora_rank=2)), run, progress=False)
    trainer.fit()
    x = trainer.data.test.images[:40].float() / 255.0
    with torch.no_grad():
        expected = trainer.model.eval()(x)
    meta = torch.load(run / "last.pt", weights_only=True)["model_meta"]
    assert meta["arch"] == f"clip:{NAME}"  # open_clip's spelling, plain data
    assert meta["arch_options"]["tune"] == "lora" and meta["arch_options"]["head_init"] == "random"
    model, cfg, _ = load_trained(run, "last")
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    resumed = Trainer(resolve(BASE | dict(tune="lora", lora_rank=2, epochs=2)), run, resume=True, progress=False)
    with torch.no_grad():
        assert torch.equal(resumed.model.eval()(x), expected)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_text_head_is_the_prompts_normalised_text_features(tmp_path, suffix):
    """``--pretrained PATH --head-init text``: the image tower is the file's, the cosine head's class vectors are
    normalize(encode_text(tokenize("a photo of a {digit}."))) of the file's model, so the untrained model's logits
    are CLIP's zero-shot cosines."""
    torch.manual_seed(3)
    clip = open_clip.create_model(NAME, pretrained=None).eval()
    state = clip.state_dict()
    path = save_weights(state, tmp_path / f"clip{suffix}")
    cfg = resolve(BASE | dict(pretrained=str(path), head_init="text", use_norm=True))
    model = Trainer(cfg, tmp_path / "run", progress=False).model.eval()
    tokens = open_clip.get_tokenizer(NAME)([f"a photo of a {d}." for d in "0123456789"])
    with torch.no_grad():
        text = clip.encode_text(tokens)
    text = text / text.norm(dim=-1, keepdim=True)
    head = model.net.head.weight.detach().T  # NormedLinear: (embed_dim, classes)
    assert head.shape == (10, 16)
    # float32: one text-tower forward in both (the same ops), then a 16-term norm
    assert torch.allclose(head, text, rtol=0, atol=rtol(torch.float32, 32, 8))
    for key, value in model.net.visual.state_dict().items():
        assert torch.equal(value, state["visual." + key]), key
    x = torch.rand(5, 1, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image = clip.encode_image((x.expand(-1, 3, -1, -1) - mean) / std)
        logits = model(x)
    zero_shot = (image / image.norm(dim=-1, keepdim=True)) @ text.T
    assert torch.allclose(logits, zero_shot, rtol=0, atol=rtol(torch.float32, 64, 12))
    if suffix == ".pt":  # --resume keeps the checkpoint's head: the text initialisation is a new run's only
        trainer = Trainer(cfg, tmp_path / "run", progress=False)
        with torch.no_grad():
            trainer.model.net.head.weight.mul_(-1.0)
        trainer.fit()
        resumed = Trainer(resolve(BASE | dict(pretrained=str(path), head_init="text", use_norm=True, epochs=2)),
                          tmp_path / "run", resume=True, progress=False)
        assert torch.equal(resumed.model.net.head.weight, trainer.model.net.head.weight)
        assert not torch.allclose(resumed.model.net.head.weight.detach().T, text, atol=1e-3)


def test_names_resolve_without_case_and_hub_tags():
    assert MODELS.entry("clip:vit-b-16").name == "clip:ViT-B-16"
    assert MODELS.entry("clip:rn50").name == "clip:RN50"
    assert "clip:NAME" in MODELS.choices()
    assert hub_tag(open_clip, "ViT-B-16") == "openai"
    other = next(m for m in open_clip.list_models() if open_clip.list_pretrained_tags_by_model(m)
                 and "openai" not in open_clip.list_pretrained_tags_by_model(m))
    assert hub_tag(open_clip, other) == open_clip.list_pretrained_tags_by_model(other)[0]
    with pytest.raises(UserError, match="lists no pretrained weights"):
        hub_tag(open_clip, NAME)


@pytest.mark.parametrize("flags, says", [
    (["--arch", "clip:no-such-model"], "open_clip has no model"),
    (["--arch", "clip:rn50", "--pretrained", "hub"], "--pretrained PATH"),
    (["--arch", "clip:vit-b-16", "--pretrained", "laion2b_s34b_b88k"], "--pretrained PATH"),
    (["--arch", "clip:rn50", "--pretrained", "no_such_tag"], "neither a file nor a tag"),
    (["--arch", "timm:test_vit", "--pretrained", "none", "--head-init", "text"], "drop --head-init"),
    (["--arch", ARCH, "--pretrained", "none", "--head-init", "text", "--head", "cosine"], "--pretrained none"),
    (["--arch", ARCH, "--head-init", "text", "--head", "linear"], "--head cosine"),
])
def test_refusals_are_one_line(tmp_path, capsys, flags, says):
    assert main([*ARGV, *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    if "hub" in flags:
        assert "Network is unreachable" in err and "'openai'" in err


def test_missing_open_clip_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails as if not installed
    assert main([*ARGV, "--arch", ARCH, "--pretrained", "none", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'ltsam[pretrained]'" in err and "open_clip" in err


def test_hessian_of_a_lora_clip_tower_takes_the_trainable_parameters():
    """``ltsam hessian`` through the parametrized attention LoRA: the operator's dimension is the trainable
    parameters', and the two backends agree in float64."""
    from ltsam.models import build_model

    torch.manual_seed(0)
    options = dict(pretrained="none", tune="lora", lora_rank=2, lora_alpha=4.0, lora_targets="all-linear",
                   input_size=None, head_init="random")
    model = build_model(ARCH, 10, False, 1, options=options).double().eval()
    assert_hessian_backends_agree(model, 100)  # sums of <= 100 terms


def test_lift_recipe_trains_on_a_tiny_tower(tmp_path):
    """The ``lift-cifar100-lt-if100`` recipe's settings (LIFT's adapters, text-initialised cosine head of scale 25,
    LA loss, SGD 0.01 with cosine LR), with the tiny tower, its weights file and the digits in place of CLIP
    ViT-B/16 and CIFAR-100-LT: the untrained model's logits are 25 x CLIP's zero-shot cosines, and one epoch
    trains exactly the adapters (layer norm, projections, scale) and the head."""
    from ltsam.recipes import get_recipe

    recipe = get_recipe("lift-cifar100-lt-if100")
    assert {k: recipe[k] for k in ("arch", "pretrained", "tune", "adapter_style", "head_init", "use_norm",
                                   "head_scale", "loss", "la_tau", "optimizer", "lr", "momentum", "wd",
                                   "lr_schedule", "epochs", "batch_size", "adapter_dim")} == dict(
        arch="clip:vit-b-16", pretrained="openai", tune="adapter", adapter_style="lift", head_init="text",
        use_norm=True, head_scale=25.0, loss="la", la_tau=1.0, optimizer="sgd", lr=0.01, momentum=0.9, wd=5e-4,
        lr_schedule="cosine", epochs=10, batch_size=128, adapter_dim=4)
    torch.manual_seed(3)
    clip = open_clip.create_model(NAME, pretrained=None).eval()
    path = save_weights(clip.state_dict(), tmp_path / "clip.pt")
    cfg = resolve(dict(dataset="digits", device="cpu", threads=1, arch=ARCH, pretrained=str(path), input_size=32,
                       adapter_dim=2, epochs=1, batch_size=64), recipe)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = trainer.model.eval()
    tokens = open_clip.get_tokenizer(NAME)([f"a photo of a {d}." for d in "0123456789"])
    x = torch.rand(5, 1, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        text = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1)
        image = torch.nn.functional.normalize(clip.encode_image((x.expand(-1, 3, -1, -1) - mean) / std), dim=-1)
        logits = model(x)
    # the adapters start at zero (bitwise the tower's output); 25 x a cosine of float32 16-term sums
    assert torch.allclose(logits, 25.0 * image @ text.T, rtol=0, atol=25.0 * rtol(torch.float32, 64, 12))
    before = _params(model)
    trainer.fit()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    wanted = {n for n in before if n.startswith(HEAD) or ".adapter." in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == wanted
    # every frozen tensor bitwise as it was; a parameter still at zero whose ReLU units stayed dead for the CLS
    # token (the last block's only output used) may keep its value, so the changed ones are compared per block
    assert changed <= wanted and {n for n in wanted if n.startswith(HEAD)} <= changed
    for block in ("resblocks.0.", "resblocks.1."):
        assert {n.rpartition(".adapter.")[2] for n in changed if block + "adapter." in n} >= {
            "scale", "norm.weight", "down.weight", "up.bias"}


def _activations(model: torch.nn.Module) -> set[str]:
    """The class names of the MLP activations in ``model`` (open_clip's ``QuickGELU`` or ``nn.GELU``)."""
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


@pytest.fixture
def tagged_like_vit_b_16(monkeypatch, tmp_path):
    """The tiny config with ViT-B-16's pretrained tags (``openai``: QuickGELU; the LAION ones: GELU), each tag's
    download handing back a weights file of the tiny model built with QuickGELU; returns that model."""
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, NAME,
                        {tag: dict(open_clip.get_pretrained_cfg("ViT-B-16", tag))
                         for tag in open_clip.list_pretrained_tags_by_model("ViT-B-16")})
    assert open_clip.get_pretrained_cfg(NAME, "openai")["quick_gelu"]
    assert not open_clip.get_pretrained_cfg(NAME, "laion2b_s34b_b88k").get("quick_gelu", False)
    torch.manual_seed(5)
    clip = open_clip.create_model(NAME, pretrained=None, force_quick_gelu=True).eval()
    path = save_weights(clip.state_dict(), tmp_path / "openai.pt")
    import open_clip.factory as factory

    monkeypatch.setattr(factory, "download_pretrained", lambda cfg, **kwargs: str(path))
    return clip


@pytest.mark.parametrize("pretrained, weights_loaded, activation", [
    ("openai", True, "QuickGELU"), ("hub", True, "QuickGELU"), ("OpenAI", True, "QuickGELU"),
    ("openai", False, "QuickGELU"),  # a checkpoint's rebuild (eval, --resume): no weights, the tag's activation
    ("laion2b_s34b_b88k", True, "GELU"), ("laion2b_s34b_b88k", False, "GELU"), ("none", True, "GELU"),
])
def test_the_tags_activation_is_built(tagged_like_vit_b_16, pretrained, weights_loaded, activation):
    """OpenAI's CLIP weights were trained with QuickGELU, the LAION ones with GELU; the tower is built with the
    activation of the tag ``--pretrained`` names, for a new run and for a checkpoint's rebuild alike."""
    from ltsam.models import build_model

    options = dict(pretrained=pretrained, tune="full", input_size=None, head_init="random")
    model = build_model(ARCH, 10, False, 1, options=options, weights=weights_loaded)
    assert _activations(model.net.visual) == {activation}


def test_openai_weights_train_and_reload_with_quickgelu(tmp_path, tagged_like_vit_b_16):
    """``--pretrained openai`` end to end: the untrained tower's embeddings are bitwise those of the QuickGELU model
    the weights came from (GELU would differ), and the run's checkpoint reloads (``eval``, ``--resume``) to
    QuickGELU and bitwise-equal logits."""
    clip = tagged_like_vit_b_16
    cfg = resolve(BASE | dict(pretrained="openai"))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = trainer.model.eval()
    x = torch.rand(5, 1, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model.net.visual(model.preprocess(x)), clip.encode_image((x.expand(-1, 3, -1, -1) - mean)
                                                                                    / std))
    trainer.fit()
    with torch.no_grad():
        expected = trainer.model.eval()(x)
    reloaded, _, _ = load_trained(tmp_path / "run", "last")
    assert _activations(reloaded) == {"QuickGELU"}
    resumed = Trainer(resolve(BASE | dict(pretrained="openai", epochs=2)), tmp_path / "run", resume=True,
                      progress=False)
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected) and torch.equal(resumed.model.eval()(x), expected)
    assert _activations(resumed.model) == {"QuickGELU"}
