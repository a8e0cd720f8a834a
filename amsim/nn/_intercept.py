"""Whole-model interception (qwix-style): every ``lax.dot_general``, ``lax.conv_general_dilated`` and
``jnp.einsum`` traced inside the context goes through the multiplier chosen by the first rule whose pattern
matches the calling Flax module's path.

What is intercepted: linen ``Dense``, ``DenseGeneral``, ``Conv``, ``ConvTranspose``, ``Einsum``, attention
(both its projections and its two einsums), ``x @ w``, ``jnp.dot``/``matmul``/``einsum`` in user code — anything
that reaches ``lax.dot_general`` or ``lax.conv_general_dilated``. Not intercepted: elementwise products
(normalisation scales, activations, softmax), which are not GEMM products, and layers that were given an
explicit ``dot_general``/``conv_general_dilated`` (those keep what they were given).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src.lax import convolution as _conv_mod
from jax._src.lax import lax as _lax_mod
from jax._src.numpy import einsum as _einsum_mod

from .._errors import RuleError, UnsupportedError
from ..multipliers._registry import NATIVE_NAMES
from . import _native
from ._config import OpConfig, as_config
from ._conv import ConvGeneralDilated
from ._dot_general import DotGeneral

_STATE = threading.local()
_NATIVE_EINSUM = jnp.einsum


@dataclasses.dataclass(frozen=True)
class Rules:
    """Ordered (pattern, config) pairs; a config of None means "leave the op to XLA" (native float32).

    Patterns are regular expressions searched in the operation's module path ("Block_0/Dense_1", exactly what
    :func:`op_paths` lists); "*" matches everything. A value "exact", "fp32" or "native" means native float32.
    """

    items: tuple

    @staticmethod
    def make(spec, dlhs=None, drhs=None) -> Rules:
        if isinstance(spec, Rules):
            return spec
        if not isinstance(spec, dict):
            spec = {"*": spec}
        items = []
        for pat, val in spec.items():
            if not isinstance(pat, str):
                raise TypeError(f"rule patterns are strings (regexes, or '*'), got {pat!r}.")
            if pat != "*":
                try:
                    re.compile(pat)
                except re.error as exc:
                    raise RuleError(f"rule {pat!r} is not a valid regular expression: {exc}.") from None
            native = isinstance(val, str) and val.strip().lower() in NATIVE_NAMES
            items.append((pat, None if native else as_config(val, dlhs, drhs)))
        return Rules(tuple(items))

    def match(self, path: str, op: str) -> tuple[str, OpConfig | None]:
        """(pattern, config) of the first rule that matches ``path``."""
        for pat, cfg in self.items:
            if pat == "*" or re.search(pat, path):
                return pat, cfg
        raise UnsupportedError(f"no interception rule matches the {op} in module {path or '<top level>'!r}; add a "
                               "rule for it, or a catch-all such as '*': 'exact' to leave the rest native fp32.")

    def lookup(self, path: str, op: str):
        return self.match(path, op)[1]

    def check_all_used(self, records) -> None:
        """Raise :class:`amsim.RuleError` if a rule (other than the catch-all "*") matched none of ``records``."""
        used = {r.rule for r in records}
        unused = [pat for pat, _ in self.items if pat != "*" and pat not in used]
        if unused:
            raise RuleError(f"rule{'s' if len(unused) > 1 else ''} {', '.join(map(repr, unused))} matched no "
                            f"operation of the model (or only operations an earlier rule took). Its operations, "
                            f"which rules are searched in, are:\n{describe_ops(records)}")


def describe_ops(records) -> str:
    """One line per distinct (path, op): what rules match against."""
    seen = {}
    for r in records:
        seen.setdefault((r.path, r.op), r)
    return "\n".join(f"  {path or '<top level>'}  ({op})" for path, op in seen) or "  (none)"


@dataclasses.dataclass
class TraceRecord:
    """One intercepted op: where it ran, the rule that chose its multiplier and the config it got (None: native
    float32), its operands' shapes and its multiply-accumulates (recorded at trace time)."""

    path: str
    op: str
    config: OpConfig | None
    rule: str = "*"
    shapes: tuple = ()
    macs: int = 0  # products of the forward op (for the whole batch that was traced)


def _current_path() -> str:
    try:
        from flax.linen import module as linen_module

        stack = linen_module._context.module_stack
        mod = stack[-1] if stack else None
        if mod is not None and getattr(mod, "scope", None) is not None:
            return "/".join(str(p) for p in mod.scope.path)
    except Exception:  # flax missing or outside linen: top level
        pass
    return ""


def _active():
    return getattr(_STATE, "stack", None)


