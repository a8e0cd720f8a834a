"""amsim: bit-accurate simulation of approximate multipliers for training and evaluating neural networks.

Multiplier -> LUT -> kernel -> JAX bridge -> Flax layer:

- :func:`multiplier` / :func:`int_multiplier` turn a Python model into a :class:`Multiplier`, whose exhaustive
  table is built by Numba (``amsim/lut``);
- :func:`multiply` and :func:`matmul` run approximate products on NumPy (Numba kernels) or CuPy arrays
  (``amsim/kernels``), bit-identical to the NumPy golden model in :mod:`amsim.golden`;
- :mod:`amsim.nn` bridges them into JAX and Flax;
- the workflow: :func:`train` (from scratch or fine-tuning), :func:`evaluate` trained weights without retraining,
  :func:`sensitivity` per layer, :func:`layers` (what rules name), :func:`compare` sweeps (multipliers x seeds),
  :func:`protocol` (pretrain, evaluate, fine-tune), :func:`report` and :func:`results_table` (paper tables);
- hardware cost: :class:`Cost` on a multiplier (``with_cost``, EvoApproxLib circuits through
  :func:`amsim.interop.load_evoapprox`), :func:`energy` (first-order multiplication energy), :func:`plot_pareto`,
  and :func:`search` (per-layer multipliers within an accuracy budget).
"""

from . import formats, golden, gpu, interop, multipliers
from ._cost import Cost
from ._energy import EnergyEstimate, plot_pareto
from ._errors import AmsimError, InvalidTableError, ModelCompileError, RuleError, UnsupportedError
from ._evaluate import (
    EvalResult,
    SensitivityResult,
    energy,
    evaluate,
    evaluation_table,
    layers,
    layers_table,
    sensitivity,
)
from ._malloc import reuse_freed_memory
from ._metrics import ErrorStats, format_table
from ._multiplier import Multiplier, int_multiplier, multiplier
from ._ops import matmul, multiply
from ._plots import error_heatmap
from ._report import (
    ProtocolResult,
    compare,
    load_runs,
    plot_results,
    protocol,
    report,
    results_table,
    save_run,
)
from ._search import SearchResult, load_rules, search
from ._train import RunConfig, RunResult, TrainingInterrupted, resolve_multiplier, train
from ._version import __version__ as __version__

__all__ = [
    "Multiplier",
    "multiplier",
    "int_multiplier",
    "multiply",
    "matmul",
    "multipliers",
    "formats",
    "golden",
    "gpu",
    "interop",
    "error_heatmap",
    "reuse_freed_memory",
    "RunConfig",
    "RunResult",
    "TrainingInterrupted",
    "resolve_multiplier",
    "train",
    "evaluate",
    "EvalResult",
    "evaluation_table",
    "sensitivity",
    "SensitivityResult",
    "layers",
    "layers_table",
    "compare",
    "protocol",
    "ProtocolResult",
    "results_table",
    "plot_results",
    "report",
    "load_runs",
    "save_run",
    "Cost",
    "energy",
    "EnergyEstimate",
    "plot_pareto",
    "search",
    "SearchResult",
    "load_rules",
    "ErrorStats",
    "format_table",
    "AmsimError",
    "InvalidTableError",
    "ModelCompileError",
    "UnsupportedError",
    "RuleError",
]
