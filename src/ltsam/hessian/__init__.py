"""Per-class Hessian spectra: a Hessian linear operator, randomised estimators and the analysis.

* :class:`HessianOperator` -- ``H @ v`` / ``H @ V`` of a loss averaged over batches.
* :mod:`~ltsam.hessian.estimators` -- power iteration, Hutchinson, Lanczos/SLQ on any operator.
* :func:`top_eigenvalue`, :func:`trace`, :func:`spectral_density` -- one call each.
* :func:`density_grid` -- the smoothed density of SLQ output.
* :func:`analyze_classes`, :func:`compare_runs` -- the per-class analysis and its comparison.

Where the time goes (``benchmarks/hessian.py``; the measured figures are in docs/speed.md): a Hessian
product costs about the same whatever the implementation (double backward or forward-over-reverse,
vectors one at a time or in vmapped blocks). What helps is keeping each batch's gradient graph
between products, re-orthogonalising Lanczos vectors as one matrix product on flat vectors rather
than per vector and per parameter tensor, and needing fewer products (no separate power iteration,
deflated Hutchinson probes).
"""

from ltsam.hessian.analysis import analyze_classes, compare_runs, load_summary
from ltsam.hessian.density import density_grid
from ltsam.hessian.estimators import (
    EigenResult,
    LanczosResult,
    TraceResult,
    hutchinson_trace,
    lanczos,
    power_iteration,
    run_fused,
    slq,
)
from ltsam.hessian.operator import HessianOperator
from ltsam.hessian.spectrum import spectral_density, top_eigenvalue, trace

__all__ = [
    "EigenResult",
    "HessianOperator",
    "LanczosResult",
    "TraceResult",
    "analyze_classes",
    "compare_runs",
    "density_grid",
    "hutchinson_trace",
    "lanczos",
    "load_summary",
    "power_iteration",
    "run_fused",
    "slq",
    "spectral_density",
    "top_eigenvalue",
    "trace",
]
