"""Trained weights under approximate multipliers, without retraining: ``amsim evaluate``, per-layer
``amsim sensitivity``, and ``amsim layers`` (what rules can name, with the work each operation does).

Weights come from a run file, a checkpoint or a params file (:mod:`amsim._weights`). Every evaluation is
inference only (no gradient products), one compiled function per multiplier, compared with the same weights in
fp32.
"""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np

from ._energy import EnergyEstimate, assignment, estimate
from ._errors import AmsimError
from ._tables import format_rows
from ._train import (
    Evaluator,
    RunConfig,
    _array_digest,
    _build_model,
    _load,
    _Resolved,
    canonical_spec,
    describe_multiplier,
)

__all__ = ["evaluate", "sensitivity", "layers", "energy", "EvalResult", "SensitivityResult"]


@dataclasses.dataclass
class EvalResult:
    """One multiplier (with its rules) applied to fixed weights: test loss and accuracies, and the change in
    top-1 accuracy from the same weights in fp32."""

    label: str
    multiplier: str
    rules: tuple
    top1: float
    top5: float | None
    loss: float
    delta: float  # top-1 minus the fp32 top-1 of the same weights
    n: int
    seconds: float
    compile_time: float
    multipliers: dict
    source: str
    weights: str  # digest of the evaluated weights: what the numbers stand for, whatever the file is called
    energy: float | None = None  # relative multiplication energy (amsim.energy); None where a cost is unknown
    data: str = ""  # digest of the test examples evaluated

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _config_for(source, model, dataset, data_dir, test_limit):
    from ._weights import source_info

    info = source_info(source)
    cfg = dict(info.get("config") or {})
    model = model or cfg.get("model")
    dataset = dataset or cfg.get("dataset")
    if not model or not dataset:
        raise AmsimError(f"{source} is a params file: say which model and dataset it belongs to (--model, --dataset).")
    limit = test_limit if test_limit is not None else cfg.get("test_limit")
    # the training subset of the source run: colour datasets are standardised with its statistics
    return RunConfig(model=model, dataset=dataset, data_dir=data_dir or cfg.get("data_dir"), test_limit=limit,
                     train_limit=cfg.get("train_limit"), epochs=1), info


class _Weights:
    """The test set and the loaded weights of one source, shared by every multiplier evaluated on them."""

    def __init__(self, source, model=None, dataset=None, data_dir=None, test_limit=None):
        import jax
        import jax.numpy as jnp

        from ._weights import load_variables

        self.cfg, self.info = _config_for(source, model, dataset, data_dir, test_limit)
        _, ytr, self.x, self.y = _load(self.cfg)
        self.num_classes = int(max(ytr.max(), self.y.max())) + 1
        plain = _build_model(self.cfg, self.num_classes, _Resolved("fp32", ()))
        like = plain.init(jax.random.key(0), jnp.asarray(self.x[:2]), train=False)
        self.variables = load_variables(source, like)
        self.source = str(source)
        self.digest = _array_digest(*jax.tree_util.tree_leaves(self.variables))
        self.data = _array_digest(self.x, self.y)  # what was evaluated, not just how many

    def resolve(self, spec, rules=()):
        """The config (built-ins by their printed names) and resolved multipliers of one evaluation."""
        res = _Resolved.of(dataclasses.replace(self.cfg, multiplier=spec, rules=tuple(rules)))
        name = lambda s, m: canonical_spec(s, m) if isinstance(s, str) else s  # noqa: E731
        cfg = dataclasses.replace(self.cfg, multiplier=name(spec, res.multiplier),
                                  rules=tuple((p, name(s, m)) for (p, s), (_, m) in zip(rules, res.rules, strict=True)))
        return cfg, res

    def model(self, spec, rules=()):
        cfg, res = self.resolve(spec, rules)
        return cfg, res, _build_model(cfg, self.num_classes, res)


def _energy_of(w: _Weights, res) -> float | None:
    if not hasattr(w, "_ops"):  # traced once per source
        w._ops = layers_of(w.cfg.model, w.num_classes, w.x.shape[1:])
    return estimate(w._ops, assignment([o["path"] for o in w._ops], res)).relative


def energy(model: str, multiplier="fp32", rules=(), dataset: str = "mnist") -> EnergyEstimate:
    """The first-order multiplication energy of ``model`` with ``multiplier`` and per-layer ``rules`` (specs or
    Multipliers, as for :func:`amsim.train`): Σ layers MACs × the power of the layer's multiplier, relative to
    the exact multiplier of the same width (see :mod:`amsim._energy` and docs/cost.md).

    Returns:
        An :class:`EnergyEstimate` (``relative``, ``saving``, ``absolute_nj``, per-layer figures).
    """
    ops = layers(model, dataset)
    res = _Resolved.of(RunConfig(model=model, dataset=dataset, multiplier=multiplier, rules=tuple(rules)))
    return estimate(ops, assignment([o["path"] for o in ops], res))


