"""Per-class Hessian analysis: a reference-style implementation against ltsam's, in one process.

Both run on the same model, classes, batch size and settings (power iteration 100/1e-3,
Hutchinson 100/1e-3, Lanczos 100 steps by default). The baseline below does what the reference
script does (PyHessian in "full dataset" mode): one vector per pass over the data, each pass a
forward, a backward with ``create_graph`` and a second backward per batch; power iteration,
Hutchinson and Lanczos one after the other, on lists of per-parameter tensors; its full
re-orthogonalisation loops over the earlier Lanczos vectors like PyHessian's ``orthnormal``, which
on a CPU costs more than the Hessian products by the 100th step. ltsam runs
``analyze_classes(method="fast")`` class by class, the two alternating.

    python benchmarks/hessian.py                  # tail class (50 images) + 10 classes x <=100
    python benchmarks/hessian.py --quick          # a sanity check in about a minute
    python benchmarks/hessian.py --checkpoint ckpt.pt --max-per-class 200

The model is ResNet-32 (10 classes), from ``--checkpoint`` (a state_dict, or a dict holding one
under "state_dict"/"model"), else trained for a few SGD steps on synthetic CIFAR-10-LT-shaped
data so that it is not at its initialisation. The last line is ``hessian_speedup=<ratio>`` for
the all-classes case.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ltsam.hessian import analyze_classes
from ltsam.models import build_model

NUM_CLASSES = 10
HEAD_SIZE, IMB_FACTOR = 5000, 0.01  # CIFAR-10-LT with imbalance ratio 100: 5000 ... 50 images


# -- model and data --------------------------------------------------------------------------------
def lt_sizes(max_per_class: int) -> list[int]:
    """CIFAR-10-LT class sizes ``5000 * 0.01**(c/9)``, capped at ``max_per_class``."""
    sizes = [int(HEAD_SIZE * IMB_FACTOR ** (c / (NUM_CLASSES - 1))) for c in range(NUM_CLASSES)]
    return [min(n, max_per_class) for n in sizes]


def synthetic_data(sizes: list[int], seed: int, noise_seed: int) -> tuple[Tensor, Tensor]:
    """Normalised 3x32x32 images: a random pattern per class (from ``seed``) plus noise."""
    prototypes = torch.randn(NUM_CLASSES, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(noise_seed)
    xs, ys = [], []
    for c, n in enumerate(sizes):
        xs.append(0.5 * prototypes[c] + torch.randn(n, 3, 32, 32, generator=g))
        ys.append(torch.full((n,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def make_model(checkpoint: str | None, train_steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet32", NUM_CLASSES)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state:
                state = state[key]
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        return model.eval()
    # A few SGD steps on long-tailed synthetic batches: away from the initialisation, and
    # batch-norm running statistics that fit the data.
    x, y = synthetic_data(lt_sizes(HEAD_SIZE), seed, seed + 1000)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
    model.train()
    for _ in range(train_steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


# -- the baseline: what the reference does, written out ---------------------------------------------
def _dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys, strict=True))


def _normalise(vs: list[Tensor]) -> list[Tensor]:
    norm = math.sqrt(float(_dot(vs, vs))) + 1e-6
    return [v / norm for v in vs]


def _orthonormal(w: list[Tensor], basis: list[list[Tensor]]) -> list[Tensor]:
    for v in basis:
        w = [wi - float(_dot(w, v)) * vi for wi, vi in zip(w, v, strict=True)]
    return _normalise(w)


class ReferenceHessian:
    """PyHessian-style: lists of tensors, one Hessian-vector product per pass over the data."""

    def __init__(self, model: nn.Module, criterion: nn.Module, batches: list[tuple[Tensor, Tensor]]):
        self.model, self.criterion, self.batches = model, criterion, batches
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.products = 0

    def hv(self, v: list[Tensor]) -> tuple[float, list[Tensor]]:
        total = [torch.zeros_like(p) for p in self.params]
        count = 0
        for x, y in self.batches:
            loss = self.criterion(self.model(x), y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            hv = torch.autograd.grad(grads, self.params, v)
            total = [t + h * len(y) for t, h in zip(total, hv, strict=True)]
            count += len(y)
        total = [t / count for t in total]
        self.products += 1
        return float(_dot(total, v)), total

    def eigenvalue(self, iters: int, tol: float) -> tuple[float, int]:
        v = _normalise([torch.randn_like(p) for p in self.params])
        value = None
        for i in range(iters):
            current, hv = self.hv(v)
            v = _normalise(hv)
            if value is not None and abs(value - current) / (abs(value) + 1e-6) < tol:
                return current, i + 1
            value = current
        return value, iters

    def trace(self, iters: int, tol: float) -> list[float]:
        samples, mean = [], 0.0
        for _ in range(iters):
            v = [torch.randint_like(p, 2) * 2 - 1 for p in self.params]
            samples.append(self.hv(v)[0])
            if abs(sum(samples) / len(samples) - mean) / (abs(mean) + 1e-6) < tol:
                break
            mean = sum(samples) / len(samples)
        return samples

    def density(self, steps: int) -> tuple[Tensor, Tensor]:
        v = _normalise([torch.randint_like(p, 2) * 2 - 1 for p in self.params])
        basis, alphas, betas = [v], [], []
        w = None
        for i in range(steps):
            if i > 0:
                beta = math.sqrt(float(_dot(w, w)))
                betas.append(beta)
                w = w if beta != 0 else [torch.randn_like(p) for p in self.params]
                v = _orthonormal(w, basis)
                basis.append(v)
            _, hv = self.hv(v)
            alpha = float(_dot(hv, v))
            alphas.append(alpha)
            w = [h - alpha * vi for h, vi in zip(hv, v, strict=True)]
            if i > 0:
                w = [wi - betas[-1] * vp for wi, vp in zip(w, basis[-2], strict=True)]
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        b = torch.tensor(betas, dtype=torch.float64)
        T = T + torch.diag(b, 1) + torch.diag(b, -1)
        nodes, U = torch.linalg.eigh(T)  # the reference's torch.eig no longer exists
        return nodes, U[0, :] ** 2


def reference_analysis(model: nn.Module, x: Tensor, y: Tensor, classes: list[int], args
                       ) -> dict[int, dict]:
    """The reference script's per-class loop (validate, eigenvalue, trace, density)."""
    criterion = nn.CrossEntropyLoss()
    out = {}
    for c in classes:
        xc, yc = x[y == c], y[y == c]
        batches = list(zip(xc.split(args.batch_size), yc.split(args.batch_size), strict=True))
        with torch.no_grad():
            loss = sum(float(criterion(model(a), b)) * len(b) for a, b in batches) / len(yc)
        hessian = ReferenceHessian(model, criterion, batches)
        torch.manual_seed(args.seed + c)
        top, top_iters = hessian.eigenvalue(args.iters, args.tol)
        samples = hessian.trace(args.iters, args.tol)
        nodes, _ = hessian.density(args.slq_steps)
        n = len(samples)
        se = float(torch.tensor(samples).std()) / math.sqrt(n) if n > 1 else float("nan")
        out[c] = {"count": len(yc), "loss": loss, "lambda_dominant": top, "power_iters": top_iters,
                  "trace": sum(samples) / n, "trace_se": se, "trace_iters": n,
                  "esd_min": float(nodes.min()), "esd_max": float(nodes.max()),
                  "products": hessian.products}
    return out


