"""The data sets ltsam ships, registered in ``DATASETS``: digits, CIFAR-10/100, image folders, ImageNet-LT and
iNaturalist-2018 list files; and ``in_memory_lt``, which a plugin's loader uses to become one of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ltsam.data.catalog import DATASETS, DataRequest
from ltsam.data.images import ImageSet
from ltsam.data.listfile import INDEX_SPLITS
from ltsam.data.lt_data import InMemoryLTData, StreamingLTData
from ltsam.data.profiles import profile_indices
from ltsam.data.validation import complement, describe, draw_validation, val_count
from ltsam.errors import UserError

# Normalisation constants: the reference's CIFAR values (also used for CIFAR-100), ImageNet's,
# and the digits' own pixel statistics.
NORMS = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inat": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
    "digits": ((0.3051,), (0.3770,)),
}


# ``none``: pixels handed over in [0, 1], for models that normalise their own input (pretrained backbones).
NO_NORM = "none"


def _norm(name: str, train: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    if name == NO_NORM:
        channels = int(train.images.shape[1])
        return torch.zeros(channels), torch.ones(channels)
    if name == "data":
        x = train.images.double() / 255.0
        return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).float()
    if name not in NORMS:
        raise UserError(f"unknown --norm {name!r}; choose one of {', '.join([*NORMS, 'data', NO_NORM])}")
    mean, std = NORMS[name]
    if len(mean) != train.images.shape[1]:
        raise UserError(f"--norm {name} is for {len(mean)}-channel images, these have "
                        f"{train.images.shape[1]}; use --norm data")
    return torch.tensor(mean), torch.tensor(std)


def in_memory_lt(name: str, full: ImageSet, test: ImageSet, req: DataRequest, *, norm: str, pad: int,
                 flip: bool) -> InMemoryLTData:
    """A balanced (or already long-tailed) in-memory set with the request's long-tail profile applied.

    ``norm``, ``pad`` and ``flip`` are the set's own defaults; the request's values win.
    A validation split, if asked for, comes from the images the profile leaves out, so the training
    set is the same with or without it.
    """
    classes = list(full.classes)
    c = len(classes)
    targets = full.targets.numpy()
    keep = profile_indices(targets, c, req.imb_type, req.imb_factor, req.rand_number,
                           generator=req.lt_generator, seed=req.seed)
    train = full.subset(keep)
    n = val_count(req.val_per_class, req.val_fraction, full.class_counts(c))
    val, note = None, ""
    if n:
        val = full.subset(draw_validation(targets, complement(len(full), keep), c, n, req.rand_number))
        note = describe(n, val.class_counts(c), classes, "discarded")
    return _finish(name, train, test, classes, train.class_counts(c), req, norm=norm, pad=pad, flip=flip, val=val,
                   val_note=note)


def _finish(name: str, train: ImageSet, test: ImageSet, classes: list[str], counts: list[int], req: DataRequest, *,
            norm: str, pad: int, flip: bool, val: ImageSet | None = None, val_note: str = "") -> InMemoryLTData:
    if min(counts) == 0:
        empty = [classes[c] for c, n in enumerate(counts) if n == 0]
        raise UserError(f"classes with no training images after the imbalance profile: "
                        f"{', '.join(empty[:5])}; raise --imb-factor or add images")
    mean, std = _norm(req.norm or norm, train)
    return InMemoryLTData(name=name, train=train, test=test, classes=list(classes), cls_num_list=counts, mean=mean,
                          std=std, pad=pad if req.pad is None else req.pad, flip=flip if req.flip is None else req.flip,
                          val=val, val_note=val_note)


@DATASETS.register("digits", help="bundled 8x8 digits (offline)", native_epochs=200,
                   defaults=dict(arch="small_cnn", loss="ldam", train_rule="drw", optimizer="sam", rho=0.05,
                                 imb_factor=0.1, epochs=30, batch_size=32, lr=0.05, wd=5e-4))
def _digits(req: DataRequest) -> InMemoryLTData:
    from ltsam.data.digits import load_digits_split

    full, test = load_digits_split()
    return in_memory_lt("digits", full, test, req, norm="digits", pad=1, flip=False)


def _cifar(name: str) -> Callable[[DataRequest], InMemoryLTData]:
    def load(req: DataRequest) -> InMemoryLTData:
        from ltsam.data.cifar import load_cifar

        full, test = load_cifar(name, req.root, req.download)
        return in_memory_lt(name, full, test, req, norm="cifar", pad=4, flip=True)

    return load


DATASETS.add("cifar10", _cifar("cifar10"), help="CIFAR-10 pickles", native_epochs=200, defaults=dict(arch="resnet32"),
             needs_root=True)
DATASETS.add("cifar100", _cifar("cifar100"), help="CIFAR-100 pickles", native_epochs=200,
             defaults=dict(arch="resnet32"), needs_root=True)


@DATASETS.register("folder", help="ROOT/train/<class>/*, ROOT/test/<class>/*", native_epochs=200,
                   defaults=dict(arch="resnet32"), needs_root=True)
def _folder(req: DataRequest) -> InMemoryLTData:
    train, test, classes, counts, val, note = _load_folder(req)
    return _finish("folder", train, test, classes, counts, req, norm="cifar" if train.images.shape[1] == 3 else "data",
                   pad=4, flip=True, val=val, val_note=note)


def _list_files(name: str) -> Callable[[DataRequest], StreamingLTData]:
    def load(req: DataRequest) -> StreamingLTData:
        return _load_list_dataset(name, req.root, req.image_size or 224, req.norm, train_list=req.train_list,
                                  test_list=req.test_list, req=req)

    return load


# The reference's ImageNet-LT / iNaturalist-2018 scripts: ResNet-50, 90 epochs, cosine LR.
_LARGE = dict(arch="resnet50", epochs=90, batch_size=256, lr_schedule="cosine", workers=4)
DATASETS.add("imagenet_lt", _list_files("imagenet_lt"), help="ImageNet-LT list files", native_epochs=90,
             aliases=("imagenet",),
             defaults=_LARGE, index_split=INDEX_SPLITS["imagenet_lt"], streaming=True, needs_root=True)
DATASETS.add("inat18", _list_files("inat18"), help="iNaturalist-2018 list files", native_epochs=90,
             aliases=("inat_18",),
             defaults=_LARGE, index_split=INDEX_SPLITS["inat18"], streaming=True, needs_root=True)


def _load_list_dataset(dataset: str, root: Path, image_size: int, norm: str | None, *,
                       train_list: str | None, test_list: str | None, req: DataRequest | None = None
                       ) -> StreamingLTData:
    from ltsam.data.listfile import LIST_FILES, frequency_order, read_list, remap

    if not root.is_dir():
        raise UserError(f"--data-root {root} does not exist; point it at the folder the list files' "
                        f"image paths are relative to")
    default_train, default_test = LIST_FILES[dataset]
    train_file = Path(train_list) if train_list else root / default_train
    test_file = Path(test_list) if test_list else root / default_test
    train = read_list(train_file, root)
    test = read_list(test_file, root)
    mapping, counts = frequency_order(train.labels)
    train_labels = torch.from_numpy(remap(train, mapping, train_file))
    test_labels = torch.from_numpy(remap(test, mapping, test_file))
    order = torch.argsort(torch.from_numpy(mapping))  # new label -> original id
    classes = [str(int(old)) for old in order]
    norm_name = norm or ("imagenet" if dataset == "imagenet_lt" else "inat")
    mean: tuple[float, ...]
    std: tuple[float, ...]
    if norm_name == NO_NORM:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif norm_name not in NORMS or len(NORMS[norm_name][0]) != 3:
        raise UserError(f"--norm {norm_name!r} does not apply to {dataset}; use imagenet or inat")
    else:
        mean, std = NORMS[norm_name]
    data = StreamingLTData(name=dataset, train_paths=train.paths, train_labels=train_labels, test_paths=test.paths,
                           test_labels=test_labels, classes=classes, cls_num_list=counts, mean=mean, std=std,
                           image_size=image_size, train_origins=train.origins, test_origins=test.origins)
    n = val_count(req.val_per_class, req.val_fraction, counts) if req is not None else 0
    if n:  # held out of the training list; the label order stays the full list's
        assert req is not None  # n is 0 without a request
        held = draw_validation(train_labels.numpy(), torch.arange(len(train_labels)).numpy(), len(classes), n,
                               req.rand_number, keep_one=True)
        rest = complement(len(train_labels), held)
        data.val_paths, data.val_labels = [train.paths[i] for i in held], train_labels[torch.from_numpy(held)]
        data.val_origins = [train.origins[i] for i in held]
        data.train_paths, data.train_labels = [train.paths[i] for i in rest], train_labels[torch.from_numpy(rest)]
        data.train_origins = [train.origins[i] for i in rest]
        data.cls_num_list = torch.bincount(data.train_labels, minlength=len(classes)).tolist()
        data.val_note = describe(n, data.val_cls_num_list, classes, "train")
    elif req is not None and req.val_list:
        attach_val_list(data, Path(req.val_list), root, mapping)
    return data


def attach_val_list(data: StreamingLTData, val_file: Path, root: Path, mapping: Any = None) -> None:
    """Validation images from a list file (ImageNet-LT's ``ImageNet_LT_val.txt``), labelled in the training
    list's order; the training images stay as they are. ``mapping`` (original label -> training label) is
    rebuilt from ``data.classes`` when not given."""
    import numpy as np

    from ltsam.data.listfile import read_list, remap

    if mapping is None:
        mapping = np.empty(len(data.classes), dtype=np.int64)
        for new, old in enumerate(data.classes):
            mapping[int(old)] = new
    samples = read_list(val_file, root)
    labels = remap(samples, mapping, val_file)  # every label 0..C-1 is a training class (frequency_order)
    data.val_paths, data.val_labels = list(samples.paths), torch.from_numpy(np.asarray(labels, dtype=np.int64))
    data.val_origins = samples.origins
    data.val_note = (f"validation: {len(samples.paths)} images from {val_file} "
                     f"({len(set(labels.tolist()))} classes)")


def _load_folder(req: DataRequest) -> tuple[ImageSet, ImageSet, list[str], list[int], ImageSet | None, str]:
    """(train, test, classes, counts, validation set or None, what was held out). A validation split is
    held out of ``train/`` before the profile is drawn from what is left."""
    import numpy as np

    from ltsam.data.folder import decode_images, scan_split, test_split_dir

    root = req.root
    if not root.is_dir():
        raise UserError(f"--data-root {root} does not exist; point it at a folder holding "
                        f"train/<class>/ and test/<class>/ image folders")
    classes, paths, labels = scan_split(root / "train")
    c = len(classes)
    labels_t = torch.from_numpy(labels)
    n = val_count(req.val_per_class, req.val_fraction, np.bincount(labels, minlength=c).tolist())
    held = (draw_validation(labels, np.arange(len(labels)), c, n, req.rand_number, keep_one=True) if n
            else np.empty(0, dtype=np.int64))
    rest = complement(len(labels), np.asarray(held, dtype=np.int64))
    keep = rest[profile_indices(labels[rest], c, req.imb_type, req.imb_factor, req.rand_number,
                                generator=req.lt_generator, seed=req.seed)]
    train_images = decode_images([paths[i] for i in keep], req.image_size)
    size = train_images.shape[-1]
    _, test_paths, test_labels = scan_split(test_split_dir(root), classes)
    test_images = decode_images(test_paths, size)
    train = ImageSet(train_images, labels_t[torch.from_numpy(keep)], classes)
    test = ImageSet(test_images, torch.from_numpy(test_labels), classes)
    val, note = None, ""
    if n:
        val = ImageSet(decode_images([paths[i] for i in held], size), labels_t[torch.from_numpy(held)], classes)
        note = describe(n, val.class_counts(c), classes, "train")
    return train, test, classes, train.class_counts(c), val, note