def _evaluate_one(w: _Weights, spec, rules, progress):
    cfg, res, model = w.model(spec, rules)
    p = w.variables["params"]
    s = w.variables.get("batch_stats", {})
    ev = Evaluator(model, bool(s), w.num_classes)
    compile_time = ev.compile(p, s, w.x)
    t0 = time.perf_counter()
    out = ev(p, s, w.x, w.y)
    mults = {pat: describe_multiplier(m) for pat, m in res.all()}
    return cfg.label, out, time.perf_counter() - t0, compile_time, mults


def evaluate(source, multipliers=("fp32",), *, rules=(), model: str | None = None, dataset: str | None = None,
             data_dir=None, test_limit: int | None = None, progress: bool = True) -> list[EvalResult]:
    """Test accuracy of trained weights under each multiplier, without retraining.

    Arguments:
        source: a run file (``<out>/runs/*.json``), a checkpoint (``.msgpack``) or a params file (``.msgpack`` of
            Flax variables or params, ``.npz`` of params keyed by ``/``-joined paths).
        multipliers: specs (names, call syntax, ranges, files); the weights in plain fp32 are always evaluated
            first, as the baseline of every Δ.
        rules: ``((pattern, spec), ...)`` per-layer choices applied with every multiplier (see :func:`amsim.train`);
            with rules, ``fp32`` in ``multipliers`` is the rules' layers approximate and the rest fp32.
        model, dataset: needed for a params file (taken from the run or checkpoint otherwise).
        data_dir, test_limit: where the data is; evaluate on the first N test examples only (default: the
            source run's own test set).
        progress: a progress bar over the multipliers.

    Returns:
        One :class:`EvalResult` per multiplier, the fp32 baseline first.
    """
    from tqdm.auto import tqdm

    from .multipliers import NATIVE_NAMES, expand

    if isinstance(multipliers, str):
        raise TypeError(f"multipliers={multipliers!r}: pass a list of specs, e.g. ['mbm', 'mitchell'].")
    rules = tuple(tuple(r) for r in rules)
    # the baseline is the weights in plain fp32 (no rules); fp32 with rules is a row of its own when asked for
    jobs = [("fp32", ())] + [(e, rules) for s in multipliers for e in (expand(s) if isinstance(s, str) else [s])
                             if rules or not (isinstance(e, str) and e.strip().lower() in NATIVE_NAMES)]
    w = _Weights(source, model, dataset, data_dir, test_limit)
    for spec, r in jobs:  # every spec resolved (and checked) before the first evaluation
        w.resolve(spec, r)
    results = []
    for spec, r in tqdm(jobs, desc="evaluate", unit="multiplier", disable=not progress, leave=False):
        label, out, secs, comp, mults = _evaluate_one(w, spec, r, progress)
        base = results[0].top1 if results else out["top1"]
        results.append(EvalResult(label, str(spec), r, out["top1"], out["top5"], out["loss"],
                                  out["top1"] - base, out["n"], secs, comp, mults, w.source, w.digest,
                                  _energy_of(w, w.resolve(spec, r)[1]), w.data))
    return results


def evaluation_table(results: list[EvalResult], fmt: str = "text") -> str:
    """The paper table of an evaluation: top-1 (and top-5) accuracy and Δ top-1 vs fp32, per multiplier."""
    has5 = any(r.top5 is not None for r in results)
    hasE = any(r.energy is not None and r.energy != 1.0 for r in results)  # a cost is known somewhere
    head = ["multiplier", "top-1 %"] + (["top-5 %"] if has5 else []) + ["Δ vs fp32"] + \
        (["rel. energy"] if hasE else []) + ["time s"]
    rows = [[r.label, f"{100 * r.top1:.2f}"] + ([f"{100 * r.top5:.2f}" if r.top5 is not None else "—"] if has5 else [])
            + ["—" if i == 0 else f"{100 * r.delta:+.2f}"]
            + ([f"{r.energy:.3f}" if r.energy is not None else "—"] if hasE else []) + [f"{r.seconds:.1f}"]
            for i, r in enumerate(results)]
    return format_rows(head, rows, fmt)


