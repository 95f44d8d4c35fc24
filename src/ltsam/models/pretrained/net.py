"""A pretrained backbone with its own input preprocessing, in front of ltsam's batches.

ltsam's batch sources hand such a model pixels in [0, 1] at the data set's native size (``--norm none``);
the model does what its library's data config asks for, batch-wise on the device: grey images repeated to
its three channels, a resize to its input size (its interpolation, antialiased when shrinking), then its
mean / std. Resizing before or after a per-channel affine normalisation gives the same result (the
interpolation weights sum to one), so this equals the library's resize-then-normalise transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


class PretrainedNet(nn.Module):
    """``net`` (a timm model) behind its preprocessing; ``classifier`` is the head's attribute path in ``net``.

    ``frozen_eval``: the parts that do not train stay in eval mode when the model trains (a linear probe:
    batch-norm statistics and dropout of the frozen backbone are those of the pretrained model).
    ``feature_input`` (``--feature-cache``): a 2-D input is the backbone's cached features (``features``'s
    output), and the model applies its head alone; images (4-D) take the whole model as always.
    """

    def __init__(self, net: nn.Module, classifier: str, input_size: int, interpolation: str,
                 mean: Sequence[float], std: Sequence[float], *, frozen_eval: bool = False,
                 feature_input: bool = False):
        super().__init__()
        self.net = net
        self.classifier = classifier
        self.classifier_paths = ("net." + classifier,)  # ltsam.models.classifier
        self.input_size = int(input_size)
        self.interpolation = _MODES.get(interpolation, "bilinear")
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.frozen_eval = frozen_eval
        self.feature_input = feature_input
        self.feature_dim = int(getattr(net, "num_features", 0))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the network's input: channels, size, normalisation."""
        channels = int(self.mean.shape[1])
        if x.shape[1] == 1 and channels != 1:
            x = x.expand(-1, channels, -1, -1)
        size = self.input_size
        if x.shape[-2:] != (size, size):
            shrink = x.shape[-2] > size or x.shape[-1] > size
            x = F.interpolate(x, size=(size, size), mode=self.interpolation,
                              antialias=shrink and self.interpolation != "nearest",
                              **({} if self.interpolation == "nearest" else {"align_corners": False}))
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input (timm's pre-logits)."""
        net = self.net
        return net.forward_head(net.forward_features(self.preprocess(x)), pre_logits=True)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_input and x.dim() == 2:  # cached features: the head alone
            return self.net.get_submodule(self.classifier)(x)
        return self.net(self.preprocess(x))

    def train(self, mode: bool = True) -> PretrainedNet:
        super().train(mode)
        if mode and self.frozen_eval:
            self.net.eval()
            self.net.get_submodule(self.classifier).train()
        return self
