"""Whether this CPU computes bf16 natively, and the one line ``ltsam train`` says about it.

bf16 autocast on a CPU pays only where the CPU has bf16 dot-product instructions (x86-64: AVX512-BF16 or
AMX-BF16; Arm: the BF16 extension, BFMMLA/BFDOT), which oneDNN's convolutions use. Elsewhere oneDNN
emulates bf16 through fp32 with conversions on every layer, which is slower than fp32 (measured:
docs/speed.md). The facts come from torch's own CPU detection (``torch.cpu.get_capabilities``, cpuinfo).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

# Capability keys (torch.cpu.get_capabilities) that mean native bf16 arithmetic.
NATIVE_BF16_KEYS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
BF16_FLAGS = ("--amp bf16", "--channels-last")


class PrecisionConfig(Protocol):
    """What the note reads of a run's configuration (``ltsam.config.TrainConfig`` has both)."""

    amp: str | None
    channels_last: bool


def cpu_capabilities() -> Mapping[str, Any]:
    """torch's view of this CPU's instruction sets (``torch.cpu.get_capabilities``), or, on a torch without
    it, the two bf16 facts its older helpers give; ``{}`` when neither exists."""
    cpu = torch.cpu
    if hasattr(cpu, "get_capabilities"):
        return cpu.get_capabilities()
    caps: dict[str, Any] = {}
    for key, fn in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")):
        if hasattr(cpu, fn):
            caps[key] = bool(getattr(cpu, fn)())
    return caps


def native_bf16_features(caps: Mapping[str, Any] | None = None) -> list[str]:
    """The capabilities among ``NATIVE_BF16_KEYS`` this CPU (or ``caps``) has, e.g. ``['avx512_bf16']``."""
    caps = cpu_capabilities() if caps is None else caps
    return [key for key in NATIVE_BF16_KEYS if caps.get(key) is True]


def native_bf16(caps: Mapping[str, Any] | None = None) -> bool:
    """True where this CPU (or ``caps``) computes bf16 natively, so bf16 autocast can beat fp32."""
    return bool(native_bf16_features(caps))


def cpu_bf16_summary(caps: Mapping[str, Any] | None = None) -> str:
    """One phrase for benchmarks and notes: native with which instructions, or emulated."""
    found = native_bf16_features(caps)
    if found:
        return f"bf16 native on this CPU ({', '.join(found)})"
    return "bf16 not native on this CPU (no AVX512-BF16 or AMX-BF16): emulated, slower than fp32"


def cpu_precision_note(cfg: PrecisionConfig, device: torch.device,
                       caps: Mapping[str, Any] | None = None) -> str | None:
    """The start-of-training line about bf16 on a CPU, or ``None``.

    On a CPU that computes bf16 natively and a run in fp32: a suggestion naming the flags that use it
    (``--amp bf16 --channels-last``, those not already given). On a CPU that does not and a run with
    ``--amp bf16``: a warning that bf16 is emulated there. Otherwise (a GPU, or nothing to say): ``None``.
    """
    if device.type != "cpu":
        return None
    found = native_bf16_features(caps)
    if cfg.amp is None and found:
        flags = [f for f, on in zip(BF16_FLAGS, (False, cfg.channels_last)) if not on]
        return (f"this CPU computes bf16 natively ({', '.join(found)}): `{' '.join(flags)}` trains faster here "
                f"(docs/speed.md); the default stays fp32")
    if cfg.amp == "bf16" and not found:
        return ("warning: this CPU does not compute bf16 natively (no AVX512-BF16 or AMX-BF16): --amp bf16 is "
                "emulated here and slower than fp32")
    return None