def _resolve(op, lhs, rhs, macs):
    rules, log = _active()[-1]
    path = _current_path()
    pat, cfg = rules.match(path, op)
    log.append(TraceRecord(path, op, cfg, pat, (tuple(jnp.shape(lhs)), tuple(jnp.shape(rhs))), int(macs)))
    return cfg


def _dot_macs(lhs, rhs, dimension_numbers):
    """Every lhs element meets every free rhs element of its batch: size(lhs) * size(rhs's free dims)."""
    (_, rc), (_, rb) = dimension_numbers
    free = [d for d in range(jnp.ndim(rhs)) if d not in tuple(rc) + tuple(rb)]
    return int(np.prod(jnp.shape(lhs), dtype=np.int64)) * int(np.prod([jnp.shape(rhs)[d] for d in free],
                                                                        dtype=np.int64))


def _conv_macs(lhs, rhs, args):
    """size(output) * window * input channels per group (from lax's own output shape, on abstract values)."""
    out = jax.eval_shape(lambda a, b: _native.conv_general_dilated(a, b, *args[2:]), lhs, rhs)
    rhs_spec = lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), args[6]).rhs_spec
    per_out = int(np.prod([jnp.shape(rhs)[d] for d in rhs_spec[1:]], dtype=np.int64))  # I and the window
    return int(np.prod(out.shape, dtype=np.int64)) * per_out


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    cfg = _resolve("dot_general", lhs, rhs, _dot_macs(lhs, rhs, dimension_numbers))
    if cfg is None:
        return _native.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kw)
    return DotGeneral(cfg)(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kw)


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                          preferred_element_type=None, out_sharding=None):
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, precision, preferred_element_type)
    cfg = _resolve("conv_general_dilated", lhs, rhs, _conv_macs(lhs, rhs, args))
    if cfg is None:
        return _native.conv_general_dilated(*args, out_sharding=out_sharding)
    return ConvGeneralDilated(cfg)(*args, out_sharding=out_sharding)


def _einsum(*args, _dot_general=None, **kw):
    if _dot_general is None or _dot_general is _native.dot_general:
        _dot_general = _dot_general_for_einsum
    return _NATIVE_EINSUM(*args, _dot_general=_dot_general, **kw)


@dataclasses.dataclass(frozen=True)
class _EinsumDG:
    """Hashable stand-in (einsum's ``_dot_general`` is a static argument) that resolves rules when called."""

    def __call__(self, *args, **kw):
        return _dot_general(*args, **kw)


_dot_general_for_einsum = _EinsumDG()

_PATCHES = [
    (jax.lax, "dot_general", _dot_general),
    (_lax_mod, "dot_general", _dot_general),
    (jax.lax, "conv_general_dilated", _conv_general_dilated),
    (_conv_mod, "conv_general_dilated", _conv_general_dilated),
    (jnp, "einsum", _einsum),
    (_einsum_mod, "einsum", _einsum),
]


@contextlib.contextmanager
def intercept(rules, *, dlhs=None, drhs=None):
    """Route every dot_general / conv / einsum traced inside the block through amsim, chosen by ``rules``.

    Arguments:
        rules: a Multiplier, a built-in name, an :class:`OpConfig`, or a dict ``{pattern: multiplier}`` (patterns
            are regexes searched in the Flax module path, as :func:`op_paths` lists them; "*" is the catch-all; a
            value "exact" (= "fp32", "native") leaves matching ops to XLA). An op no rule matches raises, and so
            does, when the block ends, a rule other than "*" that matched no op.
        dlhs, drhs: gradient-product multipliers applied to every rule given as a bare multiplier.

    Yields:
        A list that collects a :class:`TraceRecord` for every op intercepted while tracing.
    """
    rules = Rules.make(rules, dlhs, drhs)
    log: list[TraceRecord] = []
    stack = _active()
    if stack is None:
        stack = _STATE.stack = []
    first = not stack
    stack.append((rules, log))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in _PATCHES] if first else []
    try:
        if first:
            for mod, name, fn in _PATCHES:
                setattr(mod, name, fn)
        # jnp.matmul, jnp.einsum & co. are jitted and would replay traces cached under other rules (or none);
        # with jit disabled they are traced afresh into the caller's trace, so every op meets the current rule
        with jax.disable_jit():
            yield log
        rules.check_all_used(log)
    finally:
        stack.pop()
        for mod, name, fn in saved:
            setattr(mod, name, fn)


