"""CIFAR-10/100 from the official python-pickle archives (read and verified by torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ltsam.data.images import ImageSet
from ltsam.errors import UserError

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def load_cifar(name: str, root: str | Path, download: bool = False) -> tuple[ImageSet, ImageSet]:
    """Train and test sets of CIFAR-10 or CIFAR-100 under ``root``.

    ``download`` fetches the official archive and checks its MD5 (torchvision's downloader);
    without it, missing files give an error saying where to put them.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    root = Path(root)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise UserError(
            f"{name} not found under {root}/{FOLDERS[name]}/ ({exc}); put the official python "
            f"pickles there (extract {ARCHIVES[name]}), or pass --download") from None
    except OSError as exc:
        raise UserError(f"could not download {name} into {root}: {exc}; download "
                        f"{ARCHIVES[name]} by hand and extract it there") from None

    def to_set(ds) -> ImageSet:
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return ImageSet(images, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes))

    return to_set(train), to_set(test)
