"""GLMC (Global and Local Mixture Consistency cumulative learning, CVPR 2023) with optional SAM, as the reference.

- :mod:`ltsam.glmc.weights`: label weights, sampler weights, the cumulative weight alpha;
- :mod:`ltsam.glmc.mixing`: MixUp, CutMix (box, images, soft targets), the mixing coefficient;
- :mod:`ltsam.glmc.heads`: ``GLMCNet`` (backbone + fc / fc_cb / projection / contrast heads), the
  reference's CIFAR ResNet-34 and wide ResNet-32;
- :mod:`ltsam.glmc.objective`: the losses, the mixed batches and their objective for an ``ltsam.optim`` step;
- :mod:`ltsam.glmc.source`: paired (instance, weighted) batches with two augmented views each;
- :mod:`ltsam.glmc.transforms`: GLMC's two-view ImageNet augmentation for list-file images.
"""

from ltsam.glmc.heads import (
    GLMC_ARCHS,
    GLMCNet,
    build_glmc_model,
    default_proj_dim,
    glmc_resnet32_wide,
    glmc_resnet34_cifar,
    wrap_backbone,
)
from ltsam.glmc.mixing import box_from_centre, cutmix, cutmix_box, mix_targets, mixup, sample_lambda
from ltsam.glmc.objective import (
    GLMCLosses,
    GLMCUpdate,
    MixedBatch,
    glmc_losses,
    mixing_generator,
    negative_cosine,
    soft_cross_entropy,
)
from ltsam.glmc.source import GLMCBatchSource, GLMCStreamSource
from ltsam.glmc.transforms import RandomGaussianBlur, TwoViews, glmc_train_transform
from ltsam.glmc.weights import cumulative_alpha, label_weights, resample_weights, sample_weights

__all__ = [
    "GLMC_ARCHS", "GLMCBatchSource", "GLMCLosses", "GLMCStreamSource", "RandomGaussianBlur", "TwoViews",
    "glmc_train_transform", "GLMCNet", "GLMCUpdate", "MixedBatch", "box_from_centre",
    "build_glmc_model",
    "cumulative_alpha", "cutmix", "cutmix_box", "default_proj_dim", "glmc_losses", "glmc_resnet32_wide",
    "glmc_resnet34_cifar", "label_weights", "mix_targets", "mixing_generator", "mixup", "negative_cosine",
    "resample_weights", "sample_lambda", "sample_weights", "soft_cross_entropy", "wrap_backbone",
]
