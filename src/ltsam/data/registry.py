"""Long-tailed data sets by name: load, apply the imbalance profile, hand out batch sources.

Two kinds share one interface: ``InMemoryLTData`` (digits, CIFAR, image folders: one uint8 tensor
on the training device, batched augmentation) and ``StreamingLTData`` (list-file sets such as
ImageNet-LT and iNaturalist-2018: decoded and augmented in DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltsam.data.images import ImageSet
from ltsam.data.listfile import INDEX_SPLITS
from ltsam.data.profiles import lt_counts, lt_indices
from ltsam.data.validation import check_request, complement, describe, draw_validation, val_count
from ltsam.errors import UserError
from ltsam.registry import Registry


@dataclass
class DataRequest:
    """Everything a data-set loader may use, from the run's configuration."""

    root: Path
    imb_type: str = "exp"
    imb_factor: float = 0.01
    rand_number: int = 0
    download: bool = False
    image_size: int | None = None
    norm: str | None = None
    pad: int | None = None
    flip: bool | None = None
    train_list: str | None = None
    test_list: str | None = None
    lt_generator: str = "standard"
    seed: int = 0
    val_per_class: int = 0  # images per class held out for validation (ltsam.data.validation)
    val_fraction: float = 0.0
    val_list: str | None = None  # list-file sets: a list file of validation images (not held out of training)


DATASETS: Registry[Callable[[DataRequest], Any]] = Registry("data set", "dataset")
"""Data sets by name: ``obj(request: DataRequest) -> InMemoryLTData | StreamingLTData``.

Each entry's ``meta`` holds its defaults: ``defaults`` (config values, e.g. the architecture),
``native_epochs`` (the reference schedule length whose boundaries scale: 200 or 90) and, for the
reference's index-based shot split, ``index_split`` (head/medium/tail boundaries); ``needs_root``: it reads
files under ``--data-root`` (checked before a sweep starts)."""

# Normalisation constants: the reference's CIFAR values (also used for CIFAR-100), ImageNet's,
# and the digits' own pixel statistics.
NORMS = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inat": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
    "digits": ((0.3051,), (0.3770,)),
}

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def _per_sample(class_weights: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor | None:
    return None if class_weights is None else class_weights.double()[targets.long()]


@dataclass
class InMemoryLTData:
    """A long-tailed training set, its balanced test set and how to augment and normalise them."""

    name: str
    train: ImageSet
    test: ImageSet
    classes: list[str]
    cls_num_list: list[int]
    mean: torch.Tensor
    std: torch.Tensor
    pad: int
    flip: bool
    val: ImageSet | None = None  # the held-out validation images (--val-per-class / --val-fraction)
    val_note: str = ""  # what was held out and from where, said at the start of a run

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def val_size(self) -> int:
        return 0 if self.val is None else len(self.val)

    @property
    def val_cls_num_list(self) -> list[int]:
        return [] if self.val is None else self.val.class_counts(self.num_classes)

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)

    def train_source(self, batch_size: int, seed: int, device: torch.device,
                     class_weights: torch.Tensor | None = None, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1):
        from ltsam.data.sources import InMemoryBatchSource

        return InMemoryBatchSource(self.train.images, self.train.targets, batch_size, self.mean, self.std,
                                   self.pad, self.flip, seed, device, _per_sample(class_weights, self.train.targets),
                                   channels_last=channels_last, rank=rank, world=world)

    def test_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        return self._eval_batches(self.test, batch_size, device, channels_last, rank, world)

    def val_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                    workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        """The validation images, as :meth:`test_batches` hands out the test images."""
        if self.val is None:
            raise ValueError("this data set has no validation split (--val-per-class / --val-fraction)")
        return self._eval_batches(self.val, batch_size, device, channels_last, rank, world)

    def _eval_batches(self, split: ImageSet, batch_size: int, device: torch.device, channels_last: bool,
                      rank: int, world: int) -> Batches:
        from ltsam.data.sources import eval_batches

        images, targets = split.images, split.targets
        if world > 1:
            images, targets = images[rank::world], targets[rank::world]
        return eval_batches(images, targets, self.mean, self.std, batch_size, device, channels_last)


LTData = InMemoryLTData  # the in-memory kind is the common case