class ApproximatedModel:
    """A linen model whose ``init``/``apply`` run under :func:`intercept` with fixed rules.

    The parameter tree is the original model's, so existing checkpoints load unchanged. ``trace_log`` lists the
    ops intercepted in the most recent trace.
    """

    def __init__(self, model, rules, dlhs=None, drhs=None):
        self.model = model
        self.rules = Rules.make(rules, dlhs, drhs)
        self.trace_log: list[TraceRecord] = []

    def _run(self, method, *args, **kwargs):
        with intercept(self.rules) as log:
            out = getattr(self.model, method)(*args, **kwargs)
        if log:
            self.trace_log = log
        return out

    def init(self, *args, **kwargs):
        return self._run("init", *args, **kwargs)

    def init_with_output(self, *args, **kwargs):
        return self._run("init_with_output", *args, **kwargs)

    def apply(self, *args, **kwargs):
        return self._run("apply", *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __repr__(self):
        return f"ApproximatedModel({type(self.model).__name__}, rules={self.rules.items})"


def _nnx_ops(model):
    """(path, op, module) of every nnx layer that :func:`approximate` gives amsim ops."""
    from flax import nnx

    kinds = ((nnx.Linear, "dot_general"), (nnx.LinearGeneral, "dot_general"), (nnx.Conv, "conv_general_dilated"),
             (nnx.Einsum, "einsum"), (nnx.MultiHeadAttention, "attention einsum"))
    for path, mod in nnx.iter_graph(model):
        if not isinstance(mod, nnx.Module):
            continue
        name = "/".join(str(p) for p in path)
        if isinstance(mod, getattr(nnx, "ConvTranspose", ())):
            yield name, "conv_transpose", mod
            continue
        for cls, op in kinds:
            if isinstance(mod, cls):
                yield name, op, mod
                break


def _approximate_nnx(model, rules: Rules):
    from ._einsum import Einsum

    records = []
    for name, op, mod in _nnx_ops(model):
        if op == "conv_transpose":
            raise UnsupportedError(f"nnx ConvTranspose at {name!r} has no hook; call it inside "
                                   "amsim.nn.intercept(...) instead.")
        pat, cfg = rules.match(name, op)
        records.append((TraceRecord(name, op, cfg, pat), mod))
    rules.check_all_used([r for r, _ in records])  # before any layer is changed
    for r, mod in records:
        if r.config is None:
            continue
        if r.op == "dot_general":
            mod.dot_general = DotGeneral(r.config)
        elif r.op == "conv_general_dilated":
            mod.conv_general_dilated = ConvGeneralDilated(r.config)
        elif r.op == "einsum":
            mod.einsum_op = Einsum(r.config)
        else:
            mod.attention_fn = functools.partial(_nnx_attention, config=r.config)
    return model


def _nnx_attention(query, key, value, *args, config, **kwargs):
    """nnx's attention has no dot_general hook: run it under interception so its two einsums are approximated."""
    from flax import nnx

    with intercept({"*": config}):
        return nnx.dot_product_attention(query, key, value, *args, **kwargs)


def approximate(model, rules, *, dlhs=None, drhs=None):
    """Approximate every multiplication of an existing Flax model, chosen per layer by rules.

    Arguments:
        model: a linen ``Module`` (returns an :class:`ApproximatedModel` with the same ``init``/``apply``) or an
            nnx ``Module`` (its Linear/LinearGeneral/Conv/Einsum/MultiHeadAttention layers are given amsim ops in
            place; the model is returned).
        rules: see :func:`intercept`.
        dlhs, drhs: gradient-product multipliers for rules given as bare multipliers.

    Returns:
        The approximated model.
    """
    rules = Rules.make(rules, dlhs, drhs)
    try:
        from flax import nnx

        if isinstance(model, nnx.Module):
            return _approximate_nnx(model, rules)
    except ImportError:
        pass
    return ApproximatedModel(model, rules)


def op_paths(model, *args, **kwargs) -> list[TraceRecord]:
    """Every approximable operation of a Flax model, with the path that interception rules are matched against.

    Arguments:
        model: a linen ``Module`` (traced abstractly with ``init``: no FLOPs, no memory) or an nnx ``Module``.
        *args, **kwargs: example inputs for a linen model's ``init`` (shapes and dtypes are what matter), e.g.
            ``op_paths(model, jnp.zeros((1, 28, 28, 1)), train=False)``; ignored for nnx models.

    Returns:
        One :class:`TraceRecord` per operation in execution order (``path``, ``op``, operand ``shapes``).
    """
    try:
        from flax import nnx

        if isinstance(model, nnx.Module):
            return [TraceRecord(name, op, None) for name, op, _ in _nnx_ops(model)]
    except ImportError:
        pass
    approx = ApproximatedModel(model, {"*": "exact"})
    jax.eval_shape(lambda *a: approx.init(jax.random.key(0), *a, **kwargs), *args)
    return list(approx.trace_log)
