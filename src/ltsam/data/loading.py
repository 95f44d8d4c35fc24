"""Loading a long-tailed data set by name: the request checked, the registered loader called, and the
configuration of a run turned into that request (``load_data``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import ltsam.data.builtin  # noqa: F401  (registers the data sets ltsam ships)
from ltsam.data.catalog import DATASETS, DataRequest
from ltsam.data.lt_data import InMemoryLTData, LTData, StreamingLTData
from ltsam.data.profiles import lt_counts
from ltsam.data.validation import check_request
from ltsam.errors import UserError

if TYPE_CHECKING:
    from ltsam.config import TrainConfig


def build_lt_data(dataset: str, data_root: str | Path = "data", imb_type: str = "exp",
                  imb_factor: float = 0.01, *, rand_number: int = 0, download: bool = False,
                  image_size: int | None = None, norm: str | None = None, pad: int | None = None,
                  flip: bool | None = None, train_list: str | None = None,
                  test_list: str | None = None, lt_generator: str = "standard",
                  seed: int = 0, val_per_class: int = 0, val_fraction: float = 0.0,
                  val_list: str | None = None) -> InMemoryLTData | StreamingLTData:
    """Load a registered data set; in-memory sets get the long-tail profile applied to their training part.

    ``val_per_class`` / ``val_fraction`` hold out a validation split (:mod:`ltsam.data.validation`);
    ``val_list`` reads one from a list file (list-file sets only).
    """
    loader = DATASETS.get(dataset)
    imb_type = imb_type.lower()
    if imb_type != "none":
        lt_counts(1, 1, imb_type, imb_factor)  # validate early, before any slow loading
    check_request(val_per_class, val_fraction, val_list)  # the same for the validation split
    if val_list and not DATASETS.entry(dataset).meta.get("streaming"):
        raise UserError(f"--val-list is for list-file data sets (imagenet_lt, inat18), not {dataset}; hold out a "
                        f"validation split with --val-per-class N")
    return loader(DataRequest(root=Path(data_root), imb_type=imb_type, imb_factor=imb_factor, rand_number=rand_number,
                              download=download, image_size=image_size, norm=norm, pad=pad, flip=flip,
                              train_list=train_list, test_list=test_list, lt_generator=lt_generator, seed=seed,
                              val_per_class=val_per_class, val_fraction=val_fraction, val_list=val_list))


def load_data(cfg: TrainConfig) -> LTData:
    """The data set a training configuration describes; a validation split asked for must hold images."""
    data = build_lt_data(cfg.dataset, cfg.data_root, cfg.imb_type, cfg.imb_factor,
                         rand_number=cfg.rand_number, download=cfg.download, image_size=cfg.image_size,
                         norm=cfg.norm, train_list=cfg.train_list,
                         test_list=cfg.test_list, lt_generator=cfg.lt_generator, seed=cfg.seed,
                         val_per_class=cfg.val_per_class, val_fraction=cfg.val_fraction, val_list=cfg.val_list)
    if (cfg.val_per_class or cfg.val_fraction or cfg.val_list) and not getattr(data, "val_size", 0):
        raise UserError(f"--val-per-class/--val-fraction/--val-list: {cfg.dataset} gave no validation images (its "
                        f"loader holds none out, the long-tail profile keeps every image, or the list is empty); "
                        f"drop the flag")
    return data
