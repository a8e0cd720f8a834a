"""CIFAR-10, python version (``cifar-10-batches-py``), read by a parser that accepts exactly the batch layout.

A batch file is a pickle of ``{"batch_label": str, "labels": [int], "data": uint8 array (N, 3072), "filenames":
[str]}``. Instead of unpickling it (which runs whatever callables the file names, or builds arrays of any dtype
from the file's bytes), the opcodes are read with :mod:`pickletools` into inert nodes: a call is recorded, never
made. The result must have the layout above, the array must be the plain uint8 array NumPy writes (its dtype and
flags checked as values), and it is rebuilt from the file's own bytes with :func:`numpy.frombuffer`. Nothing is
imported or executed, and memory stays within a small multiple of the file's size.
"""

from __future__ import annotations

import io
import pickletools
from pathlib import Path

import numpy as np

from ._errors import DatasetCorruptError, DatasetNotFoundError
from ._sources import candidate_dirs

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
_SUBDIRS = ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10", "cifar-10")
MAX_FILE_BYTES = 64 << 20  # a real batch is 31 MB
_ROW = 3072
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_DTYPE_STATE = (3, "|", None, None, None, -1, -1, 0)  # NumPy's pickled state of a plain uint8 dtype


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def is_(self, modules, name):
        return self.module in modules and self.name == name


class _Call:
    """A recorded REDUCE (and BUILD state): nothing is ever called."""

    __slots__ = ("func", "args", "state")

    def __init__(self, func, args):
        self.func, self.args, self.state = func, args, None


class _Mark:
    pass


_MARK = _Mark()
_TEXT = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8")
_PY2_STRINGS = ("SHORT_BINSTRING", "BINSTRING")  # Python 2 str: bytes (pickletools hands them over as latin-1 text)
_BYTES = ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8")
_INTS = ("BININT", "BININT1", "BININT2", "LONG1", "LONG4")


def _parse(raw: bytes, path):
    """The pickle's object graph with every call left as a :class:`_Call` node."""
    stack, memo = [], {}

    def pop_mark():
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise ValueError("no MARK")

    for op, arg, _ in pickletools.genops(io.BytesIO(raw)):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name == "MARK":
            stack.append(_MARK)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise ValueError("stack underflow")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "APPEND":
            item = stack.pop()
            stack[-1].append(item)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name in ("SETITEM", "SETITEMS"):
            items = [stack.pop(), stack.pop()][::-1] if name == "SETITEM" else pop_mark()
            if len(items) % 2:
                raise ValueError("odd SETITEMS")
            target = stack[-1]
            for k, v in zip(items[::2], items[1::2], strict=True):
                target[_key(k)] = v
        elif name in _INTS or name == "BINFLOAT":
            stack.append(arg)
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in _TEXT:
            stack.append(arg)
        elif name in _PY2_STRINGS:
            stack.append(arg.encode("latin-1"))
        elif name in _BYTES:
            stack.append(bytes(arg))
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(module, attr))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if not isinstance(func, _Global) or not isinstance(args, tuple):
                raise ValueError("REDUCE of something other than a global")
            stack.append(_Call(func, args))
        elif name == "BUILD":
            state = stack.pop()
            if not isinstance(stack[-1], _Call) or stack[-1].state is not None:
                raise ValueError("BUILD of something other than a recorded call")
            stack[-1].state = state
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        else:
            raise DatasetCorruptError(f"{path} uses the pickle opcode {name}, which a CIFAR-10 batch never contains; "
                                      "use the original python-version batch files (cifar-10-python.tar.gz).")
    if len(stack) != 1:
        raise ValueError("the pickle does not end with one object")
    return stack[0]


def _bytes(node, path, what):
    """A bytes value: a literal, or the ``_codecs.encode(text, "latin1")`` Python 3 writes at protocol 2."""
    if isinstance(node, bytes):
        return node
    if isinstance(node, str):  # a Python 2 unicode key
        return node.encode("utf-8")
    if (isinstance(node, _Call) and node.func.is_(("_codecs",), "encode") and node.state is None
            and len(node.args) == 2 and isinstance(node.args[0], str) and node.args[1] in ("latin1", "latin-1")):
        try:
            return node.args[0].encode("latin-1")
        except UnicodeEncodeError:
            raise DatasetCorruptError(f"{path}: {what} holds characters a byte string cannot.") from None
    raise DatasetCorruptError(f"{path}: {what} is not a string.")


def _key(node):
    if isinstance(node, (bytes, str)):
        return node if isinstance(node, bytes) else node.encode("utf-8")
    if isinstance(node, _Call) and node.func.is_(("_codecs",), "encode"):
        return _bytes(node, "", "a key")
    raise ValueError("a dict key that is not a string")


