"""Images/s of one SGD step and one SAM step of resnet32 at batch 128 (CIFAR-shaped inputs).

    python benchmarks/train_step.py [--steps 10] [--batch-size 128] [--device cpu]

Both are timed in the same process on the same model and batch, interleaved over rounds; the last
line is ``sam_over_sgd=<median SAM step time / median SGD step time>`` (about 2 expected: SAM does
two forward/backward passes).
"""

from __future__ import annotations

import statistics
import time

import torch
from step_timing import COUNTS, interleaved, step_parser, supervised_update

from ltsam.losses import LDAMLoss
from ltsam.models import build_model


def time_steps(step, model, x, y, criterion, n: int, device: torch.device) -> float:
    """Median seconds per step over ``n`` steps (after the caller's warm-up)."""
    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, x, y, criterion)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    args = step_parser(__doc__, 10, "timed steps per round").parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    criterion = LDAMLoss(COUNTS).to(device)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    runs = {}
    for name in ("sgd", "sam"):
        model = build_model("resnet32", 10, use_norm=True).to(device).train()
        runs[name] = (model, supervised_update(model, name, lr=0.1, momentum=0.9, wd=2e-4, rho=0.5))
    times = interleaved(runs, x, y, criterion, args.rounds,
                        lambda step, model: time_steps(step, model, x, y, criterion, args.steps, device))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in ("sgd", "sam"):
        print(f"{name.upper()} step: {med[name] * 1000:.1f} ms, {args.batch_size / med[name]:.0f} images/s "
              f"(resnet32, batch {args.batch_size}, {device})")
    print(f"sam_over_sgd={med['sam'] / med['sgd']:.3f}")


if __name__ == "__main__":
    main()
