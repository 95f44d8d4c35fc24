"""Shared fixtures: tiny generated image folders, fast training flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Tiny, fast settings for end-to-end runs on the bundled digits.
FAST_DIGITS = ["--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--no-progress"]


def make_image_folder(root: Path, counts_train: list[int], counts_test: list[int], size: int = 12,
                      seed: int = 0, ext: str = "png") -> Path:
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png with class-dependent colours."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, counts in (("train", counts_train), ("test", counts_test)):
        for c, n in enumerate(counts):
            d = root / split / f"class_{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.array([40 * c % 256, 255 - 30 * c % 256, 90], dtype=np.float64)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "imgs", [40, 30, 20, 10], [6, 6, 6, 6])


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run far faster on one thread, and CI machines are small; results are unchanged."""
    import torch

    torch.set_num_threads(1)
    yield
