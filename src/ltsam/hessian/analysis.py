"""Per-class Hessian analysis: for each class, the spectrum of the Hessian of that class's loss.

For class ``c`` with ``n_c`` samples, ``H_c`` is the Hessian of the mean loss over those samples
(model in eval mode). Per class we record the sample count, loss, accuracy, the Hutchinson trace,
the stochastic Lanczos quadrature (SLQ) nodes and weights, and three eigenvalue estimates:

* ``lambda_dominant`` -- the eigenvalue of largest *magnitude* (what power iteration finds, and
  what the paper's PyHessian code calls the "top eigenvalue"); negative when the most curved
  direction curves down. Format 1 of ``summary.json`` stored it as ``lambda_max``.
* ``esd_lambda_max`` -- the largest *algebraic* Ritz value over all SLQ runs (estimates the
  largest eigenvalue from below).
* ``esd_lambda_min`` -- the smallest algebraic Ritz value (estimates the smallest eigenvalue
  from above).

``ratio = esd_lambda_min / esd_lambda_max`` is the lambda_min/lambda_max the paper reports as a
measure of negative curvature (the reference logged the inverse as ``lambda_ratio``).

Two methods give the same quantities:

* ``"reference"``: as the reference script — power iteration for ``lambda_dominant``, plain
  Hutchinson for the trace, then SLQ, each a separate sequence of Hessian products.
* ``"fast"``: SLQ first; ``lambda_dominant`` is its Ritz value of largest magnitude (no power
  iteration: ``m`` Lanczos steps span the ``m``-th power iterate, so from the same start their
  extreme Ritz value is at least as close as the power iteration's Rayleigh quotient, and it
  comes with a residual bound), and the Hutchinson probes are deflated by the Lanczos basis
  ``Q``: ``tr(H) = tr(Q^T H Q) + E[z^T P H P z]``, ``P = I - Q Q^T``, which leaves the
  expectation alone but takes the dominant directions out of the variance, so the same stopping
  rule stops sooner and the estimate is tighter.

Both keep the gradient graphs of up to ``cache_samples`` samples between Hessian products.

``out_dir/summary.json`` is rewritten (atomically) after every class; a rerun with the same
settings, model and data keeps the classes it holds and computes only the missing ones.
:func:`load_summary` (and so :func:`compare_runs` and ``ltsam hessian-compare``) also reads
format-1 summaries, renaming their ``lambda_max*`` keys; a rerun recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ltsam.errors import UserError
from ltsam.hessian import plots
from ltsam.hessian.estimators import LanczosResult, hutchinson_trace, lanczos, power_iteration
from ltsam.hessian.operator import Batch, HessianOperator, LossFn
from ltsam.hessian.spectrum import DEFAULT_CACHE_SAMPLES

# Format 2 renamed lambda_max* (the eigenvalue of largest magnitude) to lambda_dominant*; a
# format-2 summary no longer has a lambda_max key.
SUMMARY_FORMAT = "ltsam.hessian.summary/2"
LEGACY_FORMATS = ("ltsam.hessian.summary/1",)
ALL = "all"
METHODS = ("fast", "reference")


@dataclass(frozen=True, kw_only=True)
class AnalysisSettings:
    """Everything that determines the numbers; a stored class is reused only if these match."""

    method: str
    batch_size: int
    power_iters: int
    power_tol: float
    trace_iters: int
    trace_tol: float
    slq_steps: int
    slq_runs: int
    seed: int
    model_sha: str
    data_sha: str


# -- fingerprints and files ----------------------------------------------------------------------
def _sha(tensors: Sequence[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)  # readers see the old or the new file, never half of one


def upgrade_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A format-1 entry in format-2 names: ``lambda_max*`` becomes ``lambda_dominant*``."""
    old = "lambda_max"
    return {("lambda_dominant" + k[len(old):] if k.startswith(old) else k): v for k, v in entry.items()}


