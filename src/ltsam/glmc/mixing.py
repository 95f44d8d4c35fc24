"""GLMC's global (MixUp) and local (CutMix) mixtures and their soft targets (the reference GLMC step's mixing).

All randomness comes from a ``torch.Generator`` (CPU), so a run is reproducible from its seeds.

Mixing coefficient: the reference draws lam ~ Beta(1, 1) = Uniform(0, 1) inside its mixing function;
its ``--beta`` flag only feeds a Beta(beta, beta) draw that is thrown away. In ltsam
``beta`` *is* the mixing parameter: lam ~ Beta(beta, beta), and the default beta = 1.0 reproduces the
reference's Uniform(0, 1) draw. (Passing the reference run.sh's ``--beta 0.5`` therefore changes the
distribution of lam; use 1.0 to match the paper's runs.)

CutMix box (step 5): k = ceil(S * sqrt(1 - lam)) per side, the centre uniform on {0, ..., S - 1}, the box
[c - k // 2, c + k // 2) clipped to the image, one box for the whole batch, and the targets use the same
lam as MixUp (not corrected for the clipped box area), as the reference does.
Deviation: :func:`cutmix` returns a new tensor; the reference overwrites the patch of A2 in place,
which is harmless there because A2 is not used again, so the results are identical.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]


def sample_lambda(generator: torch.Generator, beta: float = 1.0) -> float:
    """lam ~ Beta(beta, beta). beta = 1: one ``torch.rand`` draw (Uniform(0, 1), the reference's lam).

    Other beta: a NumPy Beta draw from a NumPy generator seeded by one integer drawn from ``generator``
    (torch's Beta sampler cannot take a generator), so the draw is still determined by ``generator``.
    """
    if not beta > 0.0:
        raise ValueError(f"beta must be positive, got {beta}")
    if beta == 1.0:
        return float(torch.rand((), generator=generator, dtype=torch.float64))
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(beta, beta))


def mixup(x_a: torch.Tensor, x_b: torch.Tensor, lam: float) -> torch.Tensor:
    """Global mixture lam * x_a + (1 - lam) * x_b (a new tensor)."""
    return lam * x_a + (1.0 - lam) * x_b


def box_from_centre(h: int, w: int, lam: float, centre_row: int, centre_col: int) -> Box:
    """The CutMix box (r0, r1, c0, c1) for a given centre: k = ceil(S * sqrt(1 - lam)) per side,
    [c - k // 2, c + k // 2) clipped to [0, S]. Before clipping the side is 2 * (k // 2)."""
    cut = math.sqrt(1.0 - lam)
    kh, kw = math.ceil(h * cut), math.ceil(w * cut)
    r0, r1 = min(max(centre_row - kh // 2, 0), h), min(max(centre_row + kh // 2, 0), h)
    c0, c1 = min(max(centre_col - kw // 2, 0), w), min(max(centre_col + kw // 2, 0), w)
    return r0, r1, c0, c1


def cutmix_box(h: int, w: int, lam: float, rng: torch.Generator) -> Box:
    """The CutMix box (r0, r1, c0, c1): rows [r0, r1) and columns [c0, c1) of an h x w image.

    The centre is uniform on {0, ..., h - 1} x {0, ..., w - 1} (row drawn first, then column, from
    ``rng``); the box is :func:`box_from_centre` of it.
    """
    ch = int(torch.randint(0, h, (1,), generator=rng))
    cw = int(torch.randint(0, w, (1,), generator=rng))
    return box_from_centre(h, w, lam, ch, cw)


def cutmix(x_a: torch.Tensor, x_b: torch.Tensor, box: Box) -> torch.Tensor:
    """Local mixture: a copy of ``x_a`` (N, C, H, W) whose box pixels come from ``x_b``; inputs untouched."""
    r0, r1, c0, c1 = box
    out = x_a.clone()
    out[:, :, r0:r1, c0:c1] = x_b[:, :, r0:r1, c0:c1]
    return out


def mix_targets(y_a: torch.Tensor, y_b: torch.Tensor, lam: float, num_classes: int,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft targets (N, C): lam e_A + (1 - lam) e_B, or with ``weights`` (C,) lam (w*e_A) + (1 - lam) (w*e_B).

    e_A, e_B are the one-hot labels; w * e puts w_y at the label position. Float32 unless ``weights``
    has another floating dtype.
    """
    dtype = weights.dtype if weights is not None else torch.float32
    e_a = F.one_hot(y_a.long(), num_classes).to(dtype)
    e_b = F.one_hot(y_b.long(), num_classes).to(dtype)
    if weights is not None:
        w = weights.to(e_a.device)[None, :]
        e_a, e_b = e_a * w, e_b * w
    return lam * e_a + (1.0 - lam) * e_b
