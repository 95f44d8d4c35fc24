"""Training throughput: a reference-style pipeline (a) against ltsam's default path (b), SGD and SAM.

    python benchmarks/train_epoch.py [--steps 20] [--rounds 3] [--no-compile] [--channels-last] [--amp bf16]

Same process, model (resnet32 with the cosine head, LDAM loss), batch size (128), data and number of
steps for both. The data are CIFAR-10-LT shaped (imbalance 0.01: 12,406 random uint8 3x32x32 images
with the exp long-tail counts), generated here, so no files are needed.

(a) reference: a torch Dataset of HWC uint8 arrays turned into PIL images, torchvision per-image
    RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize, a DataLoader (shuffle,
    2 persistent workers), the eager model, ``loss.item()`` and top-1/5 every step as the reference
    logs them, and plain SGD or a SAM written here the way the reference's sam.py (davda54) does it:
    per-parameter Python loops, ``old_p = p.data.clone()`` every step, ``p.add_(e_w)``, then
    ``p.data = old_p`` and the base SGD step.
(b) ltsam: ``InMemoryBatchSource`` (the uint8 set on the device, batched crop/flip/normalise),
    the registered step on the supervised objective (lean SAM) and ``torch.compile`` through ``compile_with_fallback``
    wherever the trainer's auto setting would compile a 200-epoch run (always on CUDA; on a CPU
    from 3000 steps on); with ``--amp bf16`` (b) runs under bf16 autocast as ``ltsam train --amp bf16`` does
    (parameters, gradients and SAM's perturbation stay fp32), while (a) stays fp32. On a CPU the device line
    says whether it computes bf16 natively (``ltsam.cpu_features``); where it does not, bf16 is emulated.

Each pipeline warms up first (untimed; for (b) this compiles, including the recompile for the short
last batch of an epoch and for evaluation, as a real run does), then the four pipelines are timed in
turn, A/B interleaved, for ``--rounds`` rounds of ``--steps`` steps. Before each timed window of (a),
as many untimed steps as the DataLoader has batches prefetched are run, so that the window sees the
loader's steady state rather than a queue filled while the other pipelines ran. The speed-up is the
median over rounds of b/a in images/s. The 200-epoch projection is 97 steps x 200 epochs at the
measured speed, plus an evaluation of 10,000 test images per epoch (timed on ``--eval-images``
random images, batch 100 with workers for (a), ltsam's in-memory ``evaluate`` for (b)), plus the
start-up overhead: the warm-up's wall time beyond what its steps and evaluation cost once warm
(compilation, for (b)).

The last line is ``sam_speedup=<b/a for SAM> sgd_speedup=<b/a for SGD>``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from step_timing import supervised_update  # a sibling script module (python benchmarks/NAME.py)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ltsam.acceleration import autocast_context, compile_with_fallback, should_compile
from ltsam.cpu_features import cpu_bf16_summary
from ltsam.data.sources import InMemoryBatchSource, eval_batches
from ltsam.evaluate import evaluate
from ltsam.losses import LDAMLoss, build_loss
from ltsam.models import build_model

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
COUNTS = [int(5000 * 0.01 ** (c / 9)) for c in range(10)]  # CIFAR-10-LT, imbalance 0.01: 12,406
TEST_IMAGES = 10_000
LR, MOMENTUM, WD = 0.02, 0.9, 2e-4  # epoch-1 LR of the CIFAR warm-up schedule


# ------------------------------------------------------------------ (a) the reference pipeline
class ReferenceCIFAR(Dataset):
    """What torchvision's CIFAR10 (and the reference's IMBALANCECIFAR10) do per item."""

    def __init__(self, data_hwc: np.ndarray, targets: list[int], transform: Callable):
        self.data, self.targets, self.transform = data_hwc, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


class ReferenceSAM(torch.optim.Optimizer):
    """SAM as the reference's sam.py does it: Python loops over parameters, a fresh clone of every
    weight each step, the weights put back by rebinding ``p.data``."""

    def __init__(self, params, base_optimizer, rho: float = 0.05, **kwargs):
        super().__init__(params, dict(rho=rho, adaptive=False, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = p.grad * scale.to(p)
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def _grad_norm(self) -> torch.Tensor:
        dev = self.param_groups[0]["params"][0].device
        return torch.norm(torch.stack([p.grad.norm(p=2).to(dev) for g in self.param_groups
                                       for p in g["params"] if p.grad is not None]), p=2)


def topk_percent(output: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """The reference's ``accuracy``: top-k hits in percent of the batch."""
    top = output.topk(max(ks), 1).indices.t()
    hit = top.eq(target[None])
    return [hit[:k].reshape(-1).float().sum() * (100.0 / len(target)) for k in ks]


