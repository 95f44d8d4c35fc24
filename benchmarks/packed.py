"""Packed runs against the same runs one after another, in one process: aggregate training images/s.

    python benchmarks/packed.py [--steps 10] [--rounds 3] [--optimizer sam] [--amp bf16] [--channels-last]
                                [--compile] [--cases small_cnn:8,resnet32:4,resnet32:9]

For each case ARCH:G, G members (own seeds) train on random batches of 128 images shaped as the
architecture's data (small_cnn: 1x8x8 digits; the CIFAR ResNets: 3x32x32), ten classes:

(a) separate: the G runs' steps one after another (each its own model and ``--optimizer`` step on the
    supervised objective, ltsam's path for a run alone, on the intra-op threads ltsam gives the run alone: the
    small CNN's one, the process's for the ResNets);
(b) pack, loop mode: one fused model (``ltsam.pack.PackedModel``), each member's slices through the
    architecture in turn, one optimizer step for all;
(c) pack, threads mode: as (b), each member's forward and backward pass on a worker thread
    (``ltsam.pack.threads.thread_plan``: for the small CNN one intra-op thread a worker, as many workers as
    cores; for the ResNets one worker per member up to the cores, sharing them);
(d) pack, vmap mode: the same fused model through ``torch.func.vmap`` (grouped convolutions).

Timed in turn, (a)-(d) interleaved, for ``--rounds`` rounds of ``--steps`` steps after an untimed warm-up;
the speed-up is the median over rounds of pack/separate in images/s (G x 128 images per pack step; SAM's two
passes count once). The last line is ``pack_speedup=<the default mode's speed-up for the last case>`` followed
by each case's figures (the default mode: ``ltsam.pack.trainer.default_mode``, vmap on CUDA, threads on a CPU).
``--compile`` compiles loop and vmap mode's model (threads mode runs eagerly).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ltsam.config import resolve  # noqa: E402
from ltsam.models import build_model  # noqa: E402
from ltsam.objectives import supervised_objective  # noqa: E402
from ltsam.optim import StepSettings, build_step  # noqa: E402
from ltsam.pack.model import MODES, PackedModel  # noqa: E402
from ltsam.pack.optim import packed_step  # noqa: E402
from ltsam.pack.threads import thread_plan  # noqa: E402
from ltsam.pack.trainer import default_mode, packed_objective  # noqa: E402
from ltsam.run.runtime import default_cpu_threads, process_threads  # noqa: E402

SHAPES = {"small_cnn": (1, 8), "resnet32": (3, 32), "resnet20": (3, 32), "resnet44": (3, 32), "resnet56": (3, 32)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def case(arch: str, g: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    channels, size = SHAPES[arch]
    per_member = default_cpu_threads(arch) if device.type == "cpu" else None  # as ltsam trains the run alone
    torch.set_num_threads(per_member or process_threads())
    cfg = resolve(dict(dataset="digits" if arch == "small_cnn" else "cifar10", arch=arch, optimizer=args.optimizer,
                       device=str(device)))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp == "bf16" \
        else contextlib.nullcontext
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models = []
    for seed in range(g):
        torch.manual_seed(seed)
        models.append(build_model(arch, 10, False, channels).to(device, memory_format=fmt))
    x = torch.randn(g, 128, channels, size, size, device=device)
    y = torch.randint(0, 10, (g, 128), device=device)
    crit = torch.nn.CrossEntropyLoss()
    steps = [build_step(cfg.optimizer, m.parameters(),
                        StepSettings(lr=cfg.lr, momentum=cfg.momentum, wd=cfg.wd, rho=cfg.rho, autocast=autocast),
                        config=cfg) for m in models]
    xs = [x[i].contiguous(memory_format=fmt) for i in range(g)]

    def separate() -> None:
        for i, m in enumerate(models):
            steps[i](m, supervised_objective(xs[i], y[i], crit, autocast))

    packs = {}
    for mode in MODES:
        net = PackedModel([m for m in models], mode=mode, threads_each=per_member)
        step = packed_step(cfg, net.stacked_parameters(), g, autocast)
        for group in step.optimizer.param_groups:
            if "rho" in group:
                group["rho"] = torch.full((g,), cfg.rho, device=device)
        fn = torch.compile(net) if args.compile and mode != "threads" else net
        packs[mode] = (fn, step)

    def packed(mode: str):
        fn, step = packs[mode]
        crits = [crit] * g

        def run() -> None:
            step(fn, packed_objective(x, y, crits, autocast))
        return run

    runs = {"separate": separate, **{mode: packed(mode) for mode in MODES}}
    for run in runs.values():  # warm-up (compiles)
        for _ in range(2):
            run()
    _sync(device)
    speeds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run()
            _sync(device)
            speeds[name].append(g * 128 * args.steps / (time.perf_counter() - t0))
    out: dict[str, Any] = {name: statistics.median(v) for name, v in speeds.items()}
    for mode in MODES:
        out[f"{mode}_speedup"] = statistics.median(p / s for p, s in zip(speeds[mode], speeds["separate"]))
    out["plan"] = thread_plan(g, per_member)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--optimizer", default="sam", choices=["sgd", "sam", "asam"])
    p.add_argument("--amp", choices=["bf16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the fused model")
    p.add_argument("--cases", default="small_cnn:8,resnet32:4,resnet32:9")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"packed runs on {name}: {args.optimizer}, batch 128 per member, amp {args.amp or 'fp32'}"
          f"{', channels-last' if args.channels_last else ''}{', compiled' if args.compile else ''}")
    figures = []
    last = 0.0
    for spec in args.cases.split(","):
        arch, g = spec.split(":")
        r = case(arch, int(g), args, device)
        plan = f"threads: {r['plan'][0]} workers x {r['plan'][1]} intra-op, separate on {torch.get_num_threads()}"
        print(f"{arch} G={g} ({plan}): separate {r['separate']:,.0f} img/s | " + " | ".join(
            f"pack {mode} {r[mode]:,.0f} img/s ({r[f'{mode}_speedup']:.2f}x)" for mode in MODES), flush=True)
        default = default_mode(device, r["plan"][0])
        last = r[f"{default}_speedup"]
        figures.append(" ".join(f"{arch}_g{g}_{mode}={r[f'{mode}_speedup']:.2f}" for mode in MODES)
                       + f" {arch}_g{g}_{default}_img_s={r[default]:.0f}")
    print(f"pack_speedup={last:.2f} " + " ".join(figures))


if __name__ == "__main__":
    main()
