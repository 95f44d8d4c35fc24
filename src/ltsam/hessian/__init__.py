"""Per-class Hessian spectra: a Hessian linear operator, randomised estimators and the analysis.

* :class:`HessianOperator` -- ``H @ v`` / ``H @ V`` of a loss averaged over batches.
* :mod:`~ltsam.hessian.estimators` -- power iteration, Hutchinson, Lanczos/SLQ on any operator.
* :func:`top_eigenvalue`, :func:`trace`, :func:`spectral_density` -- one call each.
* :func:`density_grid` -- the smoothed density of SLQ output.
* :func:`analyze_classes`, :func:`compare_runs` -- the per-class analysis and its comparison.

Where the time goes (ResNet-32, 2-core CPU, one thread; ``benchmarks/hessian.py``): one Hessian
product costs about six forward passes whatever the implementation (double backward and
forward-over-reverse within 5 % of each other; vmapped blocks of vectors save at most a quarter).
What helps is keeping each batch's gradient graph between products (about 1.5x per product),
re-orthogonalising Lanczos vectors as one matrix product on flat vectors rather than per vector
and per parameter tensor, and needing fewer products (no separate power iteration, deflated
Hutchinson probes).
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