def _text(v):
    return v.decode("latin-1") if isinstance(v, bytes) else v  # Python 2 files hold these as byte strings


def _is_uint8_dtype(node) -> bool:
    return (isinstance(node, _Call) and node.func.is_(("numpy",), "dtype") and len(node.args) == 3
            and _text(node.args[0]) == "u1" and node.args[1] in (0, False) and node.args[2] in (1, True)
            and isinstance(node.state, tuple) and tuple(_text(v) for v in node.state) == _DTYPE_STATE)


def _uint8_array(node, path, what) -> np.ndarray:
    """Rebuild the array NumPy pickles (``_reconstruct`` + state, or protocol 5's ``_frombuffer``) from its bytes,
    after checking that it is a plain C-ordered uint8 array whose bytes are all there."""
    bad = DatasetCorruptError(f"{path}: {what} is not a plain uint8 array as NumPy writes it.")
    if not isinstance(node, _Call):
        raise bad
    if node.func.is_(_NUMPY_MODULES, "_reconstruct"):
        st = node.state
        if (len(node.args) != 3 or not isinstance(node.args[0], _Global) or not node.args[0].is_(("numpy",), "ndarray")
                or not isinstance(st, tuple) or len(st) != 5 or st[0] != 1 or st[3] not in (0, False)
                or not _is_uint8_dtype(st[2])):
            raise bad
        shape, raw = st[1], _bytes(st[4], path, what)
    elif node.func.is_(_NUMPY_MODULES, "_frombuffer"):
        if len(node.args) != 4 or not _is_uint8_dtype(node.args[1]) or node.args[3] != "C" or node.state is not None:
            raise bad
        raw, shape = _bytes(node.args[0], path, what), node.args[2]
    else:
        raise bad
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise bad
    if int(np.prod(shape, dtype=np.int64)) != len(raw):
        raise DatasetCorruptError(f"{path}: {what} has shape {shape} but {len(raw)} bytes.")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as uint8 images (N, 32, 32, 3) and uint8 labels (N,)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DatasetCorruptError(f"{path} is {size} bytes; a CIFAR-10 batch is about 31 MB. Use the original files.")
    raw = path.read_bytes()
    try:
        obj = _parse(raw, path)
    except DatasetCorruptError:
        raise
    except Exception as exc:  # truncated, malformed, or not a pickle at all
        raise DatasetCorruptError(f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}).") from None
    if not isinstance(obj, dict):
        raise DatasetCorruptError(f"{path} should hold a dict, found {type(obj).__name__}.")
    if b"fine_labels" in obj or b"coarse_labels" in obj:
        raise DatasetCorruptError(f"{path} has 'fine_labels': this looks like CIFAR-100, not CIFAR-10.")
    unknown = set(obj) - {b"data", b"labels", b"batch_label", b"filenames"}
    if unknown:
        raise DatasetCorruptError(f"{path} has entries {sorted(unknown)[:5]} that a CIFAR-10 batch does not have.")
    if b"data" not in obj or b"labels" not in obj:
        raise DatasetCorruptError(f"{path} lacks the 'data' or 'labels' entry.")
    data = _uint8_array(obj[b"data"], path, "'data'")
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise DatasetCorruptError(f"{path}: 'data' should be uint8 of shape (N, 3072), found {data.shape}.")
    labels = obj[b"labels"]
    if not (isinstance(labels, list) and len(labels) == data.shape[0]
            and all(type(v) is int and 0 <= v <= 9 for v in labels)):
        raise DatasetCorruptError(f"{path}: 'labels' should be a list of {data.shape[0]} integers in 0..9.")
    # rows are channel-major: 1024 red, then green, then blue values
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.array(labels, dtype=np.uint8)


def load_cifar10(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) uint8 for the given split."""
    names = TRAIN_FILES if split == "train" else TEST_FILES
    dirs = candidate_dirs(data_dir, _SUBDIRS, None)
    for d in dirs:
        present = [(d / n).is_file() for n in names]
        if all(present):
            parts = [read_batch(d / n) for n in names]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if any(present):
            missing = ", ".join(n for n, ok in zip(names, present, strict=True) if not ok)
            raise DatasetNotFoundError(f"CIFAR-10 in {d} is incomplete: {missing} missing. Extract the whole archive.")
    searched = "\n  ".join(str(d) for d in dirs) or "(nothing: neither data_dir nor AMSIM_DATA_DIR is set)"
    raise DatasetNotFoundError(
        f"CIFAR-10 {split} files ({', '.join(names)}) were not found. Searched:\n  {searched}\n"
        f"Fix: extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that "
        f"<dir>/cifar-10-batches-py/ holds data_batch_1..5 and test_batch, then pass data_dir=<dir> or set "
        f"AMSIM_DATA_DIR=<dir>. amsim never downloads it."
    )
