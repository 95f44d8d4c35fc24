"""Time per step of the imbalance-aware SAM variants and of the SAM-frequency options, against SGD and SAM.

    python benchmarks/sam_variants.py [--steps 4] [--rounds 3] [--batch-size 128] [--device cpu]

resnet32 with the cosine head and the LDAM loss on one CIFAR-shaped batch whose labels follow CIFAR-10-LT at
imbalance 0.01 (so the batch holds every class, the tail ones rarely). Every step is timed in the same process
on its own copy of the model, interleaved over rounds of ``--steps`` consecutive steps; a step's time is the
mean over all timed steps (the frequency options mix SAM and plain steps, so a median of rounds would pick the
round with the fewest SAM steps), and for those options the share of timed steps that took the ascent is
printed beside it. The last line is ``cost_vs_sgd=`` followed by ``name:ratio`` for each, the ratio of its time
per step to SGD's.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from step_timing import COUNTS, interleaved, step_parser, supervised_update

from ltsam.losses import LDAMLoss
from ltsam.models import build_model

# name -> (registered step, its options)
RUNS = {
    "sgd": ("sgd", {}),
    "sam": ("sam", {}),
    "imbsam": ("imbsam", dict(imbsam_eta=100.0)),  # tail: the classes of 83 and 50 images
    "focal_sam": ("focal_sam", {}),
    "sse_sam": ("sse_sam", {}),
    "cc_sam": ("cc_sam", {}),
    "cc_sam_classifier": ("cc_sam", dict(cc_sam_scope="classifier")),
    "sam_every2": ("sam", dict(sam_every=2)),
    "sam_prob0.5": ("sam", dict(sam_prob=0.5)),
    "sam_trigger": ("sam", dict(sam_adaptive_trigger=True)),
    "imbsam_every2": ("imbsam", dict(imbsam_eta=100.0, sam_every=2)),
}


def time_steps(step, model, x, y, criterion, n: int, device: torch.device) -> tuple[float, int]:
    """Seconds for ``n`` consecutive steps, and how many of them took SAM's ascent (frequency options)."""
    frequency = getattr(step.step, "frequency", None)
    before = frequency.sam_steps if frequency is not None else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step(model, x, y, criterion)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, (frequency.sam_steps if frequency is not None else 0) - before


def main() -> None:
    ap = step_parser(__doc__, 4, "consecutive steps per timing (even, for every-2)")
    ap.add_argument("--only", nargs="*", help="time only these (sgd is always timed)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    criterion = LDAMLoss(COUNTS).to(device)
    prior = torch.tensor(COUNTS, dtype=torch.float)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.multinomial(prior, args.batch_size, replacement=True, generator=torch.Generator().manual_seed(1))
    y = y.to(device)
    names = ["sgd"] + [n for n in RUNS if n != "sgd" and (not args.only or n in args.only)]
    runs = {}
    for name in names:
        step_name, options = RUNS[name]
        torch.manual_seed(0)
        model = build_model("resnet32", 10, use_norm=True).to(device).train()
        step = supervised_update(model, step_name, lr=0.1, momentum=0.9, wd=2e-4, rho=0.5,
                                 config=SimpleNamespace(**options), cls_num_list=COUNTS)
        step.step.set_progress(0, 1, args.steps * (args.rounds + 1))
        runs[name] = (model, step)
    times = interleaved(runs, x, y, criterion, args.rounds,
                        lambda step, model: time_steps(step, model, x, y, criterion, args.steps, device))
    timed = args.rounds * args.steps
    per_step = {name: sum(t for t, _ in rounds) / timed for name, rounds in times.items()}
    print(f"resnet32, batch {args.batch_size}, {device}, classes in the batch: {len(set(y.tolist()))}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps; spread of the rounds in brackets")
    for name in names:
        spread = [t / args.steps * 1000 for t, _ in times[name]]
        frequency = getattr(runs[name][1].step, "frequency", None)
        share = ""
        if frequency is not None and not frequency.always:
            share = f"  SAM on {sum(n for _, n in times[name])} of {timed} timed steps"
        print(f"{name:<18} {per_step[name] * 1000:8.1f} ms/step ({min(spread):.0f}-{max(spread):.0f})  "
              f"{per_step[name] / per_step['sgd']:5.2f} x SGD{share}")
    print("cost_vs_sgd=" + " ".join(f"{name}:{per_step[name] / per_step['sgd']:.2f}" for name in names
                                    if name != "sgd"))


if __name__ == "__main__":
    main()
