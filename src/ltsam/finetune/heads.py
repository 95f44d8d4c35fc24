"""The classifier of a trained model, and the heads the second stages put in its place.

A model's classifier is the first of its ``classifier_paths`` (``ltsam.models.classifier``): ``linear`` (ltsam's
CIFAR ResNets and small CNN), ``net.fc`` (the torchvision ResNets) or ``fc_cb`` (GLMC's re-balanced head, the one
inference uses).
Every head here folds back into a plain ``nn.Linear``, so a stage's output is the parent's
architecture with new classifier weights (``ltsam eval`` and ``ltsam hessian`` read it as any run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from ltsam.errors import UserError
from ltsam.models.classifier import classifier_paths
from ltsam.models.normed_linear import NormedLinear


def get_head(model: nn.Module, path: str) -> nn.Linear:
    """The classifier at ``path`` (``check_head`` has made sure it is a Linear or cosine head)."""
    return cast(nn.Linear, get_module(model, path))


def get_module(model: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        model = getattr(model, name)
    return model


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    *parents, last = path.split(".")
    for name in parents:
        model = getattr(model, name)
    setattr(model, last, module)


def classifier_path(model: nn.Module) -> str:
    """The attribute path of the model's prediction head (a Linear or cosine head)."""
    path = classifier_paths(model)[0]
    try:
        module = get_module(model, path)
    except AttributeError:
        module = None
    if not isinstance(module, (nn.Linear, NormedLinear)):
        raise UserError(f"this {type(model).__name__} has no linear classifier at .{path} (its classifier_paths); "
                        f"second stages need a linear classifier head")
    return path


def head_shape(head: nn.Linear | NormedLinear) -> tuple[int, int]:
    """(feature dimension, classes) of a Linear or cosine head."""
    return int(head.in_features), int(head.out_features)


@contextlib.contextmanager
def swapped(model: nn.Module, path: str, head: nn.Module) -> Iterator[nn.Module]:
    """``model`` with ``head`` as its classifier for the duration of the block."""
    old = get_module(model, path)
    set_module(model, path, head)
    try:
        yield model
    finally:
        set_module(model, path, old)


class ScaledLinear(nn.Module):
    """LWS (Kang et al., ICLR 2020): z_k = f_k (w_k . x + b_k), w and b frozen, the scales f learned (from 1)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(base.out_features, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scales

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """The same map as one Linear: weight f_k w_k, bias f_k b_k."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        out.weight.copy_(self.base.weight * self.scales[:, None])
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias * self.scales)
        return out


@torch.no_grad()
def tau_normalized(base: nn.Linear, tau: float) -> nn.Linear:
    """tau-normalised classifier (Kang et al., ICLR 2020): w_k / ||w_k||_2 ** tau, no bias.

    As the authors' ``tau_norm.py`` does, the logits are w_k . x / ||w_k||^tau: the bias is dropped (kept as
    zeros, so the model keeps its parameter names; tau = 0 therefore differs from a parent whose head has a bias).
    """
    norms = base.weight.norm(dim=1)
    if not bool((norms > 0).all()):
        raise UserError("a class vector of the classifier is all zero; tau-normalisation cannot divide by its norm")
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
    out = out.to(base.weight.device, base.weight.dtype)
    out.weight.copy_(base.weight / norms.pow(tau)[:, None])
    if out.bias is not None:
        out.bias.zero_()
    return out


class MaxNorm:
    """MaxNorm by projection (Alshammari et al., CVPR 2022): every class vector w_k kept within the ball
    ||w_k|| <= cap, cap = min_k ||w_k|| + thresh (max_k ||w_k|| - min_k ||w_k||) of the weights given here
    (the parent's). ``project`` rescales the rows above the cap to it; the others stay as they are."""

    def __init__(self, weight: torch.Tensor, thresh: float = 0.1):
        norms = weight.detach().norm(dim=1)
        self.thresh = thresh
        self.cap = float(norms.min() + thresh * (norms.max() - norms.min()))

    @torch.no_grad()
    def project(self, weight: torch.Tensor) -> None:
        norms = weight.norm(dim=1)
        over = norms > self.cap
        if bool(over.any()):
            weight[over] *= (self.cap / norms[over])[:, None]