def upgrade_summary(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` in the current format: a format-1 summary gets renamed keys (a new dict)."""
    if data.get("format") not in LEGACY_FORMATS:
        return data
    entries = {k: upgrade_entry(e) for k, e in data.get("entries", {}).items()}
    return {**data, "format": SUMMARY_FORMAT, "entries": entries}


def load_summary(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A summary as a dict, from itself, a ``summary.json`` path or the folder holding one.

    Format-1 summaries (written before ``lambda_max`` was renamed ``lambda_dominant``) come back
    in the current format, see :func:`upgrade_summary`.
    """
    if isinstance(source, dict):
        return upgrade_summary(source)
    path = Path(source)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise UserError(f"no Hessian summary at {path}; run the Hessian analysis first")
    data = json.loads(path.read_text())
    if data.get("format") not in (SUMMARY_FORMAT, *LEGACY_FORMATS):
        raise UserError(f"{path} is not an ltsam Hessian summary ({SUMMARY_FORMAT})")
    return upgrade_summary(data)


def _resumable(path: Path, settings: AnalysisSettings) -> dict[str, dict[str, Any]]:
    """Entries of an earlier run with identical settings; none if settings or format differ
    (format-1 runs used a Lanczos recurrence that is less accurate near breakdown)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if data.get("format") != SUMMARY_FORMAT or data.get("settings") != asdict(settings):
        return {}
    return dict(data.get("entries", {}))


# -- per-subset computation ----------------------------------------------------------------------
def make_batches(inputs: Tensor, targets: Tensor, batch_size: int) -> list[Batch]:
    """Consecutive chunks of ``batch_size`` samples (the last may be smaller)."""
    return list(zip(inputs.split(batch_size), targets.split(batch_size), strict=True))


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]) -> tuple[float, float]:
    """Sample-weighted mean loss and accuracy (%, top-1) over the batches."""
    device = next(model.parameters()).device
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        total += len(y)
    return loss_sum / total, 100.0 * correct / total


def hessian_stats(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch],
                  settings: AnalysisSettings, cache_samples: int) -> dict[str, Any]:
    """Dominant eigenvalue, trace and SLQ spectrum of the Hessian over ``batches``.

    ``lambda_dominant`` is the eigenvalue of largest magnitude (it may be negative), with
    ``lambda_dominant_source`` (``power_iteration`` or ``lanczos``), ``_iterations``,
    ``_converged`` and, from Lanczos, ``_residual`` (a bound on its distance to an eigenvalue).
    ``esd_lambda_max`` / ``esd_lambda_min`` are the largest / smallest algebraic Ritz values of
    all SLQ runs. With ``method="fast"`` ``lambda_dominant`` is one of those two.
    """
    op = HessianOperator(model, loss_fn, batches, cache_samples=cache_samples)
    s = settings
    seeds = {"power": s.seed, "trace": s.seed + 1, "slq": s.seed + 2}

    def lanczos_runs() -> list[LanczosResult]:
        # One run after the other: with the gradient graphs cached, one vector per product is
        # the cheapest on a CPU (batching vectors only paid off without the cache).
        return [lanczos(op, s.slq_steps, seeds["slq"] + r,
                        keep_basis=(r == 0 and s.method == "fast")) for r in range(s.slq_runs)]

    out: dict[str, Any] = {}
    if s.method == "reference":
        top = power_iteration(op, s.power_iters, s.power_tol, seeds["power"])
        out.update(lambda_dominant=top.value, lambda_dominant_source="power_iteration",
                   lambda_dominant_iterations=top.iterations, lambda_dominant_converged=top.converged)
        tr = hutchinson_trace(op, s.trace_iters, s.trace_tol, seeds["trace"])
        trace_method = "hutchinson"
        runs = lanczos_runs()
    else:
        runs = lanczos_runs()
        best = max(runs, key=lambda r: abs(r.extreme[0]))
        value, residual = best.extreme
        out.update(lambda_dominant=value, lambda_dominant_source="lanczos",
                   lambda_dominant_iterations=len(best.alphas),
                   lambda_dominant_converged=residual <= s.power_tol * abs(value),
                   lambda_dominant_residual=residual)
        tr = hutchinson_trace(op, s.trace_iters, s.trace_tol, seeds["trace"],
                              basis=runs[0].basis, offset=float(runs[0].alphas.sum()))
        trace_method = "hutchinson_lanczos_deflated"
        runs[0].basis = None
    op.release()
    nodes = torch.stack([r.nodes for r in runs])
    weights = torch.stack([r.weights for r in runs])
    lo, hi = float(nodes.min()), float(nodes.max())
    out.update(
        trace=tr.value, trace_method=trace_method, trace_iterations=tr.iterations,
        trace_converged=tr.converged,
        trace_std_error=tr.std_error if math.isfinite(tr.std_error) else None,
        esd_lambda_min=lo, esd_lambda_max=hi, ratio=lo / hi if hi != 0 else None,
        nodes=nodes.tolist(), weights=weights.tolist(),
        hessian_vectors=op.vectors, data_passes=op.passes,
    )
    return out


def analyze_subset(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                   settings: AnalysisSettings, cache_samples: int) -> dict[str, Any]:
    """All recorded quantities for one subset of samples (one class, or all of them)."""
    start = time.perf_counter()
    batches = make_batches(inputs, targets, settings.batch_size)
    entry: dict[str, Any] = {"count": len(targets)}
    if not batches:
        return entry
    entry["loss"], entry["accuracy"] = evaluate(model, loss_fn, batches)
    entry.update(hessian_stats(model, loss_fn, batches, settings, cache_samples))
    entry["seconds"] = time.perf_counter() - start
    return entry


# -- the driver ----------------------------------------------------------------------------------
def _spectrum(entry: dict[str, Any]) -> tuple[Tensor, Tensor]:
    return torch.tensor(entry["nodes"]), torch.tensor(entry["weights"])


def _plot_class(entry: dict[str, Any], key: str, out_dir: Path, redraw: bool) -> None:
    path = out_dir / f"esd_class_{key}.png"
    if "nodes" in entry and (redraw or not path.exists()):
        plots.plot_esd(*_spectrum(entry), path, title=f"class {key} (n={entry['count']})")


def analyze_classes(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, *,
                    classes: Sequence[int], out_dir: str | Path, batch_size: int = 128,
                    power_iters: int = 100, power_tol: float = 1e-3, trace_iters: int = 100,
                    trace_tol: float = 1e-3, slq_steps: int = 100, slq_runs: int = 1,
                    seed: int = 0, method: str = "fast",
                    class_sizes: Sequence[int] | None = None, progress: bool = True,
                    include_all: bool = True,
                    cache_samples: int = DEFAULT_CACHE_SAMPLES) -> dict[str, Any]:
    """Hessian spectrum of each class's mean loss, and of all samples together.

    ``inputs`` are model-ready (normalised) tensors and ``targets`` class indices; class ``c``
    uses the samples with ``targets == c``, in order, in batches of ``batch_size``. Writes
    ``summary.json`` (after every class, resumable), ``esd_class_<c>.png`` per class (and
    ``esd_class_all.png``), ``esd_grid.png`` (classes head to tail: by ``class_sizes``
    descending when given) and ``eigen_by_class.png`` (lambda_dominant, the largest and smallest
    Ritz values and the trace against class size; sizes from ``class_sizes[c]``, else the
    analysed counts). Returns the summary; its entries' keys are those of :func:`hessian_stats`
    plus ``count``, ``loss``, ``accuracy`` and ``seconds``.
    """
    if method not in METHODS:
        raise UserError(f"unknown Hessian method {method!r}; choose one of {', '.join(METHODS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    settings = AnalysisSettings(method=method, batch_size=batch_size, power_iters=power_iters,
                                power_tol=power_tol, trace_iters=trace_iters, trace_tol=trace_tol,
                                slq_steps=slq_steps, slq_runs=slq_runs, seed=seed, model_sha=_sha(params),
                                data_sha=_sha([inputs, targets]))
    summary_path = out / "summary.json"
    keys = [str(int(c)) for c in classes] + ([ALL] if include_all else [])
    kept = _resumable(summary_path, settings)
    entries = {k: kept[k] for k in keys if k in kept}
    summary = {"format": SUMMARY_FORMAT, "settings": asdict(settings), "order": keys,
               "entries": entries}
    was_training = model.training
    model.eval()
    try:
        for key in tqdm(keys, desc="hessian", unit="class", disable=not progress):
            fresh = key not in entries
            if fresh:
                mask = slice(None) if key == ALL else targets == int(key)
                entries[key] = analyze_subset(model, loss_fn, inputs[mask], targets[mask],
                                              settings, cache_samples)
                _write_json_atomic(summary_path, summary)
            _plot_class(entries[key], key, out, redraw=fresh)
    finally:
        model.train(was_training)
    _write_json_atomic(summary_path, summary)
    _plot_overview(summary, class_sizes, out)
    return summary


# Panels of eigen_by_class.png: (title, entry key).
SERIES = (("λ dominant (largest |λ|)", "lambda_dominant"), ("λ max (largest Ritz value)", "esd_lambda_max"),
          ("λ min (smallest Ritz value)", "esd_lambda_min"), ("trace", "trace"))


def _plot_overview(summary: dict[str, Any], class_sizes: Sequence[int] | None,
                   out: Path) -> None:
    entries = summary["entries"]
    keys = [k for k in summary["order"] if k != ALL and "nodes" in entries.get(k, {})]
    if not keys:
        return
    sizes = [class_sizes[int(k)] if class_sizes is not None else entries[k]["count"]
             for k in keys]
    head_to_tail = sorted(zip(keys, sizes, strict=True), key=lambda ks: -ks[1])
    plots.plot_esd_grid([(f"class {k} (n={n})", *_spectrum(entries[k])) for k, n in head_to_tail],
                        out / "esd_grid.png")
    series = {name: [entries[k][field] for k in keys] for name, field in SERIES}
    plots.plot_eigen_by_class(keys, sizes, series, out / "eigen_by_class.png")


# -- comparing two runs --------------------------------------------------------------------------
COMPARED = ("count", "loss", "accuracy", "lambda_dominant", "trace", "esd_lambda_min",
            "esd_lambda_max", "ratio")


def compare_runs(summary_a: str | Path | dict[str, Any], summary_b: str | Path | dict[str, Any],
                 out_path: str | Path, labels: tuple[str, str] = ("A", "B")
                 ) -> list[dict[str, Any]]:
    """Spectra of two runs for their common classes, side by side, and their differences.

    Each summary is a dict, a ``summary.json`` or its folder, in format 2 or 1 (see
    :func:`load_summary`). Draws ``out_path`` (one row per
    class, run A left, run B right) and returns one row per class with ``<q>_a``, ``<q>_b`` and
    ``<q>_diff = b - a`` for ``q`` in :data:`COMPARED`.
    """
    a, b = load_summary(summary_a), load_summary(summary_b)
    ea, eb = a["entries"], b["entries"]
    common = [k for k in a.get("order", ea) if "nodes" in ea.get(k, {}) and "nodes" in eb.get(k, {})]
    if not common:
        raise UserError("the two Hessian summaries have no analysed class in common")
    rows = []
    for k in common:
        row: dict[str, Any] = {"class": k}
        for q in COMPARED:
            va, vb = ea[k].get(q), eb[k].get(q)
            row[f"{q}_a"], row[f"{q}_b"] = va, vb
            row[f"{q}_diff"] = vb - va if va is not None and vb is not None else None
        rows.append(row)
    plots.plot_compare([(f"class {k}", _spectrum(ea[k]), _spectrum(eb[k])) for k in common],
                       labels, out_path)
    return rows
