"""Image folders ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (or ``val/``), decoded into memory.

Classes are the sorted sub-folder names of ``train`` (torchvision ImageFolder's convention). Only the
training images that the long-tail profile keeps are decoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ltsam.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def scan_split(split_dir: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, file paths, labels) of one split, files sorted within each class."""
    if not split_dir.is_dir():
        raise UserError(f"folder {split_dir} does not exist; expected ROOT/train/<class>/ and "
                        f"ROOT/test/<class>/ (or val/) image folders")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise UserError(f"{split_dir} has no class sub-folders; put the images of each class in "
                        f"{split_dir}/<class name>/")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{split_dir} has classes that train/ lacks: {', '.join(unknown[:5])}; "
                        f"every test class needs a train folder of the same name")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        d = split_dir / name
        if not d.is_dir():
            continue
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...) found under {split_dir}")
    return list(classes), paths, np.asarray(labels, dtype=np.int64)


def open_image(path: Path, mode: str, where: str = ""):
    """``path`` decoded by PIL and converted to ``mode``; an unreadable, truncated or
    decompression-bomb file (PIL's pixel limit) is a UserError naming the file (and ``where``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Image.DecompressionBombError as exc:
        raise UserError(f"image {path}{where} is too large to decode safely ({exc}); "
                        f"remove or shrink the file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image {path}{where}: {exc}; remove or replace the file") from None


def _decode(path: Path, size: int | None, channels: int) -> np.ndarray:
    from PIL import Image

    im = open_image(path, "RGB" if channels == 3 else "L")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_images(paths: Sequence[Path], size: int | None = None, channels: int = 3,
                  progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Decode files into one uint8 (N, C, S, S) tensor; ``size`` None = the first image's size."""
    if not paths:
        return torch.zeros(0, channels, size or 1, size or 1, dtype=torch.uint8)
    if size is None:
        first = _decode(paths[0], None, channels)
        if first.shape[1] != first.shape[2]:
            raise UserError(f"images are not square ({paths[0]} is {first.shape[2]}x{first.shape[1]}); "
                            f"pass --image-size N to resize them")
        size = first.shape[1]
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode(paths[i], size, channels)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        for _ in pool.map(work, range(len(paths))):
            if progress is not None:
                progress(1)
    return torch.from_numpy(out)


def test_split_dir(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root} has no test/ or val/ folder; put the evaluation images in "
                    f"{root}/test/<class>/")
