"""What a run needs from the machine before it trains: device and ranks, CPU threads, seeds, precision,
the compiled and the DDP-wrapped module."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from ltsam.acceleration import (
    allow_retained_graphs,
    autocast_context,
    compile_with_fallback,
    grad_scaler,
    should_compile,
)
from ltsam.distributed import DistContext, init_distributed, resolve_device

if TYPE_CHECKING:
    from ltsam.config import TrainConfig

_PROCESS_THREADS = torch.get_num_threads()


def process_threads() -> int:
    """The intra-op threads the process had before any run's thread rule changed them (torch's default: the
    physical cores, or OMP_NUM_THREADS): what a pack's members share on a CPU."""
    return _PROCESS_THREADS


def run_threads(cfg: TrainConfig) -> int | None:
    """A run's CPU threads: ``--threads``, else its architecture's rule, else ``None`` (torch's default)."""
    return cfg.threads if cfg.threads is not None else default_cpu_threads(cfg.arch)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_cpu_threads(arch: str | None) -> int | None:
    """The CPU threads an architecture's registration asks for (``cpu_threads``; the small CNN's 1), else
    ``None``: torch's own default."""
    from ltsam.models import MODELS

    if arch is None or arch not in MODELS:
        return None
    return MODELS.entry(arch).meta.get("cpu_threads")


def steps_per_epoch(train_size: int, batch_size: int, world: int = 1) -> int:
    """Batches one rank takes per epoch: its equal share of the images (padded, as DistributedSampler does), the
    last batch short (every batch source of ltsam and of the built-in methods)."""
    return math.ceil(math.ceil(train_size / world) / batch_size)


def settle(cfg: TrainConfig, train_size: int) -> TrainConfig:
    """Fill in what only the machine and the size of the data decide (``--compile`` auto: on for CUDA and for
    CPU runs long enough to repay compiling), then freeze ``cfg``: from here on it is what ``config.json``
    says. A frozen configuration is returned as it is."""
    if cfg.frozen:
        return cfg
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = steps_per_epoch(train_size, cfg.batch_size, world) * cfg.epochs
    cfg.compile = should_compile(cfg.compile, resolve_device(cfg.device), steps)
    return cfg.freeze()


def start_runtime(device: str, cfg: TrainConfig, seed: int) -> tuple[DistContext, torch.device]:
    """Ranks and device (``torchrun`` or one process), the CPU thread rule, then the seeds."""
    ctx, dev = init_distributed(resolve_device(device))
    threads = run_threads(cfg)
    if threads is not None and dev.type == "cpu":  # tiny models run faster on one thread
        torch.set_num_threads(threads)
    seed_everything(seed)
    return ctx, dev


def precision(amp: str | None, device: torch.device, scaled: bool = True):
    """The autocast context and the fp16 GradScaler (``None`` without one, or when ``scaled`` is false):
    mixed precision on CUDA, and bf16 autocast on a CPU too."""
    amp = amp if (device.type == "cuda" or amp == "bf16") else None
    return autocast_context(amp, device), (grad_scaler(amp, device) if scaled else None)


def compiled(model: torch.nn.Module, trial: Callable[[torch.nn.Module], None], retains_graph: bool,
             announce: bool) -> torch.nn.Module:
    """``model`` under torch.compile, or ``model`` itself where compiling fails (checked by ``trial``)."""
    if retains_graph:  # several backward passes through one forward pass
        allow_retained_graphs()
    t0 = time.perf_counter()
    net, ok = compile_with_fallback(model, trial)
    if ok and announce:
        print(f"ltsam: model compiled with torch.compile in {time.perf_counter() - t0:.0f}s "
              f"(--no-compile to skip)", flush=True)
    return net


def data_parallel(net: torch.nn.Module, ctx: DistContext, device: torch.device,
                  find_unused_parameters: bool = False) -> torch.nn.Module:
    """``net`` wrapped in DistributedDataParallel under ``torchrun``; ``net`` itself in one process."""
    if not ctx.enabled:
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(net, device_ids=ids, find_unused_parameters=find_unused_parameters)