# ---- per-layer sensitivity ----------------------------------------------------------------------------------
@dataclasses.dataclass
class SensitivityResult:
    """Per layer: top-1 with only that layer through the multiplier (the rest fp32), and with every layer but it."""

    multiplier: str
    fp32: float
    all_layers: float
    layers: list  # dicts: path, op, macs, only (top-1), all_but (top-1)
    source: str
    weights: str  # digest of the weights
    n: int  # test examples
    multipliers: dict  # the multiplier's description (table digest, format, error metrics)
    seconds: float
    data: str = ""  # digest of the test examples

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self, fmt: str = "text") -> str:
        head = ["layer", "op", "MACs/example", "only this layer %", "Δ", "all but this layer %", "Δ"]
        rows = [[d["path"], d["op"], f"{d['macs']:,}", f"{100 * d['only']:.2f}",
                 f"{100 * (d['only'] - self.fp32):+.2f}", f"{100 * d['all_but']:.2f}",
                 f"{100 * (d['all_but'] - self.fp32):+.2f}"] for d in self.layers]
        rows.append(["(every layer)", "", "", f"{100 * self.all_layers:.2f}",
                     f"{100 * (self.all_layers - self.fp32):+.2f}", f"{100 * self.fp32:.2f} (fp32)", ""])
        return format_rows(head, rows, fmt)

    def plot(self, path=None):
        """Bars of the accuracy drop per layer, both ways; the PNG's path if ``path`` is given, else the Figure."""
        from ._plots import new_figure, save_figure

        names = [d["path"] for d in self.layers]
        x = np.arange(len(names))
        fig = new_figure(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
        ax = fig.subplots()
        ax.bar(x - 0.2, [100 * (self.fp32 - d["only"]) for d in self.layers], 0.4, label="only this layer")
        ax.bar(x + 0.2, [100 * (self.fp32 - d["all_but"]) for d in self.layers], 0.4, label="all but this layer")
        ax.axhline(100 * (self.fp32 - self.all_layers), color="k", lw=0.8, ls="--", label="every layer")
        ax.set(xticks=x, ylabel="top-1 drop vs fp32 (points)", title=f"sensitivity to {self.multiplier}")
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: no bar hidden
        fig.tight_layout()
        return fig if path is None else save_figure(fig, path)


def _exact_path(path: str) -> str:
    return f"^{re.escape(path)}$"


def sensitivity(source, multiplier, *, model: str | None = None, dataset: str | None = None, data_dir=None,
                test_limit: int | None = None, progress: bool = True) -> SensitivityResult:
    """Which layers can take ``multiplier``: for every approximable layer, the test accuracy with only that layer
    through the multiplier (the rest native fp32) and with every layer but that one, from trained weights.

    Arguments:
        source, model, dataset, data_dir, test_limit: as for :func:`evaluate`.
        multiplier: one spec.

    Returns:
        A :class:`SensitivityResult` (``.table()``, ``.plot(path)``).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    w = _Weights(source, model, dataset, data_dir, test_limit)
    name = w.resolve(multiplier)[0].label  # checked first
    ops = layers_of(w.cfg.model, w.num_classes, w.x.shape[1:])
    paths = list(dict.fromkeys(op["path"] for op in ops))
    jobs = [("fp32", ()), (multiplier, ())]
    for p in paths:
        jobs += [("fp32", ((_exact_path(p), multiplier),)), (multiplier, ((_exact_path(p), "exact"),))]
    acc = []
    for spec, rules in tqdm(jobs, desc=f"sensitivity {multiplier}", unit="eval", disable=not progress, leave=False):
        acc.append(_evaluate_one(w, spec, rules, progress)[1]["top1"])
    per = []
    for i, p in enumerate(paths):
        rec = [op for op in ops if op["path"] == p]
        per.append({"path": p, "op": rec[0]["op"], "macs": sum(r["macs"] for r in rec), "only": acc[2 + 2 * i],
                    "all_but": acc[3 + 2 * i]})
    mults = {pat: describe_multiplier(m) for pat, m in w.resolve(multiplier)[1].all()}
    return SensitivityResult(name, acc[0], acc[1], per, w.source, w.digest, len(w.y), mults,
                             time.perf_counter() - t0, w.data)


# ---- the model's approximable operations ------------------------------------------------------------------
def layers_of(model: str, num_classes: int = 10, input_shape=(28, 28, 1)) -> list[dict]:
    """Every approximable operation of a zoo model, as rules name it: path, op, operand shapes, multiply-
    accumulates per example, and the parameters of its module."""
    import jax
    import jax.numpy as jnp

    from . import models
    from .nn import op_paths

    m = models.get(model, num_classes=num_classes)
    x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
    variables = jax.eval_shape(lambda: m.init(jax.random.key(0), x, train=False))
    recs = op_paths(m, x, train=False)

    def params_under(path):
        node = variables.get("params", {})
        for part in path.split("/") if path else []:
            node = node.get(part, {}) if hasattr(node, "get") else {}
        return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(node)))

    return [{"path": r.path, "op": r.op, "lhs": r.shapes[0], "rhs": r.shapes[1], "macs": r.macs,
             "params": params_under(r.path)} for r in recs]


def layers(model: str, dataset: str = "mnist") -> list[dict]:
    """:func:`layers_of` with the input shape and class count of a dataset (MNIST by default)."""
    from . import data

    d = data.info(dataset)
    return layers_of(model, d.num_classes, d.shape)


def layers_table(ops: list[dict], fmt: str = "text") -> str:
    head = ["path", "op", "operand shapes (batch 1)", "MACs/example", "params"]
    rows = [[o["path"] or "<top level>", o["op"], f"{o['lhs']} x {o['rhs']}", f"{o['macs']:,}", f"{o['params']:,}"]
            for o in ops]
    rows.append(["(total)", "", "", f"{sum(o['macs'] for o in ops):,}",
                 f"{sum(o['params'] for o in {o['path']: o for o in ops}.values()):,}"])
    return format_rows(head, rows, fmt)
