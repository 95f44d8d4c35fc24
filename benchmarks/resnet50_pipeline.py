"""Throughput of the ImageNet-LT / iNat pipeline: JPEG loading + augmentation in DataLoader workers,
and ResNet-50 SGD and SAM steps at 224x224.

    python benchmarks/resnet50_pipeline.py [--images 256] [--workers 2] [--batch-size 16] [--steps 3]

It generates JPEGs of ImageNet-like size (about 400x350) with a list file in a temporary folder,
times one pass of the training loader (images/s, decoding and augmentation included), then times
SGD and SAM steps of ResNet-50 (1,000 classes) on batches from that loader. Last line:
``loader_ips=<images/s> sgd_ips=<images/s> sam_ips=<images/s>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_jpegs(root: Path, n: int, classes: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        label = i % classes
        d = root / "train" / f"n{label:08d}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = 330 + int(rng.integers(0, 40)), 380 + int(rng.integers(0, 40))
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)  # smooth, JPEG-like content
        img.save(d / f"{i}.JPEG", quality=90)
        lines.append(f"train/n{label:08d}/{i}.JPEG {label}")
    (root / "ImageNet_LT_train.txt").write_text("\n".join(lines) + "\n")
    (root / "ImageNet_LT_test.txt").write_text("\n".join(lines[:classes]) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps for SGD and for SAM")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from step_timing import supervised_update

    from ltsam.data import build_lt_data
    from ltsam.losses import LDAMLoss
    from ltsam.models import build_model

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        make_jpegs(Path(tmp), args.images)
        data = build_lt_data("imagenet_lt", tmp, image_size=224)
        source = data.train_source(args.batch_size, 0, device, workers=args.workers)
        t0 = time.perf_counter()
        seen = 0
        for x, _ in source:
            seen += len(x)
        loader_ips = seen / (time.perf_counter() - t0)
        print(f"loader: {loader_ips:.1f} images/s ({args.workers} workers, {seen} JPEGs, decode + "
              f"RandomResizedCrop + flip + ColorJitter, 224x224)")
        batch = next(iter(source))
        result = {}
        for name in ("sgd", "sam"):
            model = build_model("resnet50", 1000, use_norm=True).to(device).train()
            criterion = LDAMLoss([1280 // (c + 1) + 5 for c in range(1000)]).to(device)
            step = supervised_update(model, name, lr=0.1, momentum=0.9, wd=2e-4, rho=0.5)
            step(model, batch[0], batch[1], criterion)  # warm-up
            times = []
            for _ in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                step(model, batch[0], batch[1], criterion)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            result[name] = args.batch_size / statistics.median(times)
            print(f"ResNet-50 {name.upper()} step: {result[name]:.1f} images/s (batch {args.batch_size}, {device})")
    print(f"loader_ips={loader_ips:.1f} sgd_ips={result['sgd']:.2f} sam_ips={result['sam']:.2f}")


if __name__ == "__main__":
    main()
