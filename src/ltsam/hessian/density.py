"""Smoothing of stochastic Lanczos quadrature output into a spectral density on a grid."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def density_grid(nodes: Tensor, weights: Tensor, num_points: int = 10000,
                 sigma_sq_factor: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Gaussian-smoothed spectral density of SLQ nodes and weights, as ``(grid, density)``.

    With ``nodes``/``weights`` of shape ``[runs, m]`` (or ``[m]``), ``a`` and ``b`` the means over
    runs of each run's smallest and largest node: the grid has ``num_points`` points from
    ``a - 0.01`` to ``b + 0.01``, the kernel variance is
    ``s2 = sigma_sq_factor * max(1, (b + 0.01) - (a - 0.01))``, and

        density(x) = (1/runs) sum_r sum_k w_rk exp(-(x - theta_rk)^2 / (2 s2)) / sqrt(2 pi s2),

    rescaled so that ``sum(density) * (grid[1] - grid[0]) = 1``. All in float64.
    """
    theta = torch.atleast_2d(torch.as_tensor(nodes, dtype=torch.float64))
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(theta.shape)
    low = theta.min(dim=1).values.mean().item() - 0.01
    high = theta.max(dim=1).values.mean().item() + 0.01
    grid = torch.linspace(low, high, num_points, dtype=torch.float64)
    var = sigma_sq_factor * max(1.0, high - low)
    # [num_points, runs * m] kernel matrix times the flattened weights: one product, no loops.
    kernel = torch.exp(-(grid[:, None] - theta.reshape(1, -1)) ** 2 / (2 * var))
    density = kernel @ w.reshape(-1) / (math.sqrt(2 * math.pi * var) * theta.shape[0])
    density = density / (density.sum() * (grid[1] - grid[0]))
    return grid, density
