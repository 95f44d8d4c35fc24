"""Speed options: torch.compile with a clean fallback, channels-last, mixed precision.

Every option that is off leaves the computation exactly as the plain eager path.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

# On a CPU, inductor's compile of a CIFAR ResNet takes long enough that it pays off only on runs of a
# few thousand steps or more (the measured compile time and step times: docs/speed.md).
CPU_COMPILE_MIN_STEPS = 3000
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def should_compile(option: bool | None, device: torch.device, total_steps: int) -> bool:
    """``--compile`` / ``--no-compile`` decide; unset (auto) compiles on CUDA and on long CPU runs."""
    if option is not None:
        return option
    return device.type == "cuda" or total_steps >= CPU_COMPILE_MIN_STEPS


def compile_with_fallback(model: nn.Module, trial: Callable[[nn.Module], None] | None = None
                          ) -> tuple[nn.Module, bool]:
    """``torch.compile(model)``; if compiling or a trial step fails, the eager model and False.

    Compilation errors surface lazily at the first call, so ``trial`` runs one forward/backward
    with the compiled module. Batch-norm running statistics and gradients touched by the trial
    are restored, so the run is unchanged by it.
    """
    try:
        compiled = cast(nn.Module, torch.compile(model))  # an OptimizedModule; the stubs say only Callable
    except Exception as exc:  # no backend on this platform
        warnings.warn(f"torch.compile unavailable ({type(exc).__name__}: {exc}); running eagerly", stacklevel=2)
        return model, False
    if trial is None:
        return compiled, True
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    try:
        trial(compiled)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); running eagerly",
                      stacklevel=2)
        return model, False
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        for p in model.parameters():
            p.grad = None
    return compiled, True


def allow_retained_graphs() -> None:
    """Let compiled backward passes run with ``retain_graph=True`` (steps that take several backward passes
    through one forward pass: the imbalance-aware SAM variants, AE-SAM's trigger). torch.compile's donated
    buffers (a memory saving) forbid that, so they are turned off; results are unchanged."""
    config = getattr(getattr(torch, "_functorch", None), "config", None)
    if config is not None and hasattr(config, "donated_buffer"):
        config.donated_buffer = False


def autocast_context(amp: str | None, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``--amp bf16|fp16`` (a no-op context when off)."""
    if not amp:
        return contextlib.nullcontext
    dtype = AMP_DTYPES[amp]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
