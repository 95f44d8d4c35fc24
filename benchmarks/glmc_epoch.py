"""GLMC training throughput: a reference-style GLMC pipeline (a) against ltsam's eager (b) and compiled (c) paths.

    python benchmarks/glmc_epoch.py [--steps 10] [--rounds 3] [--arch resnet32]

Same process, model (``--arch`` with the four GLMC heads), batch size (64, GLMC's default), data and
steps for all. The data are CIFAR-10-LT IF 50 shaped (13,996 random uint8 3x32x32 images with the
exp long-tail counts), generated here.

(a) reference-style, as the reference GLMC code does it: a Dataset of HWC uint8 arrays turned into PIL
    images with a TwoCropTransform (per-image torchvision RandomCrop(32, pad 4) / flip / ToTensor /
    Normalize, twice); two DataLoaders of 2 persistent workers each, the shuffled one (A) and a
    WeightedRandomSampler one (B, weights n_c^-q); per step a discarded Beta(beta, beta) draw and
    lam ~ Beta(1, 1) from numpy, MixUp, an in-place CutMix with a numpy box, two forwards, the GLMC
    losses, the SAM of the reference's sam.py (per-parameter loops, cloned weights; both forwards
    again at the perturbed weights), ``loss.item()`` every step.
(b) ltsam eager: ``GLMCBatchSource`` (two batched crop/flip views of A and B from the uint8 tensor on
    the device) and ``GLMCUpdate`` (lean SAM), no compile.
(c) ltsam compiled: (b) with ``torch.compile`` through ``compile_with_fallback`` (what ``--compile`` does).

The pipelines warm up untimed (compiling for (c)), then are timed in turn, interleaved, for
``--rounds`` rounds of ``--steps`` steps; speed-ups are medians over rounds of the ratio of images/s.
The last line is ``glmc_sam_speedup=<c/a, SAM> glmc_sgd_speedup=<c/a, SGD> compile_gain_sam=<c/b> ...``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator

import numpy as np
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from train_epoch import MEAN, STD, ReferenceCIFAR, ReferenceSAM, forever, images_per_second, sync

from ltsam.acceleration import compile_with_fallback
from ltsam.glmc import GLMCBatchSource, GLMCUpdate, build_glmc_model, glmc_losses, label_weights, sample_weights
from ltsam.optim.sam import SAM

COUNTS = [int(5000 * 0.02 ** (c / 9)) for c in range(10)]  # CIFAR-10-LT, imbalance 0.02: 13,996
LR, MOMENTUM, WD, CW, GAMMA, Q = 0.01, 0.9, 5e-3, 1.0, 1.2, 0.0  # GLMC's run.sh (SAM row)
ALPHA = 0.75  # the cumulative weight half-way through a run


class TwoCrop:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return [self.transform(img), self.transform(img)]


class ReferenceSAMZeroGrads(ReferenceSAM):
    """The reference's SAM under PyTorch 1.x semantics, where ``zero_grad`` zeroes gradients instead of
    dropping them: parameters outside the ascent loss (GLMC's projection heads) then get a zero
    perturbation and are restored like the rest (with ``None`` gradients the restore would fail)."""

    def __init__(self, params, base_optimizer, **kwargs):
        params = list(params)
        super().__init__(params, base_optimizer, **kwargs)
        for p in params:
            p.grad = torch.zeros_like(p)

    def zero_grad(self, set_to_none: bool = False) -> None:
        super().zero_grad(set_to_none=False)


class ReferenceGLMC:
    """One GLMC step per call as the reference's Trainer does it."""

    def __init__(self, model: nn.Module, sam: bool, rho: float, batches_a: Iterator, batches_b: Iterator,
                 device: torch.device):
        self.model, self.sam, self.device = model, sam, device
        self.batches_a, self.batches_b = batches_a, batches_b
        if sam:
            self.optimizer = ReferenceSAMZeroGrads(model.parameters(), torch.optim.SGD, rho=rho, lr=LR,
                                                   momentum=MOMENTUM, weight_decay=WD)
        else:
            self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        self.w = label_weights(COUNTS, GAMMA).to(device)
        self.loss_sum = 0.0

    def _onehot(self, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(y), len(COUNTS), device=self.device).scatter_(1, y[:, None], 1.0)

    def step(self) -> None:
        (a1, a2), ya = next(self.batches_a)
        (b1, b2), yb = next(self.batches_b)
        a1, a2, ya, b1, b2, yb = (t.to(self.device, non_blocking=True) for t in (a1, a2, ya, b1, b2, yb))
        n = len(ya)
        b1, b2, yb = b1[:n], b2[:n], yb[:n]
        ea, eb = self._onehot(ya), self._onehot(yb)
        np.random.beta(0.5, 0.5)  # the reference's discarded draw
        lam = float(np.random.beta(1.0, 1.0))
        x_mix = lam * a1 + (1 - lam) * b1
        s2, s3 = a2.shape[2], a2.shape[3]
        k2, k3 = int(np.ceil(s2 * np.sqrt(1 - lam))), int(np.ceil(s3 * np.sqrt(1 - lam)))
        c2, c3 = np.random.randint(s2), np.random.randint(s3)
        r0, r1 = np.clip(c2 - k2 // 2, 0, s2), np.clip(c2 + k2 // 2, 0, s2)
        q0, q1 = np.clip(c3 - k3 // 2, 0, s3), np.clip(c3 + k3 // 2, 0, s3)
        a2[:, :, r0:r1, q0:q1] = b2[:, :, r0:r1, q0:q1]
        y = lam * ea + (1 - lam) * eb
        y_w = lam * ea * self.w + (1 - lam) * eb * self.w

        def losses():
            return glmc_losses(self.model(x_mix), self.model(a2), y, y_w, y, y_w, alpha=ALPHA, contrast_weight=CW)

        first = losses()
        if self.sam:
            first.cls.backward()
            self.optimizer.first_step(zero_grad=True)
            losses().total.backward()
            self.optimizer.second_step(zero_grad=True)
        else:
            self.optimizer.zero_grad()
            first.total.backward()
            self.optimizer.step()
        self.loss_sum += first.cls.item() * n


class LtsamGLMC:
    def __init__(self, net: nn.Module, model: nn.Module, sam: bool, rho: float, batches: Iterator,
                 device: torch.device):
        params = model.parameters()
        opt = (SAM(params, torch.optim.SGD, rho=rho, lr=LR, momentum=MOMENTUM, weight_decay=WD) if sam
               else torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD))
        self.net, self.batches = net, batches
        self.step_fn = GLMCUpdate(opt, label_weights(COUNTS, GAMMA).to(device), len(COUNTS), CW,
                                torch.Generator().manual_seed(0), sam)
        self.loss_sum = torch.zeros((), device=device)

    def step(self) -> None:
        a, b = next(self.batches)
        out = self.step_fn(self.net, a, b, ALPHA)
        self.loss_sum += out["loss"] * len(a[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per pipeline and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers per loader of (a)")
    ap.add_argument("--arch", default="resnet32", help="backbone carrying the GLMC heads")
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    np.random.seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    targets = torch.cat([torch.full((k,), c, dtype=torch.long) for c, k in enumerate(COUNTS)])
    images = torch.randint(0, 256, (len(targets), 3, 32, 32), dtype=torch.uint8, generator=g)
    bs = args.batch_size

    tf = TwoCrop(T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                            T.Normalize(MEAN, STD)]))
    ds = ReferenceCIFAR(images.permute(0, 2, 3, 1).contiguous().numpy(), targets.tolist(), tf)
    kw = dict(batch_size=bs, num_workers=args.workers, persistent_workers=args.workers > 0,
              pin_memory=device.type == "cuda")
    loader_a = DataLoader(ds, shuffle=True, **kw)
    weights = sample_weights(targets, COUNTS, Q)
    loader_b = DataLoader(ds, sampler=WeightedRandomSampler(weights, len(ds), replacement=True), **kw)
    ref_a, ref_b = forever(loader_a), forever(loader_b)
    source = GLMCBatchSource(images, targets, bs, torch.tensor(MEAN), torch.tensor(STD), seed=args.seed,
                             device=device, resample_q=Q, cls_num_list=COUNTS)
    ours = forever(source, source.set_epoch)

    def fresh_model() -> nn.Module:
        torch.manual_seed(args.seed)
        return build_glmc_model(args.arch, len(COUNTS)).to(device)

    pipes: dict[str, ReferenceGLMC | LtsamGLMC] = {}
    compiled_ok = False
    for opt in ("sgd", "sam"):
        sam = opt == "sam"
        pipes[f"a_{opt}"] = ReferenceGLMC(fresh_model(), sam, args.rho, ref_a, ref_b, device)
        model = fresh_model()
        pipes[f"b_{opt}"] = LtsamGLMC(model, model, sam, args.rho, ours, device)
        model = fresh_model()
        a0, _ = next(iter(source))

        def trial(m: nn.Module, x0=a0[0]) -> None:
            m.train()
            sum(o.float().sum() for o in m(x0)).backward()

        net, compiled_ok = compile_with_fallback(model, trial)
        pipes[f"c_{opt}"] = LtsamGLMC(net, model, sam, args.rho, ours, device)
        for key in ("a", "b", "c"):
            pipe = pipes[f"{key}_{opt}"]
            for _ in range(args.warmup):
                pipe.step()
        print(f"warm-up {opt} done", flush=True)

    drain = 2 * args.workers
    ips: dict[str, list[float]] = {k: [] for k in pipes}
    for _ in range(args.rounds):
        for opt in ("sgd", "sam"):
            for side in ("a", "b", "c"):
                lead_in = drain if side == "a" else 1
                ips[f"{side}_{opt}"].append(images_per_second(pipes[f"{side}_{opt}"], args.steps, bs, device, lead_in))
        sync(device)

    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"device {device} ({threads}); GLMC on {args.arch} + heads, batch {bs}, {len(targets)} CIFAR-10-LT IF 50 "
          f"shaped images; {args.rounds} rounds x {args.steps} timed steps; (c) compile "
          f"{'on' if compiled_ok else 'FAILED, eager'}")

    def ratio(num: str, den: str) -> float:
        return statistics.median(x / y for x, y in zip(ips[num], ips[den]))

    result = {}
    for opt in ("sgd", "sam"):
        med = {s: statistics.median(ips[f"{s}_{opt}"]) for s in "abc"}
        result[opt] = (ratio(f"c_{opt}", f"a_{opt}"), ratio(f"c_{opt}", f"b_{opt}"), ratio(f"b_{opt}", f"a_{opt}"))
        print(f"{opt.upper()}: (a) reference {med['a']:.1f} img/s  (b) ltsam eager {med['b']:.1f}  "
              f"(c) ltsam compiled {med['c']:.1f}  c/a {result[opt][0]:.3f}  c/b {result[opt][1]:.3f}  "
              f"b/a {result[opt][2]:.3f}")
    print(f"glmc_sam_speedup={result['sam'][0]:.3f} glmc_sgd_speedup={result['sgd'][0]:.3f} "
          f"compile_gain_sam={result['sam'][1]:.3f} compile_gain_sgd={result['sgd'][1]:.3f}")


if __name__ == "__main__":
    main()