def ltsam_analysis(model: nn.Module, x: Tensor, y: Tensor, classes: list[int], args
                   ) -> dict[int, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        summary = analyze_classes(
            model, nn.CrossEntropyLoss(), x, y, classes=classes, out_dir=tmp, batch_size=args.batch_size,
            power_iters=args.iters, power_tol=args.tol, trace_iters=args.iters,
            trace_tol=args.tol, slq_steps=args.slq_steps, seed=args.seed, method=args.method,
            progress=False, include_all=False, cache_samples=args.cache_samples)
    out = {}
    for c in classes:
        e = summary["entries"][str(c)]
        out[c] = {"count": e["count"], "loss": e["loss"], "lambda_dominant": e["lambda_dominant"],
                  "power_iters": e["lambda_dominant_iterations"] if e["lambda_dominant_source"] ==
                  "power_iteration" else 0, "trace": e["trace"],
                  "trace_se": e["trace_std_error"] or float("nan"),
                  "trace_iters": e["trace_iterations"], "esd_min": e["esd_lambda_min"],
                  "esd_max": e["esd_lambda_max"], "products": e["hessian_vectors"]}
    return out


# -- report ----------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    name: str
    wall_ref: float
    wall_ltsam: float
    cpu_ref: float
    cpu_ltsam: float

    @property
    def speedup(self) -> float:
        return self.wall_ref / self.wall_ltsam


def print_estimates(ref: dict[int, dict], new: dict[int, dict]) -> None:
    head = (f"{'class':>5} {'n':>4} | {'ldom ref':>9} {'ldom ltsam':>10} {'rel':>8} | "
            f"{'trace ref (se, k)':>24} {'trace ltsam (se, k)':>24} {'z':>5} | "
            f"{'esd min ref/ltsam':>19} | {'HVPs ref/ltsam':>14}")
    print(head)
    print("-" * len(head))
    for c in ref:
        a, b = ref[c], new[c]
        rel = abs(b["lambda_dominant"] - a["lambda_dominant"]) / abs(a["lambda_dominant"])
        z = abs(b["trace"] - a["trace"]) / math.hypot(a["trace_se"], b["trace_se"])
        print(f"{c:>5} {a['count']:>4} | {a['lambda_dominant']:>9.4f} {b['lambda_dominant']:>10.4f} "
              f"{rel:>8.1e} | {a['trace']:>9.2f} ({a['trace_se']:>6.2f}, {a['trace_iters']:>3}) "
              f"{b['trace']:>9.2f} ({b['trace_se']:>6.2f}, {b['trace_iters']:>3}) {z:>5.2f} | "
              f"{a['esd_min']:>9.3f}/{b['esd_min']:<9.3f} | {a['products']:>6}/{b['products']:<7}")


def _timed(fn, *args) -> tuple[dict[int, dict], float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_case(name: str, model: nn.Module, x: Tensor, y: Tensor, classes: list[int], args
             ) -> CaseResult:
    """Both implementations class by class, alternating which goes first, so that a change in
    the machine's load during the run falls on both."""
    print(f"\n== {name}: classes {classes}, {len(y)} images, batch {args.batch_size} ==",
          flush=True)
    ref: dict[int, dict] = {}
    new: dict[int, dict] = {}
    totals = {"ref": [0.0, 0.0], "ltsam": [0.0, 0.0]}
    impls = {"ref": (reference_analysis, ref), "ltsam": (ltsam_analysis, new)}
    for i, c in enumerate(classes):
        for key in (("ref", "ltsam") if i % 2 == 0 else ("ltsam", "ref")):
            fn, store = impls[key]
            rows, wall, cpu = _timed(fn, model, x, y, [c], args)
            store.update(rows)
            totals[key][0] += wall
            totals[key][1] += cpu
            print(f"  class {c} {key:<5}: {wall:7.1f} s wall, {cpu:7.1f} s cpu, "
                  f"{rows[c]['products']} Hessian-vector products", flush=True)
    print_estimates(ref, new)
    (wall_ref, cpu_ref), (wall_ltsam, cpu_ltsam) = totals["ref"], totals["ltsam"]
    result = CaseResult(name, wall_ref, wall_ltsam, cpu_ref, cpu_ltsam)
    print(f"{name}: reference {result.wall_ref:.1f} s, ltsam ({args.method}) "
          f"{result.wall_ltsam:.1f} s, speedup {result.speedup:.2f}x (cpu time "
          f"{result.cpu_ref / result.cpu_ltsam:.2f}x)", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="state_dict of a 10-class resnet32 (default: train briefly)")
    p.add_argument("--max-per-class", type=int, default=100)
    p.add_argument("--tail-size", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=100, help="power iteration and Hutchinson")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--slq-steps", type=int, default=100)
    p.add_argument("--method", choices=["fast", "reference"], default="fast")
    p.add_argument("--cache-samples", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--cases", default="tail,all", help="comma list of: tail, all")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 5 iterations")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.slq_steps, args.max_per_class, args.tail_size = 5, 5, 8, 8
        args.train_steps = min(args.train_steps, 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; iters {args.iters}, "
          f"tol {args.tol}, slq steps {args.slq_steps}, batch {args.batch_size}", flush=True)
    model = make_model(args.checkpoint, args.train_steps, args.seed)
    results = []
    cases = args.cases.split(",")
    if "tail" in cases:
        tail = NUM_CLASSES - 1
        sizes = [0] * (NUM_CLASSES - 1) + [args.tail_size]
        x, y = synthetic_data(sizes, args.seed, args.seed + 1)
        results.append(run_case("tail", model, x, y, [tail], args))
    if "all" in cases:
        x, y = synthetic_data(lt_sizes(args.max_per_class), args.seed, args.seed + 2)
        results.append(run_case("all", model, x, y, list(range(NUM_CLASSES)), args))
    print("\ncase   reference_s   ltsam_s   speedup   cpu_ref_s  cpu_ltsam_s  cpu_speedup")
    for r in results:
        print(f"{r.name:<6} {r.wall_ref:>11.1f} {r.wall_ltsam:>9.1f} {r.speedup:>8.2f}x "
              f"{r.cpu_ref:>11.1f} {r.cpu_ltsam:>12.1f} {r.cpu_ref / r.cpu_ltsam:>11.2f}x")
    print(f"hessian_speedup={results[-1].speedup:.2f}")


if __name__ == "__main__":
    main()
