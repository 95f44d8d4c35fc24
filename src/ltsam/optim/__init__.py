"""The update: one SGD step and one SAM-style step that every method shares (ERM, GLMC, plugins).

A method hands a step its *objective*, a function of the model that runs the forward pass(es) of a
batch and returns ``StepLosses`` (the loss for SAM's ascent, the loss for the descent, the logged
loss, the logits, the per-sample class ids and, for steps that split the loss by class, the per-sample
losses). The step owns backward passes, the perturbation, fp16 loss scaling (skipping an overflowed
step) and the optimizer update; DDP averages gradients in the backward passes. A new SAM variant is one
``Step`` subclass registered in ``STEPS``; the imbalance-aware ones (ImbSAM, Focal-SAM, SSE-SAM, CC-SAM)
are in ``ltsam.optim.imbalance``, the SAM-frequency options in ``ltsam.optim.frequency``.
"""

from ltsam.optim.imbalance import (  # noqa: E402  (registers imbsam, focal_sam, sse_sam, cc_sam)
    CCSAMStep,
    ClassWeightedSAMStep,
    FocalSAMStep,
    ImbSAMStep,
    SSESAMStep,
)
from ltsam.optim.sam import SAM
from ltsam.optim.steps import (
    STEPS,
    SAMStep,
    SGDStep,
    Step,
    StepLosses,
    StepResult,
    StepSettings,
    build_step,
)

__all__ = ["SAM", "STEPS", "CCSAMStep", "ClassWeightedSAMStep", "FocalSAMStep", "ImbSAMStep", "SAMStep", "SGDStep",
           "SSESAMStep", "Step", "StepLosses", "StepResult", "StepSettings",
           "build_step"]
