"""The linear probe with cached features (``--tune linear --feature-cache``) against full fine-tuning and the
uncached probe on the same model, in one process: seconds per training epoch (evaluation not included).

    python benchmarks/linear_probe.py [--arch timm:vit_tiny_patch16_224] [--input-size 64] [--epochs 3]
                                      [--dataset digits] [--optimizer sgd]

Three trainers on the same data and model (``--pretrained none``: random weights; the cost is the same as with
pretrained ones): full fine-tuning, the linear probe on the frozen backbone (every epoch runs the backbone
forward), and the probe on cached features (the backbone runs once, when the trainer starts: timed apart as
``cache``). Each trains ``--epochs`` epochs after one untimed warm-up epoch, in turn, and the median epoch is
reported. The last line is ``probe_cache_speedup=<full epoch / cached-probe epoch>`` and the other ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ltsam.config import resolve  # noqa: E402
from ltsam.trainer import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="timm:vit_tiny_patch16_224")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "sam"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    base = dict(dataset=args.dataset, arch=args.arch, pretrained="none", input_size=args.input_size,
                optimizer=args.optimizer, loss="ce", epochs=args.epochs + 1, batch_size=args.batch_size,
                device=args.device, rho=0.05)
    modes = {"full": dict(tune="full"), "probe": dict(tune="linear"),
             "cached": dict(tune="linear", feature_cache=True)}
    trainers, cache_seconds = {}, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in modes.items():
            t0 = time.perf_counter()
            trainers[name] = Trainer(resolve(base | extra), Path(tmp) / name, progress=False)
            if name == "cached":
                cache_seconds = time.perf_counter() - t0
        seconds: dict[str, list[float]] = {k: [] for k in modes}
        for epoch in range(args.epochs + 1):
            for name, trainer in trainers.items():
                criterion = trainer.criterion_for(epoch)
                trainer.set_hyperparameters(epoch)
                t0 = time.perf_counter()
                trainer.train_epoch(epoch, criterion)
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                if epoch:  # the first epoch warms up
                    seconds[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    images = trainers["full"].data.train_size
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch} at {args.input_size} px, {args.dataset} ({images} training images), {args.optimizer}, "
          f"batch {args.batch_size}, on {where}")
    for name in modes:
        print(f"{name:>7}: {med[name]:.3f} s per training epoch")
    print(f"  cache: {cache_seconds:.3f} s to build the cached-probe trainer (the backbone over every image once)")
    print(f"probe_cache_speedup={med['full'] / med['cached']:.1f} probe_uncached_speedup="
          f"{med['full'] / med['probe']:.1f} cache_over_probe={med['probe'] / med['cached']:.1f}")


if __name__ == "__main__":
    main()
