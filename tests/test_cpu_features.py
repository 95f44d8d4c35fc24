"""bf16 on a CPU: the native-bf16 detection (hardware facts mocked), the line ``ltsam train`` prints about it, and
that bf16 autocast keeps parameters, gradients and SAM's perturbation in fp32."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ltsam import cpu_features
from ltsam.cli import main
from ltsam.cpu_features import cpu_capabilities, cpu_precision_note, native_bf16, native_bf16_features
from ltsam.losses import LDAMLoss
from ltsam.objectives import supervised_objective
from ltsam.optim import StepSettings, build_step
from ltsam.run.runtime import precision
from tests.conftest import FAST_DIGITS
from tests.tolerances import eps, rtol

CPU = torch.device("cpu")
# An AVX-512 CPU without bf16 instructions (this project's development machine), and two with them.
NO_BF16 = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False,
           "amx_tile": False}
AVX512_BF16 = {**NO_BF16, "avx512_bf16": True}
AMX = {**NO_BF16, "amx_bf16": True, "amx_tile": True}
ARM_BF16 = {"architecture": "aarch64", "neon": True, "bf16": True}


class Cfg:
    def __init__(self, amp: str | None = None, channels_last: bool = False):
        self.amp, self.channels_last = amp, channels_last


@pytest.mark.parametrize(("caps", "native"), [(NO_BF16, False), (AVX512_BF16, True), (AMX, True),
                                              (ARM_BF16, True), ({}, False),
                                              ({"architecture": "aarch64", "neon": True}, False)])
def test_native_bf16_from_capabilities(caps: dict, native: bool) -> None:
    assert native_bf16(caps) is native


def test_native_bf16_reads_torchs_cpu_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: AMX)
    assert native_bf16() and native_bf16_features() == ["amx_bf16"]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: NO_BF16)
    assert not native_bf16()


def test_capabilities_fall_back_to_torchs_older_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert dict(cpu_capabilities()) == {"avx512_bf16": True, "amx_bf16": False}
    assert native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not native_bf16()


def test_precision_note_on_each_kind_of_cpu() -> None:
    note = cpu_precision_note(Cfg(), CPU, AVX512_BF16)
    assert note is not None and "`--amp bf16 --channels-last`" in note and "avx512_bf16" in note
    note = cpu_precision_note(Cfg(channels_last=True), CPU, AMX)  # only the flag not already given
    assert note is not None and "`--amp bf16`" in note and "--channels-last" not in note
    assert cpu_precision_note(Cfg("bf16", True), CPU, AMX) is None  # already on
    assert cpu_precision_note(Cfg(), CPU, NO_BF16) is None  # not suggested where it is emulated
    warning = cpu_precision_note(Cfg("bf16"), CPU, NO_BF16)
    assert warning is not None and warning.startswith("warning:") and "emulated" in warning
    assert cpu_precision_note(Cfg(), torch.device("cuda"), AVX512_BF16) is None  # a GPU run: nothing to say
    assert cpu_precision_note(Cfg("bf16"), torch.device("cuda"), NO_BF16) is None


def _train_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caps: dict, out: Path,
                 *flags: str) -> list[str]:
    real = dict(cpu_features.cpu_capabilities())
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**real, **caps})
    assert main(["train", *FAST_DIGITS[:2], "--epochs", "1", "--batch-size", "256", "--no-progress",
                 "--out", str(out), *flags]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if "bf16" in line]


def test_train_start_line_where_bf16_is_native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    lines = _train_lines(monkeypatch, capsys, AVX512_BF16, tmp_path / "run")
    assert len(lines) == 1
    assert lines[0].startswith("ltsam: this CPU computes bf16 natively") and "--amp bf16 --channels-last" in lines[0]


def test_train_says_nothing_where_bf16_is_emulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert _train_lines(monkeypatch, capsys, NO_BF16, tmp_path / "run") == []


def test_train_warns_when_asked_for_emulated_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    lines = _train_lines(monkeypatch, capsys, NO_BF16, tmp_path / "run", "--amp", "bf16")
    assert len(lines) == 1 and lines[0].startswith("ltsam: warning:") and "emulated" in lines[0]


class TinyNet(nn.Module):
    """A convolution, batch norm and a linear head: few parameters, so a float32 norm over them has a tight
    rounding bound."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_bf16_autocast_keeps_sam_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's path (``precision('bf16', cpu)``, the registered ``sam`` step on the supervised objective):
    the convolution runs in bf16, while parameters, both passes' gradients, the backups and the momentum stay
    fp32, and SAM's perturbation equals rho g / ||g|| recomputed in float64 from the same gradients."""
    torch.manual_seed(0)
    model = TinyNet()
    rho = 0.5
    autocast, scaler = precision("bf16", CPU)
    assert scaler is None  # bf16 needs no loss scaling
    step = build_step("sam", model.parameters(),
                      StepSettings(lr=0.1, momentum=0.9, wd=5e-4, rho=rho, autocast=autocast))
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 4
    objective = supervised_objective(x, y, LDAMLoss([40, 20, 10, 5]), step.autocast)
    params = list(model.parameters())
    conv_dtypes: list[torch.dtype] = []
    model.conv.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))

    opt = step.optimizer
    seen: dict[str, list[torch.Tensor]] = {}
    first_step, base_step = opt.first_step, opt.base_optimizer.step

    def spy_first_step(*args, **kwargs):
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        seen["g64"] = [p.grad.double() for p in params]
        seen["w64"] = [p.detach().double() for p in params]
        grads = [p.grad for p in params]  # SAM turns these buffers into e(w) and adds them to w
        first_step(*args, **kwargs)
        seen["e"] = grads
        seen["w_perturbed"] = [p.detach().clone() for p in params]

    def spy_base_step(*args, **kwargs):
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        # restored exactly before the descent step
        assert all(torch.equal(p.double(), w) for p, w in zip(params, seen["w64"]))
        return base_step(*args, **kwargs)

    monkeypatch.setattr(opt, "first_step", spy_first_step)
    monkeypatch.setattr(opt.base_optimizer, "step", spy_base_step)
    out = step(model, objective)

    assert conv_dtypes == [torch.bfloat16, torch.bfloat16]  # autocast is on in both passes
    assert out.last.logits.dtype == torch.bfloat16 and out.last.descent.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in params)
    assert all(t.dtype == torch.float32 for t in seen["e"])
    assert all(b.dtype == torch.float32 for b in opt._backup.values()) and len(opt._backup) == len(params)
    assert all(opt.base_optimizer.state[p]["momentum_buffer"].dtype == torch.float32 for p in params)

    g64 = seen["g64"]
    norm64 = math.sqrt(sum(float((g * g).sum()) for g in g64))
    assert norm64 > 0
    expected = [rho * g / (norm64 + 1e-12) for g in g64]
    # e(w) in float32: squared-norm sums of at most n terms (all positive, no cancellation), a square root, a
    # division and a product, each rounding relative to the value: rtol(float32, n, stages=4).
    n = max(p.numel() for p in params)
    tol = rtol(torch.float32, n, stages=4)
    for e, want in zip(seen["e"], expected):
        torch.testing.assert_close(e.double(), want, rtol=tol, atol=0.0)
    # and it is what moved the weights: w + e(w) rounded once to float32
    for w_pert, w, e in zip(seen["w_perturbed"], seen["w64"], seen["e"]):
        scale = float((w.abs() + e.double().abs()).max())
        torch.testing.assert_close(w_pert.double() - w, e.double(), rtol=0.0, atol=eps(torch.float32) * scale)
    assert abs(math.sqrt(sum(float((e.double() ** 2).sum()) for e in seen["e"])) - rho) <= rho * tol
