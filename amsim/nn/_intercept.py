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
from jax._src.lax import convolution as _conv_mod
from jax._src.lax import lax as _lax_mod
from jax._src.numpy import einsum as _einsum_mod

from .._errors import UnsupportedError
from . import _native
from ._config import OpConfig, as_config
from ._conv import ConvGeneralDilated
from ._dot_general import DotGeneral

NATIVE = ("exact", "native", "fp32")
_STATE = threading.local()
_NATIVE_EINSUM = jnp.einsum


@dataclasses.dataclass(frozen=True)
class Rules:
    """Ordered (pattern, config) pairs; a config of None means "leave the op to XLA".

    Patterns are regular expressions searched in the module path ("Block_0/Dense_1"); "*" matches everything.
    """

    items: tuple

    @staticmethod
    def make(spec, dlhs=None, drhs=None) -> "Rules":
        if isinstance(spec, Rules):
            return spec
        if not isinstance(spec, dict):
            spec = {"*": spec}
        items = []
        for pat, val in spec.items():
            cfg = None if (isinstance(val, str) and val in NATIVE) else as_config(val, dlhs, drhs)
            items.append((pat, cfg))
        return Rules(tuple(items))

    def lookup(self, path: str, op: str):
        for pat, cfg in self.items:
            if pat == "*" or re.search(pat, path):
                return cfg
        raise UnsupportedError(f"no interception rule matches the {op} in module {path or '<top level>'!r}; add a "
                               "rule for it, or a catch-all such as '*': 'exact' to leave the rest exact.")


@dataclasses.dataclass
class TraceRecord:
    """One intercepted op: where it ran and what multiplier it got (recorded at trace time)."""

    path: str
    op: str
    config: OpConfig | None


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


def _resolve(op):
    rules, log = _active()[-1]
    path = _current_path()
    cfg = rules.lookup(path, op)
    log.append(TraceRecord(path, op, cfg))
    return cfg


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    cfg = _resolve("dot_general")
    if cfg is None:
        return _native.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kw)
    return DotGeneral(cfg)(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kw)


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                          preferred_element_type=None, out_sharding=None):
    cfg = _resolve("conv_general_dilated")
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, precision, preferred_element_type)
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
            are regexes searched in the Flax module path; "*" is the catch-all; a value "exact" leaves matching
            ops to XLA). An op no rule matches raises.
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


def _approximate_nnx(model, rules: Rules):
    from flax import nnx

    from ._einsum import Einsum

    for path, mod in nnx.iter_graph(model):
        if not isinstance(mod, nnx.Module):
            continue
        name = "/".join(str(p) for p in path)
        if isinstance(mod, (nnx.Linear, nnx.LinearGeneral)):
            cfg = rules.lookup(name, "dot_general")
            if cfg is not None:
                mod.dot_general = DotGeneral(cfg)
        elif isinstance(mod, nnx.Conv):
            cfg = rules.lookup(name, "conv_general_dilated")
            if cfg is not None:
                mod.conv_general_dilated = ConvGeneralDilated(cfg)
        elif isinstance(mod, nnx.Einsum):
            cfg = rules.lookup(name, "einsum")
            if cfg is not None:
                mod.einsum_op = Einsum(cfg)
        elif isinstance(mod, nnx.MultiHeadAttention):
            cfg = rules.lookup(name, "attention einsum")
            if cfg is not None:
                mod.attention_fn = functools.partial(_nnx_attention, config=cfg)
        elif isinstance(mod, getattr(nnx, "ConvTranspose", ())):
            raise UnsupportedError(f"nnx ConvTranspose at {name!r} has no hook; call it inside "
                                   "amsim.nn.intercept(...) instead.")
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
