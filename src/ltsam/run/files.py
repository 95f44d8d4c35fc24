"""Every name ltsam gives a file or folder inside a run folder, in one place."""

from __future__ import annotations

RUN_MARKER = ".ltsam-run"  # written first into every run folder: what makes a folder ltsam's to replace
LOCK_NAME = ".ltsam-lock"  # flock'ed by the process that trains into the folder; holds its pid
CONFIG_NAME = "config.json"  # the run's configuration (a stage run's: the stage, its options and the parent)
METRICS_NAME = "metrics.jsonl"  # one record per epoch
FINAL_NAME = "final.json"  # the summary written at the end (and at a --stop-after)
SWEEP_NAME = "sweep.json"  # tau-normalisation's scores of every tau
DIVERGED_NAME = "diverged.json"  # a pack's member that diverged: the epoch and why (the pack trained on)
FIGURES = ("per_class_accuracy.png", "confusion_matrix.png")

# A run folder's checkpoints (``--which``): the final epoch's, the best test top-1's (the paper's protocol) and,
# with a validation split, the best validation top-1's (model selection on held-out images).
CHECKPOINTS = ("best", "last", "best_val")
LAST, BEST, BEST_VAL = "last.pt", "best.pt", "best_val.pt"

TENSORBOARD_DIR, WANDB_DIR, HESSIAN_DIR = "tensorboard", "wandb", "hessian"

# Everything ltsam writes into a run folder; --overwrite removes these and nothing else.
OWN_FILES = frozenset({RUN_MARKER, LOCK_NAME, CONFIG_NAME, METRICS_NAME, FINAL_NAME, *FIGURES, SWEEP_NAME,
                       DIVERGED_NAME, *(f"{name}.pt" for name in CHECKPOINTS)})
OWN_FOLDERS = frozenset({TENSORBOARD_DIR, WANDB_DIR, HESSIAN_DIR})


def checkpoint_file(which: str) -> str:
    """The file name of the checkpoint ``which`` (one of :data:`CHECKPOINTS`)."""
    return f"{which}.pt"
