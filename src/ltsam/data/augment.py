"""Batched image augmentation on uint8 tensors: the reference's RandomCrop(pad) + flip, then Normalize.

One gather does crop and flip for the whole batch, on whatever device the batch lives on. The draws
follow torchvision's transforms: crop offsets i, j uniform on {0, ..., 2*pad} (RandomCrop after
zero padding), flip with probability 1/2 (RandomHorizontalFlip), crop first, then flip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(batch: int, pad: int, flip: bool, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample row offsets, column offsets and flip flags, drawn on the CPU from ``generator``."""
    rows = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    cols = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flips = (torch.rand(batch, generator=generator) < 0.5) if flip else torch.zeros(batch, dtype=torch.bool)
    return rows, cols, flips


def crop_flip(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, flips: torch.Tensor,
              pad: int) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back to H x W at (rows, cols), mirror where ``flips``; any dtype."""
    b, c, h, w = images.shape
    if pad == 0 and not bool(flips.any()):
        return images
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    row_idx = rows.to(dev)[:, None] + ar_h[None, :]  # (B, H)
    col_pos = torch.where(flips.to(dev)[:, None], (w - 1 - ar_w)[None, :], ar_w[None, :])
    col_idx = cols.to(dev)[:, None] + col_pos  # (B, W)
    wp = padded.shape[3]
    out = padded.gather(2, row_idx[:, None, :, None].expand(b, c, h, wp))
    return out.gather(3, col_idx[:, None, None, :].expand(b, c, h, w))


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> (x / 255 - mean) / std per channel (ToTensor + Normalize)."""
    x = images.to(dtype, copy=True).div_(255.0)
    return x.sub_(mean.to(x.device, dtype)[None, :, None, None]).div_(std.to(x.device, dtype)[None, :, None, None])
