"""Second stages on a finished run (``ltsam finetune``): cRT, LWS, tau-normalisation, weight balancing.

``STAGES`` holds one class per stage (``ltsam.finetune.stages``); ``StageRunner`` runs one into its own
run folder (``ltsam.finetune.runner``); the heads they install live in ``ltsam.finetune.heads``.
"""

from ltsam.finetune import tau_norm as _tau_norm  # noqa: F401  (registers tau-norm)
from ltsam.finetune.stages import STAGES, Stage, build_stage

__all__ = ["STAGES", "Stage", "build_stage"]
