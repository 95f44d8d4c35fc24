"""Shared pieces of the pretrained-backbone tests: a tiny open_clip config registered for a test module, and
the check that both Hessian backends agree on a model whose frozen parameters are left out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from tests.tolerances import rtol

# A CLIP small enough to build in milliseconds: a 2-layer ViT on 32x32 images, a 1-layer text tower.
TINY_CLIP = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))


def registered_clip_configs(folder: Path, configs: dict[str, dict]) -> Iterator[None]:
    """Register ``configs`` (name -> open_clip model config) for as long as the generator is suspended (the body
    of a module-scoped fixture), then remove them again."""
    import open_clip

    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")
    yield
    for name in configs:
        open_clip.factory._MODEL_CONFIGS.pop(name, None)


def assert_hessian_backends_agree(model: torch.nn.Module, terms: int) -> None:
    """The Hessian operator of ``model`` (float64, eval mode) spans its trainable parameters only, and the
    double-backward and forward-over-reverse products agree within a float64 bound for ~3 x 12 stages of sums
    of at most ``terms`` terms."""
    from ltsam.hessian.operator import HessianOperator

    batches = [(torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.arange(6) % 10)]
    ops = [HessianOperator(model, torch.nn.functional.cross_entropy, batches, backend=b)
           for b in ("double_backward", "forward_over_reverse")]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert ops[0].dim == sum(p.numel() for p in trainable) < sum(p.numel() for p in model.parameters())
    v = torch.randn(ops[0].dim, dtype=torch.float64)
    hv, hv_fwd = (op.matvec(v) for op in ops)
    assert hv.abs().max() > 0
    assert torch.allclose(hv, hv_fwd, rtol=0, atol=rtol(torch.float64, terms, 36) * float(hv.abs().max()))


def save_weights(state: dict[str, torch.Tensor], path: Path) -> Path:
    """``state`` as a ``--pretrained`` file: ``torch.save`` for .pt, safetensors for .safetensors."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path