@dataclass
class StreamingLTData:
    """A list-file data set read from disk batch by batch."""

    name: str
    train_paths: list[Path]
    train_labels: torch.Tensor
    test_paths: list[Path]
    test_labels: torch.Tensor
    classes: list[str]
    cls_num_list: list[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    train_origins: list[str] | None = None  # "list_file:line" per image, named when one cannot be read
    test_origins: list[str] | None = None
    val_paths: list[Path] | None = None  # held out of the training list (--val-per-class / --val-fraction) or
    # read from --val-list
    val_labels: torch.Tensor | None = None
    val_origins: list[str] | None = None
    val_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    in_channels = 3

    def files(self, split: str, transform):
        """The ``train``, ``test`` or ``val`` list as a FileImageDataset with ``transform``."""
        from ltsam.data.streaming import FileImageDataset

        if split == "train":
            return FileImageDataset(self.train_paths, self.train_labels, transform, self.train_origins)
        if split == "val":
            if self.val_paths is None:
                raise ValueError("this data set has no validation split (--val-per-class / --val-fraction)")
            return FileImageDataset(self.val_paths, self.val_labels, transform, self.val_origins)
        return FileImageDataset(self.test_paths, self.test_labels, transform, self.test_origins)

    @property
    def val_size(self) -> int:
        return 0 if self.val_paths is None else len(self.val_paths)

    @property
    def val_cls_num_list(self) -> list[int]:
        if self.val_labels is None:
            return []
        return torch.bincount(self.val_labels, minlength=self.num_classes).tolist()

    @property
    def train_size(self) -> int:
        return len(self.train_paths)

    @property
    def test_size(self) -> int:
        return len(self.test_paths)

    def train_source(self, batch_size: int, seed: int, device: torch.device,
                     class_weights: torch.Tensor | None = None, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1):
        from ltsam.data.streaming import EpochSampler, LoaderBatchSource, train_transform

        ds = self.files("train", train_transform(self.image_size, self.mean, self.std))
        sampler = EpochSampler(len(ds), seed, _per_sample(class_weights, self.train_labels), rank, world)
        return LoaderBatchSource(ds, batch_size, sampler, workers, device, channels_last)

    def labels(self, split: str) -> torch.Tensor:
        """The (re-mapped) labels of the ``train`` or ``test`` list."""
        return self.train_labels if split == "train" else self.test_labels

    def decode(self, split: str, indices: list[int], augment: bool = False, seed: int = 0,
               workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at ``indices`` of one list as one normalised float tensor, with their labels.

        The test transform (resize, centre crop), or with ``augment`` one draw of the training
        augmentation seeded by ``seed`` (for the Hessian analysis, which needs fixed inputs).
        """
        from torch.utils.data import DataLoader, Subset

        from ltsam.data.streaming import test_transform, train_transform, worker_errors

        make = train_transform if augment else test_transform
        ds = Subset(self.files(split, make(self.image_size, self.mean, self.std)), list(indices))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loader = DataLoader(ds, batch_size=64, num_workers=workers,
                                generator=torch.Generator().manual_seed(seed))
            empty = ((torch.empty(0, 3, self.image_size, self.image_size),), (torch.empty(0, dtype=torch.long),))
            xs, ys = zip(*worker_errors(loader)) if len(ds) else empty
        return torch.cat(xs), torch.cat(ys)

    def test_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        return self._eval_batches("test", batch_size, device, workers, rank, world)

    def val_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                    workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        """The held-out validation images, with the test transform."""
        return self._eval_batches("val", batch_size, device, workers, rank, world)

    def _eval_batches(self, split: str, batch_size: int, device: torch.device, workers: int, rank: int,
                      world: int) -> Batches:
        from ltsam.data.streaming import loader_batches, test_transform

        ds = self.files(split, test_transform(self.image_size, self.mean, self.std))
        indices = range(rank, len(ds), world) if world > 1 else None
        return loader_batches(ds, batch_size, workers, device, indices)


def select(targets, counts, rand_number: int, generator: str, seed: int):
    """Indices kept by the LT profile: the reference's procedure, or GLMC's (``--lt-generator glmc``)."""
    if generator == "glmc":
        from ltsam.data.profiles import lt_indices_glmc

        return lt_indices_glmc(targets, counts, seed)
    return lt_indices(targets, counts, rand_number)


def profile_indices(targets, num_classes: int, imb_type: str, imb_factor: float, rand_number: int,
                    generator: str = "standard", seed: int = 0):
    """Indices the LT profile keeps: n_max = largest class, counts capped at what a class has.

    For a balanced source (CIFAR) n_max = len / C exactly as the reference computes it; ``none``
    keeps every image (a user's data that is already long-tailed stays as it is).
    """
    import numpy as np

    targets = np.asarray(targets, dtype=np.int64)
    available = np.bincount(targets, minlength=num_classes).tolist()
    if imb_type == "none":
        counts = available
    else:
        counts = lt_counts(max(available), num_classes, imb_type, imb_factor)
        counts = [min(c, a) for c, a in zip(counts, available)]
    return select(targets, counts, rand_number, generator, seed)


def apply_profile(full_train: ImageSet, num_classes: int, imb_type: str, imb_factor: float,
                  rand_number: int, generator: str = "standard", seed: int = 0) -> tuple[ImageSet, list[int]]:
    """The LT subset of ``full_train`` (:func:`profile_indices`) and its class counts."""
    keep = profile_indices(full_train.targets.numpy(), num_classes, imb_type, imb_factor, rand_number, generator,
                           seed)
    kept = full_train.subset(keep)
    return kept, kept.class_counts(num_classes)


def _norm(name: str, train: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "data":
        x = train.images.double() / 255.0
        return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).float()
    if name not in NORMS:
        raise UserError(f"unknown --norm {name!r}; choose one of {', '.join([*NORMS, 'data'])}")
    mean, std = NORMS[name]
    if len(mean) != train.images.shape[1]:
        raise UserError(f"--norm {name} is for {len(mean)}-channel images, these have "
                        f"{train.images.shape[1]}; use --norm data")
    return torch.tensor(mean), torch.tensor(std)


def native_epochs(dataset: str) -> int:
    """Length of the reference schedule whose boundaries ltsam scales: 90 (ImageNet-LT, iNat) or 200."""
    return DATASETS.entry(dataset).meta.get("native_epochs", 200) if dataset in DATASETS else 200


def build_lt_data(dataset: str, data_root: str | Path = "data", imb_type: str = "exp",
                  imb_factor: float = 0.01, rand_number: int = 0, download: bool = False,
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
    return loader(DataRequest(Path(data_root), imb_type, imb_factor, rand_number, download, image_size, norm, pad,
                              flip, train_list, test_list, lt_generator, seed, val_per_class, val_fraction, val_list))


def load_data(cfg: Any) -> InMemoryLTData | StreamingLTData:
    """The data set a training configuration describes; a validation split asked for must hold images."""
    data = build_lt_data(cfg.dataset, cfg.data_root, cfg.imb_type, cfg.imb_factor, cfg.rand_number,
                         cfg.download, cfg.image_size, cfg.norm, train_list=cfg.train_list,
                         test_list=cfg.test_list, lt_generator=cfg.lt_generator, seed=cfg.seed,
                         val_per_class=cfg.val_per_class, val_fraction=cfg.val_fraction, val_list=cfg.val_list)
    if (cfg.val_per_class or cfg.val_fraction or cfg.val_list) and not getattr(data, "val_size", 0):
        raise UserError(f"--val-per-class/--val-fraction/--val-list: {cfg.dataset} gave no validation images (its "
                        f"loader holds none out, the long-tail profile keeps every image, or the list is empty); "
                        f"drop the flag")
    return data


def in_memory_lt(name: str, full: ImageSet, test: ImageSet, req: DataRequest, norm: str, pad: int,
                 flip: bool) -> InMemoryLTData:
    """A balanced (or already long-tailed) in-memory set with the request's long-tail profile applied.

    ``norm``, ``pad`` and ``flip`` are the set's own defaults; the request's values win.
    A validation split, if asked for, comes from the images the profile leaves out, so the training
    set is the same with or without it.
    """
    classes = list(full.classes)
    c = len(classes)
    targets = full.targets.numpy()
    keep = profile_indices(targets, c, req.imb_type, req.imb_factor, req.rand_number, req.lt_generator, req.seed)
    train = full.subset(keep)
    n = val_count(req.val_per_class, req.val_fraction, full.class_counts(c))
    val, note = None, ""
    if n:
        val = full.subset(draw_validation(targets, complement(len(full), keep), c, n, req.rand_number))
        note = describe(n, val.class_counts(c), classes, "discarded")
    return _finish(name, train, test, classes, train.class_counts(c), req, norm, pad, flip, val, note)


def _finish(name: str, train: ImageSet, test: ImageSet, classes: list[str], counts: list[int], req: DataRequest,
            norm: str, pad: int, flip: bool, val: ImageSet | None = None, val_note: str = "") -> InMemoryLTData:
    if min(counts) == 0:
        empty = [classes[c] for c, n in enumerate(counts) if n == 0]
        raise UserError(f"classes with no training images after the imbalance profile: "
                        f"{', '.join(empty[:5])}; raise --imb-factor or add images")
    mean, std = _norm(req.norm or norm, train)
    return InMemoryLTData(name, train, test, list(classes), counts, mean, std,
                          pad if req.pad is None else req.pad, flip if req.flip is None else req.flip, val, val_note)


@DATASETS.register("digits", help="bundled 8x8 digits (offline)", native_epochs=200,
                   defaults=dict(arch="small_cnn", loss="ldam", train_rule="drw", optimizer="sam", rho=0.05,
                                 imb_factor=0.1, epochs=30, batch_size=32, lr=0.05, wd=5e-4))
def _digits(req: DataRequest) -> InMemoryLTData:
    from ltsam.data.digits import load_digits_split

    full, test = load_digits_split()
    return in_memory_lt("digits", full, test, req, "digits", 1, False)


def _cifar(name: str) -> Callable[[DataRequest], InMemoryLTData]:
    def load(req: DataRequest) -> InMemoryLTData:
        from ltsam.data.cifar import load_cifar

        full, test = load_cifar(name, req.root, req.download)
        return in_memory_lt(name, full, test, req, "cifar", 4, True)

    return load


DATASETS.add("cifar10", _cifar("cifar10"), help="CIFAR-10 pickles", native_epochs=200, defaults=dict(arch="resnet32"),
             needs_root=True)
DATASETS.add("cifar100", _cifar("cifar100"), help="CIFAR-100 pickles", native_epochs=200,
             defaults=dict(arch="resnet32"), needs_root=True)


@DATASETS.register("folder", help="ROOT/train/<class>/*, ROOT/test/<class>/*", native_epochs=200,
                   defaults=dict(arch="resnet32"), needs_root=True)
def _folder(req: DataRequest) -> InMemoryLTData:
    train, test, classes, counts, val, note = _load_folder(req)
    return _finish("folder", train, test, classes, counts, req, "cifar" if train.images.shape[1] == 3 else "data",
                   4, True, val, note)


def _list_files(name: str) -> Callable[[DataRequest], StreamingLTData]:
    def load(req: DataRequest) -> StreamingLTData:
        return _load_list_dataset(name, req.root, req.image_size or 224, req.norm, req.train_list, req.test_list,
                                  req)

    return load


# The reference's ImageNet-LT / iNaturalist-2018 scripts: ResNet-50, 90 epochs, cosine LR.
_LARGE = dict(arch="resnet50", epochs=90, batch_size=256, lr_schedule="cosine", workers=4)
DATASETS.add("imagenet_lt", _list_files("imagenet_lt"), help="ImageNet-LT list files", native_epochs=90,
             aliases=("imagenet",),
             defaults=_LARGE, index_split=INDEX_SPLITS["imagenet_lt"], streaming=True, needs_root=True)
DATASETS.add("inat18", _list_files("inat18"), help="iNaturalist-2018 list files", native_epochs=90,
             aliases=("inat_18",),
             defaults=_LARGE, index_split=INDEX_SPLITS["inat18"], streaming=True, needs_root=True)


def _load_list_dataset(dataset: str, root: Path, image_size: int, norm: str | None,
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
    if norm_name not in NORMS or len(NORMS[norm_name][0]) != 3:
        raise UserError(f"--norm {norm_name!r} does not apply to {dataset}; use imagenet or inat")
    mean, std = NORMS[norm_name]
    data = StreamingLTData(dataset, train.paths, train_labels, test.paths, test_labels, classes, counts,
                           mean, std, image_size, train.origins, test.origins)
    n = val_count(req.val_per_class, req.val_fraction, counts) if req is not None else 0
    if n:  # held out of the training list; the label order stays the full list's
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
    held = draw_validation(labels, np.arange(len(labels)), c, n, req.rand_number, keep_one=True) if n else []
    rest = complement(len(labels), np.asarray(held, dtype=np.int64))
    keep = rest[profile_indices(labels[rest], c, req.imb_type, req.imb_factor, req.rand_number, req.lt_generator,
                                req.seed)]
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