class ReferencePipeline:
    """One optimisation step per call on the next DataLoader batch, logged as the reference logs."""

    def __init__(self, model: nn.Module, sam: bool, rho: float, batches: Iterator, device: torch.device):
        self.model, self.sam, self.batches, self.device = model, sam, batches, device
        if sam:
            self.optimizer = ReferenceSAM(model.parameters(), torch.optim.SGD, rho=rho, lr=LR,
                                          momentum=MOMENTUM, weight_decay=WD)
        else:
            self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        self.criterion = LDAMLoss(COUNTS).to(device)
        self.loss_sum = 0.0

    def train(self) -> None:
        self.model.train()

    def step(self) -> None:
        x, y = next(self.batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        output = self.model(x)
        loss = self.criterion(output, y)
        if self.sam:
            loss.backward()
            self.optimizer.first_step(zero_grad=True)
            output = self.model(x)
            loss = self.criterion(output, y)
            loss.backward()
            self.optimizer.second_step(zero_grad=True)
        else:
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        topk_percent(output, y)
        self.loss_sum += loss.item() * len(y)

    def evaluate(self, loader: DataLoader) -> None:
        self.model.eval()
        preds = []
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                output = self.model(x)
                self.criterion(output, y).item()
                topk_percent(output, y)
                preds.append(output.argmax(1).cpu())
        torch.cat(preds)


# ------------------------------------------------------------------ (b) ltsam's default path
class LtsamPipeline:
    """ltsam's step on the next ``InMemoryBatchSource`` batch; statistics accumulate on the device."""

    def __init__(self, model: nn.Module, net: nn.Module, sam: bool, rho: float, batches: Iterator,
                 device: torch.device, autocast: Callable = contextlib.nullcontext):
        self.model, self.net, self.batches, self.device = model, net, batches, device
        self.step_fn = supervised_update(model, "sam" if sam else "sgd", lr=LR, momentum=MOMENTUM, wd=WD,
                                         rho=rho, autocast=autocast)
        self.criterion = build_loss("ldam", COUNTS).to(device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)

    def train(self) -> None:
        self.net.train()

    def step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        x, y = next(self.batches) if batch is None else batch
        loss, logits = self.step_fn(self.net, x, y, self.criterion)
        self.loss_sum += loss.float() * len(y)
        self.correct += (logits.argmax(1) == y).sum()


# ------------------------------------------------------------------ helpers
def forever(iterable, set_epoch: Callable[[int], None] | None = None) -> Iterator:
    epoch = 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        yield from iterable
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def images_per_second(pipe, steps: int, batch_size: int, device: torch.device, lead_in: int = 1) -> float:
    """``lead_in`` untimed steps (a DataLoader's prefetch queue drains in them), then ``steps`` timed ones."""
    for _ in range(lead_in):
        pipe.step()

    def window() -> None:
        for _ in range(steps):
            pipe.step()

    return steps * batch_size / timed(window, device)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def make_data(seed: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(COUNTS)])
    images = torch.randint(0, 256, (len(targets), 3, 32, 32), dtype=torch.uint8, generator=g)
    test_targets = torch.arange(n_test) % len(COUNTS)
    test_images = torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, targets, test_images, test_targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per pipeline and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved A/B rounds")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    ap.add_argument("--epochs", type=int, default=200, help="run length the projection (and auto compile) assume")
    ap.add_argument("--eval-images", type=int, default=1000,
                    help="test images timed for the projection's per-epoch evaluation (scaled to 10,000)")
    ap.add_argument("--rho", type=float, default=0.8)
    ap.add_argument("--no-compile", action="store_true", help="run (b) eagerly")
    ap.add_argument("--channels-last", action="store_true", help="(b) in channels-last memory format")
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                    help="(b) under autocast in this dtype (fp16: CUDA only); (a) stays fp32")
    ap.add_argument("--cold-compile", action="store_true",
                    help="compile into an empty inductor cache (what a fresh machine pays)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cold_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ltsam-inductor-")

    device = torch.device(args.device)
    amp = None if args.amp == "none" else args.amp
    if amp == "fp16" and device.type != "cuda":
        ap.error("--amp fp16 needs CUDA (ltsam trains fp16 only there)")
    autocast = autocast_context(amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both the reference and ltsam's trainer set it
    torch.manual_seed(args.seed)
    bs = args.batch_size
    images, targets, test_images, test_targets = make_data(args.seed, args.eval_images)
    n = len(targets)
    steps_per_epoch = math.ceil(n / bs)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)

    # (a) DataLoaders over PIL images, per-image transforms.
    normalize = T.Normalize(MEAN, STD)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    test_tf = T.Compose([T.ToTensor(), normalize])
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    pin = device.type == "cuda"
    train_loader = DataLoader(ReferenceCIFAR(hwc, targets.tolist(), train_tf), batch_size=bs, shuffle=True,
                              num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=pin)
    test_loader = DataLoader(ReferenceCIFAR(test_images.permute(0, 2, 3, 1).contiguous().numpy(),
                                            test_targets.tolist(), test_tf),
                             batch_size=100, shuffle=False, num_workers=args.workers, pin_memory=pin)
    ref_batches = forever(train_loader)

    # (b) the in-memory source.
    source = InMemoryBatchSource(images, targets, bs, mean, std, pad=4, flip=True, seed=args.seed,
                                 device=device, channels_last=args.channels_last)
    ours_batches = forever(source, source.set_epoch)
    total_steps = steps_per_epoch * args.epochs
    use_compile = should_compile(False if args.no_compile else None, device, total_steps)

    def fresh_model(channels_last: bool) -> nn.Module:
        torch.manual_seed(args.seed)
        m = build_model("resnet32", 10, use_norm=True).to(device)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    def ours_eval(net: nn.Module, criterion: nn.Module) -> None:
        """The trainer's evaluation: in-memory test set, batches of 1000."""
        evaluate(net, eval_batches(test_images, test_targets, mean, std, 1000, device,
                                   channels_last=args.channels_last),
                 COUNTS, criterion, autocast=autocast if amp else None)

    pipes: dict[str, ReferencePipeline | LtsamPipeline] = {}
    startup: dict[str, float] = {}  # wall time of each pipeline's warm-up, compile included
    warm_steps: dict[str, float] = {}  # warm-up steps done (in full-batch units)
    warm_evals = {"a_sgd": 1, "b_sgd": 1, "a_sam": 0, "b_sam": 0}  # warm-up evaluations done
    compiled_ok = False
    for opt in ("sgd", "sam"):
        sam = opt == "sam"
        t0 = time.perf_counter()
        pipe_a = ReferencePipeline(fresh_model(False), sam, args.rho, ref_batches, device)
        pipe_a.train()
        for _ in range(args.warmup):
            pipe_a.step()
        if opt == "sgd":
            pipe_a.evaluate(test_loader)
        sync(device)
        startup[f"a_{opt}"] = time.perf_counter() - t0
        print(f"warm-up (a) {opt}: {startup[f'a_{opt}']:.1f} s", flush=True)
        warm_steps[f"a_{opt}"] = args.warmup
        pipes[f"a_{opt}"] = pipe_a

        t0 = time.perf_counter()
        model = fresh_model(args.channels_last)
        net = model
        x0, y0 = next(iter(source))
        if use_compile:
            def trial(m: nn.Module, x0=x0, y0=y0) -> None:  # the trainer's trial step
                m.train()
                build_loss("ce", COUNTS)(m(x0), y0).backward()

            net, compiled_ok = compile_with_fallback(model, trial)
        pipe_b = LtsamPipeline(model, net, sam, args.rho, ours_batches, device, autocast)
        pipe_b.train()
        for _ in range(args.warmup):
            pipe_b.step()
        tail = n % bs
        if use_compile and tail:  # an epoch's short last batch recompiles once in a real run
            pipe_b.step((x0[:tail], y0[:tail]))
        if opt == "sgd":  # in eval mode a compiled model compiles again
            ours_eval(net, pipe_b.criterion)
        sync(device)
        startup[f"b_{opt}"] = time.perf_counter() - t0
        print(f"warm-up (b) {opt}: {startup[f'b_{opt}']:.1f} s"
              f"{' (compiles, incl. last-batch and eval recompiles)' if use_compile else ''}", flush=True)
        warm_steps[f"b_{opt}"] = args.warmup + (tail / bs if use_compile and tail else 0.0)
        pipes[f"b_{opt}"] = pipe_b

    # Evaluation of the test images (the same cost for the SGD and the SAM model), warm.
    eval_once = {
        "a": timed(lambda: pipes["a_sgd"].evaluate(test_loader), device),
        "b": timed(lambda: ours_eval(pipes["b_sgd"].net, pipes["b_sgd"].criterion), device),
    }
    eval_s = {side: t * TEST_IMAGES / args.eval_images for side, t in eval_once.items()}

    drain = args.workers * 2 if args.workers > 0 else 0  # the DataLoader's prefetch queue
    ips: dict[str, list[float]] = {k: [] for k in pipes}
    for _ in range(args.rounds):
        for opt in ("sgd", "sam"):
            for side in ("a", "b"):
                pipe = pipes[f"{side}_{opt}"]
                pipe.train()
                lead_in = drain if side == "a" else 1
                ips[f"{side}_{opt}"].append(images_per_second(pipe, args.steps, bs, device, lead_in))

    threads = (f"{torch.get_num_threads()} threads; {cpu_bf16_summary()}" if device.type == "cpu"
               else torch.cuda.get_device_name(device))
    print(f"device {device} ({threads}); resnet32 (cosine head, LDAM), batch {bs}, {n} CIFAR-10-LT-shaped "
          f"images ({steps_per_epoch} steps/epoch); {args.rounds} rounds x {args.steps} timed steps")
    print(f"(a) reference: PIL + torchvision transforms, DataLoader {args.workers} persistent workers, eager, "
          f"per-parameter SAM with cloned weights")
    compile_note = ("torch.compile " + ("on" if compiled_ok else "FAILED, eager fallback")) if use_compile else (
        "eager (--no-compile)" if args.no_compile else f"eager (auto: {total_steps} steps do not warrant compiling)")
    print(f"(b) ltsam: InMemoryBatchSource, {compile_note}, lean SAM"
          f"{', channels-last' if args.channels_last else ''}{f', {amp} autocast' if amp else ', fp32'}")

    def overhead(key: str) -> float:
        """Warm-up wall time beyond what its steps and evaluations cost once warm (compilation, ...)."""
        warm = warm_steps[key] * bs / statistics.median(ips[key]) + warm_evals[key] * eval_once[key[0]]
        return max(0.0, startup[key] - warm)

    speedup: dict[str, float] = {}
    for opt in ("sgd", "sam"):
        a, b = ips[f"a_{opt}"], ips[f"b_{opt}"]
        speedup[opt] = statistics.median(bb / aa for aa, bb in zip(a, b))
        proj = {}
        for side, vals in (("a", a), ("b", b)):
            step_s = bs / statistics.median(vals)
            over = overhead(f"{side}_{opt}")
            if side == "b":  # a real run compiles once; the SAM model here reuses the SGD model's graphs
                over = max(over, overhead("b_sgd"))
            proj[side] = (args.epochs * (steps_per_epoch * step_s + eval_s[side]) + over, over)
        print(f"{opt.upper()}: (a) {statistics.median(a):7.1f} img/s  (b) {statistics.median(b):7.1f} img/s  "
              f"b/a {speedup[opt]:.3f}  [rounds a: {', '.join(f'{v:.0f}' for v in a)}; "
              f"b: {', '.join(f'{v:.0f}' for v in b)}]")
        print(f"{opt.upper()}: projected {args.epochs} epochs incl. eval: (a) {hours(proj['a'][0])}  "
              f"(b) {hours(proj['b'][0])} (start-up/compile {proj['b'][1]:.0f} s)  "
              f"[eval per epoch: a {eval_s['a']:.1f} s, b {eval_s['b']:.1f} s]")
    print(f"sam_speedup={speedup['sam']:.3f} sgd_speedup={speedup['sgd']:.3f}")


if __name__ == "__main__":
    main()
