"""Which runs can train together as one pack: the settings members may differ in, the key that the rest
forms, and the one-line refusals for what does not pack.

Members may differ in their seeds (``seed``, ``rand_number``), loss and its options, train rule and its
options, SAM's radius and its schedule, and validation split. Everything else shapes the computation
(architecture and head, data set and image size, batch size, epochs, learning rate and its schedule, the
optimizer step, precision, device) and must be equal; the data must give every member the same number of
training batches and validation images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ltsam.argtypes import flag_name
from ltsam.errors import UserError
from ltsam.losses import LOSSES
from ltsam.models import MODELS
from ltsam.optim import STEPS
from ltsam.optim.frequency import OPTIONS as FREQUENCY_OPTIONS
from ltsam.rules import TRAIN_RULES

if TYPE_CHECKING:
    from ltsam.config import TrainConfig

OWN_SETTINGS = frozenset({
    "seed", "rand_number", "loss", "train_rule", "rho", "rho_schedule", "min_rho", "max_rho", "rho_steps",
    "val_per_class", "val_fraction", "val_list", "out", "recipe", "wandb", "plugins", "pack",
})
"""Configuration fields each member has its own of (besides its loss's and train rule's options)."""


def own_keys() -> frozenset[str]:
    """Every configuration key a member may set for itself: :data:`OWN_SETTINGS` and the options of every
    registered loss and train rule."""
    return OWN_SETTINGS | {o.name for o in LOSSES.options()} | {o.name for o in TRAIN_RULES.options()}


def step_name(cfg: TrainConfig) -> str:
    """The step a run takes: its ``--optimizer``, or SGD where its radius is 0 throughout."""
    return cfg.optimizer if cfg.uses_sam else "sgd"


def pack_key(cfg: TrainConfig) -> str:
    """What runs of one pack share, as one string: equal keys pack together."""
    own = own_keys()
    shared = {k: v for k, v in cfg.to_dict().items() if k not in own}
    shared["optimizer"] = step_name(cfg)
    return json.dumps(shared, sort_keys=True, default=str)


def refuse_unpackable(cfg: TrainConfig) -> None:
    """One line for a run that cannot be a pack's member at all, naming what to change."""
    if cfg.method != "erm":
        raise UserError(f"--method {cfg.method} does not pack yet: packs train the losses and rules of `--method "
                        f"erm`; train the {cfg.method} runs one by one (without --seeds or --pack)")
    if getattr(cfg, "accumulate", 1) > 1:
        raise UserError(f"--accumulate {cfg.accumulate} does not pack yet (a pack's step takes every member's whole "
                        "batch); train the runs one by one, or drop --accumulate")
    if cfg.arch is not None and MODELS.family(cfg.arch) is not None:
        raise UserError(f"--arch {cfg.arch} does not pack yet (a pack builds its members from ltsam's own "
                        f"architectures, without pretrained weights); train the seeds one by one (without --seeds "
                        f"or --pack)")
    name = step_name(cfg)
    if not STEPS.entry(name).meta.get("packs"):
        packing = ", ".join(n for n in STEPS.names() if STEPS.entry(n).meta.get("packs"))
        raise UserError(f"--optimizer {name} does not pack (its ascent is not split per member); packs take "
                        f"{packing} — train {name} runs one by one (without --seeds or --pack)")
    changed = [o.flag for o in FREQUENCY_OPTIONS if getattr(cfg, o.name) != o.default]
    if changed and STEPS.entry(name).obj.perturbs:
        raise UserError(f"{', '.join(changed)} (SAM on some steps only) does not pack: each member would decide "
                        f"its own steps; train these runs one by one (without --seeds or --pack)")
    if cfg.compile:
        raise UserError("--compile does not pack yet: a pack runs its fused model eagerly; leave --compile out (or "
                        "train the runs one by one)")
    if cfg.amp == "fp16":
        raise UserError("--amp fp16 does not pack: one loss scaler would skip every member's step when one "
                        "overflows; use --amp bf16, or train the runs one by one")


def unpackable_reason(cfg: TrainConfig) -> str | None:
    """Why ``cfg`` cannot be a pack's member (:func:`refuse_unpackable`'s line), or None when it can."""
    try:
        refuse_unpackable(cfg)
    except UserError as exc:
        return str(exc)
    return None


def check_pack(cfgs: Sequence[TrainConfig]) -> None:
    """Refuse, in one line, configurations that cannot train as one pack."""
    if not cfgs:
        raise UserError("a pack needs at least one run")
    for cfg in cfgs:
        refuse_unpackable(cfg)
    first = cfgs[0]
    own = own_keys()
    base = first.to_dict()
    for cfg in cfgs[1:]:
        values = cfg.to_dict()
        differ = sorted(k for k in set(base) | set(values) if k not in own and base.get(k) != values.get(k))
        if step_name(cfg) != step_name(first):
            differ.insert(0, "optimizer")
        if differ:
            shown = ", ".join(f"{flag_name(k)} ({_as_json(base.get(k))} / {_as_json(values.get(k))})"
                              for k in differ[:3])
            raise UserError(f"these runs cannot share one pack: they differ in {shown}; a pack's members may "
                            f"differ only in seeds, loss, train rule, rho and validation split — pack them "
                            f"separately (a sweep's --pack groups them for you)")


def check_batches(counts: Sequence[int], what: str) -> None:
    """Members must agree on how many training batches (or validation images) an epoch has."""
    if len(set(counts)) > 1:
        raise UserError(f"these runs cannot share one pack: their {what} differ ({', '.join(map(str, counts))}), "
                        f"so their steps do not line up; give them the same validation split, or pack them "
                        f"separately")


def _as_json(value: Any) -> str:
    """A setting's value in a refusal, as JSON (so that ``null``, a string and a list stand apart)."""
    return json.dumps(value, default=str)
