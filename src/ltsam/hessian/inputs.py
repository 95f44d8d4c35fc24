"""What ``ltsam hessian`` analyses for a trained run: the classes, the images of a split, the loss, and where
the results go by default."""

from __future__ import annotations

from pathlib import Path

import torch

from ltsam.errors import UserError
from ltsam.registry import Settings

# The epoch at which a train rule's class weights are taken: past every switch (DRW's re-weighted phase).
FINAL_PHASE = 10**9


def parse_classes(text: str, num_classes: int) -> list[int]:
    if text == "all":
        return list(range(num_classes))
    try:
        chosen = sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        raise UserError(f"--classes takes 'all' or a comma-separated list of class indices, got {text!r}") from None
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad or not chosen:
        raise UserError(f"--classes {text}: indices must lie in 0..{num_classes - 1}")
    return chosen


# List-file sets are decoded into memory for the analysis; without --max-per-class this many per class.
LIST_FILE_PER_CLASS = 20


def hessian_inputs(data, split: str, augment: bool, seed: int, max_per_class: int | None,
                   classes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised inputs and targets of one split; ``augment`` applies one seeded draw of the
    training augmentation; ``max_per_class`` keeps the first N images of each class.

    List-file sets (ImageNet-LT, iNaturalist) decode only the images analysed: the first
    ``max_per_class`` (default ``LIST_FILE_PER_CLASS``) of each of ``classes`` (default all).
    """
    from ltsam.data.augment import crop_flip, draw_crop_flip, normalize

    if data.streaming:
        per_class = LIST_FILE_PER_CLASS if max_per_class is None else max_per_class
        labels = data.labels(split)
        chosen = range(data.num_classes) if classes is None else classes
        keep = torch.cat([torch.where(labels == c)[0][:per_class] for c in chosen])
        return data.decode(split, keep.tolist(), augment, seed)
    images, targets = (data.train.images, data.train.targets) if split == "train" else (data.test.images,
                                                                                        data.test.targets)
    if max_per_class is not None:
        keep = torch.cat([torch.where(targets == c)[0][:max_per_class] for c in range(data.num_classes)])
        images, targets = images[keep], targets[keep]
    if augment:
        g = torch.Generator().manual_seed(seed)
        rows, cols, flips = draw_crop_flip(len(targets), data.pad, data.flip, g)
        images = crop_flip(images, rows, cols, flips, data.pad)
    return normalize(images, data.mean, data.std), targets


def hessian_loss(name: str, rule: str, cls_num_list: list[int], config: Settings | None = None) -> torch.nn.Module:
    """The loss whose Hessian is taken: CE (default) or any registered loss, with the run's options
    (``config``), weighted as the train rule ``rule`` weights its last phase (``none``: unweighted; ``drw``:
    the effective-number weights it switches to).

    With single-class batches the weighted-mean normalisation cancels the weights exactly (the
    reference's DRW variant gives the same Hessian); they matter for the whole-data spectrum.
    """
    from ltsam.losses import build_loss
    from ltsam.rules import TRAIN_RULES, build_rule

    # The rule's switch epochs (DRW's drw_epoch) at 0: its last phase throughout, whatever the run trained with.
    switches = {o.keyword: 0 for o in TRAIN_RULES.entry(rule).options if o.name.endswith("_epoch")}
    weights = build_rule(rule, config, **switches).class_weights(cls_num_list, FINAL_PHASE)
    return build_loss(name, cls_num_list, weights, config=config)


def hessian_dir(run_dir: Path, split: str, which: str) -> Path:
    """Where ``ltsam hessian`` writes by default: ``RUN/hessian/<split>`` for the last checkpoint (the
    default), ``RUN/hessian/<split>_<which>`` for another, so that two checkpoints never share a folder."""
    return run_dir / "hessian" / (split if which == "last" else f"{split}_{which}")
