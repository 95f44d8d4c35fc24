"""Images/s of one forward + backward pass of a CIFAR ResNet at batch 128: fp32, channels-last, bf16 autocast
and bf16 autocast + channels-last, in the same process.

    python benchmarks/precision_step.py [--arch resnet32] [--steps 5] [--rounds 3] [--device cpu]

The four variants run interleaved for ``--rounds`` rounds of ``--steps`` timed passes each (after two untimed
warm-up passes each); the figures are medians over rounds. Whether this CPU computes bf16 natively
(``ltsam.cpu_features.native_bf16``) is printed first: where it does not, bf16 is emulated and slower.
The last line is ``bf16_over_fp32=<bf16 / fp32 img/s> bf16_cl_over_fp32_cl=<bf16+CL / fp32 CL img/s>``.
"""

from __future__ import annotations

import statistics
import time

import torch
from step_timing import COUNTS, step_parser
from torch import nn

from ltsam.acceleration import autocast_context
from ltsam.cpu_features import cpu_bf16_summary
from ltsam.losses import LDAMLoss
from ltsam.models import build_model

VARIANTS = {"fp32": (None, False), "fp32_cl": (None, True), "bf16": ("bf16", False), "bf16_cl": ("bf16", True)}


def main() -> None:
    ap = step_parser(__doc__, 5, "timed passes per variant and round")
    ap.add_argument("--arch", default="resnet32")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device} ({torch.get_num_threads()} threads); {cpu_bf16_summary() if device.type == 'cpu' else ''}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = (torch.arange(args.batch_size) % len(COUNTS)).to(device)
    criterion = LDAMLoss(COUNTS).to(device)
    runs: dict[str, tuple[nn.Module, torch.Tensor, object]] = {}
    for name, (amp, cl) in VARIANTS.items():
        torch.manual_seed(0)
        model = build_model(args.arch, 10, use_norm=True).to(device).train()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        runs[name] = (model, x.contiguous(memory_format=torch.channels_last) if cl else x,
                      autocast_context(amp, device))

    def passes(name: str, n: int) -> float:
        model, xb, ctx = runs[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            with ctx():  # type: ignore[operator]
                loss = criterion(model(xb), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * args.batch_size / (time.perf_counter() - t0)

    for name in runs:
        passes(name, 2)
    ips: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name in runs:
            ips[name].append(passes(name, args.steps))
    med = {name: statistics.median(v) for name, v in ips.items()}
    print(f"{args.arch}, batch {args.batch_size}, forward + backward (LDAM loss), {args.rounds} rounds x "
          f"{args.steps} passes")
    for name, v in ips.items():
        print(f"  {name:8s} {med[name]:7.1f} img/s  x{med[name] / med['fp32']:.3f} of fp32  "
              f"[rounds: {', '.join(f'{r:.0f}' for r in v)}]")
    print(f"bf16_over_fp32={med['bf16'] / med['fp32']:.3f} "
          f"bf16_cl_over_fp32_cl={med['bf16_cl'] / med['fp32_cl']:.3f}")


if __name__ == "__main__":
    main()
