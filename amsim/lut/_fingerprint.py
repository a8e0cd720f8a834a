"""A model's fingerprint: a hash of everything that decides the values Numba computes from it.

Numba compiles a model's globals and closure cells in as constants, so a table depends on the model's bytecode
*and* on the values of every global, closure cell, default argument and helper function it reads, at the moment
it is compiled. The fingerprint walks all of them (helpers recursively). A value amsim cannot hash faithfully
(a dict, a list, an arbitrary object) is refused with an error rather than left out, because leaving it out would
let a changed value reuse a table built from the old one.
"""

from __future__ import annotations

import builtins
import dis
import enum
import hashlib
import sys
import types

import numpy as np

from .._errors import ModelCompileError

__all__ = ["fingerprint", "UnhashableModelError"]


class UnhashableModelError(ModelCompileError):
    """A model reads a value whose contents amsim cannot hash (so a cached table could go stale)."""


_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_ATTR_OPS = ("LOAD_ATTR", "LOAD_METHOD")


def fingerprint(fn, name: str = "") -> str:
    """Hex SHA-256 (32 digits) of ``fn``'s code and of every value it reads (see the module docstring).

    Raises:
        UnhashableModelError: ``fn`` reads a value that cannot be hashed; the message names it.
    """
    h = hashlib.sha256()
    _Walker(h, name or getattr(fn, "__name__", "model")).function(fn, "model")
    return h.hexdigest()[:32]


class _Walker:
    def __init__(self, h, model_name):
        self.h = h
        self.model_name = model_name
        self.seen: set[int] = set()

    def put(self, *parts):
        for p in parts:
            self.h.update(repr(p).encode())
            self.h.update(b"\x00")

    # -- functions ---------------------------------------------------------------------------------------
    def function(self, fn, where):
        fn = getattr(fn, "py_func", fn)  # a Numba dispatcher: its Python function
        if not isinstance(fn, types.FunctionType):
            self.refuse(where, fn)
        if id(fn.__code__) in self.seen:
            self.put("recursion", fn.__qualname__)
            return
        self.seen.add(id(fn.__code__))
        self.put("function", fn.__qualname__)
        self.code(fn.__code__, fn.__globals__, where)
        for i, d in enumerate(fn.__defaults__ or ()):
            self.value(d, f"{where}: default argument {i}")
        for k, d in sorted((fn.__kwdefaults__ or {}).items()):
            self.value(d, f"{where}: default argument {k!r}")
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                contents = cell.cell_contents
            except ValueError:  # an unfilled cell
                self.put("empty cell", var)
                continue
            self.put("cell", var)
            self.value(contents, f"{where}: closure variable {var!r}")

    def code(self, co, globs, where):
        self.put(co.co_code, co.co_names, co.co_varnames, co.co_freevars, co.co_cellvars, co.co_argcount,
                 co.co_kwonlyargcount)
        for c in co.co_consts:
            if isinstance(c, types.CodeType):
                self.code(c, globs, where)
            else:
                self.value(c, f"{where}: constant")
        ins = [i for i in dis.get_instructions(co) if i.opname not in ("CACHE", "EXTENDED_ARG")]
        for n, i in enumerate(ins):
            if i.opname != "LOAD_GLOBAL":
                continue
            name = i.argval
            if name in globs:
                val = globs[name]
            elif hasattr(builtins, name):
                self.put("builtin", name)
                continue
            else:
                self.put("undefined global", name)  # Numba will refuse it; nothing to hash
                continue
            path = name
            # module attribute chains (np.float32, mymodule.SCALE): hash what the chain reaches
            for nxt in ins[n + 1 :]:
                if nxt.opname not in _ATTR_OPS or not isinstance(val, types.ModuleType):
                    break
                val = getattr(val, nxt.argval, None)
                path = f"{path}.{nxt.argval}"
            self.put("global", path)
            self.value(val, f"{where}: global {path!r}")

    # -- values --------------------------------------------------------------------------------------------
    def value(self, v, where):
        if isinstance(v, _SCALARS):
            self.put(type(v).__name__, v)
        elif isinstance(v, np.generic):
            if v.dtype.hasobject:
                self.refuse(where, v)
            self.put("npscalar", v.dtype.str, v.tobytes())
        elif isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                self.refuse(where, v)
            self.put("ndarray", v.dtype.str, v.shape)
            self.h.update(np.ascontiguousarray(v).tobytes())
        elif isinstance(v, enum.Enum):
            self.put("enum", type(v).__module__, type(v).__qualname__, v.name)
            self.value(v.value, where)
        elif isinstance(v, tuple):
            self.put("tuple", len(v))
            for i, item in enumerate(v):
                self.value(item, f"{where}[{i}]")
        elif isinstance(v, types.FunctionType) or hasattr(v, "py_func"):
            self.function(v, f"{where} (function {getattr(v, '__qualname__', '?')})")
        elif isinstance(v, types.ModuleType):
            self.put("module", v.__name__, getattr(v, "__version__", ""))
        elif isinstance(v, (type, types.BuiltinFunctionType, np.ufunc)):
            # library callables (np.float32, math.floor, np.sqrt): their identity is their name and library version
            mod = getattr(v, "__module__", None) or ""
            top = sys.modules.get(mod.split(".")[0])
            self.put("callable", mod, getattr(v, "__qualname__", getattr(v, "__name__", repr(v))),
                     getattr(top, "__version__", ""))
        elif _is_numba_type(v):
            self.put("numba type", str(v))
        else:
            self.refuse(where, v)

    def refuse(self, where, v):
        raise UnhashableModelError(
            f"multiplier {self.model_name!r}: {where} is a {type(v).__name__}, whose contents amsim cannot hash. "
            "Numba compiles a model's globals in as constants, so without a hash a table built from an old value "
            "could be reused after the value changes. Use numbers, tuples, NumPy scalars or arrays, or plain or "
            "@numba.njit functions, or pass the value as a closure variable of one of these types.")


def _is_numba_type(v) -> bool:
    try:
        from numba.core import types as nb_types
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, nb_types.Type)
