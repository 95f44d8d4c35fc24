"""scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes): the offline default."""

from __future__ import annotations

import numpy as np
import torch

from ltsam.data.images import ImageSet

TEST_FRACTION = 0.3
SPLIT_SEED = 0


def load_digits_split() -> tuple[ImageSet, ImageSet]:
    """Stratified 70/30 train/test split; pixels 0-16 rescaled to uint8 0-255, one channel."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                              stratify=labels, random_state=SPLIT_SEED)
    # Keep file order inside each split so the LT selection is a pure function of rand_number.
    tr, te = np.sort(tr), np.sort(te)
    classes = [str(c) for c in range(10)]
    return (ImageSet(torch.from_numpy(images[tr]), torch.from_numpy(labels[tr]), classes),
            ImageSet(torch.from_numpy(images[te]), torch.from_numpy(labels[te]), classes))
