"""EvoApproxLib circuits (github.com/ehw-fit/evoapproxlib, MIT licence) as amsim multipliers with their cost.

A circuit is one C file ``mul8s_1L2H.c`` whose leading comment block holds ``// KEY = VALUE`` lines: error
metrics (``MAE``, ``WCE``, ``EP%``, ...) and the 45 nm figures ``PDK45_PWR`` (mW), ``PDK45_AREA`` (µm²) and
``PDK45_DELAY`` (ns). The library's folders are ``multiplers/<W>x<W>_<signed|unsigned>/pareto_pwr_<metric>/``;
the same circuit appears in several Pareto subsets.

Three things vary between files and are handled here:

- the parameter order: ``mul8u_FTA(const uint64_t B, const uint64_t A)`` takes B first (the table is indexed
  ``[A, B]`` whatever the order);
- the C types: several signed ``mul8s_*`` circuits are declared on ``uint8_t`` / ``uint16_t``; their operands
  are the two's-complement bytes and the result is the low 16 bits of a signed product (sign-extended here);
- the width: 8-bit (and narrower) circuits are tabulated; wider ones (12x12, 16x16: 2^24 / 2^32 pairs) and
  MxN circuits are not supported yet, and say so.

Every import recomputes MAE, WCE and EP% over all operand pairs and compares them with the header; a difference
beyond the header's printed precision is an error naming both values (a wrong reading of the signature would
show up there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .._cost import Cost
from .._errors import AmsimError, InvalidTableError, UnsupportedError
from .._multiplier import Multiplier
from ._c import from_c

__all__ = ["load_evoapprox", "parse_evoapprox_header"]

TECHNOLOGY = "PDK45 (45 nm)"
_NAME = re.compile(r"mul(\d+)([su])_(\w+)")
_LINE = re.compile(r"^\s*//\s*([A-Za-z0-9_%]+)\s*=\s*([-+0-9.eE]+)\s*(%|mW|um2|ns)?\s*$")
_SUBSET = re.compile(r"pareto_pwr_(\w+)")
_WIDTHS = re.compile(r"(\d+)x(\d+)_(signed|unsigned)")


def parse_evoapprox_header(text: str) -> dict[str, tuple[float, str]]:
    """The ``// KEY = VALUE`` lines before the first line of code: ``{key: (value, printed text)}``."""
    out = {}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") or (s and not s.startswith(("/", "*"))):
            break  # the comment block is over
        m = _LINE.match(line)
        if m:
            try:
                out[m.group(1)] = (float(m.group(2)), m.group(2))
            except ValueError:
                continue
    return out


def _signature(text, fn):
    """Parameter names of ``fn`` in the order it takes them."""
    m = re.search(rf"\b{fn}\s*\(([^)]*)\)\s*\{{", text)
    if m is None:
        raise InvalidTableError(f"the C file does not define {fn}(...) {{ ... }}.")
    names = [re.findall(r"[A-Za-z_]\w*", p)[-1] for p in m.group(1).split(",") if p.strip()]
    if len(names) != 2:
        raise InvalidTableError(f"{fn} takes {len(names)} parameters; a multiplier takes two (A, B).")
    return names


def _unit(printed: str) -> float:
    """One unit in the last printed digit."""
    mant, _, exp = printed.lower().partition("e")
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    return 10.0 ** (-decimals) * 10.0 ** (int(exp) if exp else 0)


def _check_header(mult: Multiplier, header: dict, label: str) -> None:
    lo, hi = mult.int_range
    v = np.arange(lo, hi + 1, dtype=np.int64)
    diff = np.abs(mult.table.values.astype(np.int64) - np.multiply.outer(v, v))
    computed = {"MAE": float(diff.mean()), "WCE": float(diff.max()), "EP%": 100.0 * float((diff != 0).mean())}
    for key, value in computed.items():
        if key not in header:
            continue
        want, printed = header[key]
        u, eps = _unit(printed), 1e-9 * max(1.0, abs(want))
        # headers round some figures and truncate others (MAE = 36 for 36.54): either reading is accepted
        if not (want - 0.5 * u - eps <= value < want + u + eps):
            raise InvalidTableError(
                f"{label}: the tabulated circuit has {key} = {value:.6g} over all {diff.size} operand pairs, but its "
                f"header says {key} = {printed}. The C function was read as a {mult.int_bits}-bit "
                f"{'signed' if mult.signed else 'unsigned'} multiplier with the parameters in the order it declares "
                "them; if the file was edited, restore it, otherwise report the circuit.")


def _exact_power(path: Path, bits: int, signed: bool):
    """The power of the library's exact circuit of the same width and signedness (its EP% is 0), if the folder
    ``path`` sits in holds one: the reference of relative energy."""
    root = next((p for p in path.parents if p.name == "multiplers"), path.parent)
    for c in sorted(root.rglob(f"mul{bits}{'s' if signed else 'u'}_*.c")):
        try:
            h = parse_evoapprox_header(c.read_text(errors="replace")[:4096])
        except OSError:
            continue
        if h.get("EP%", (None,))[0] == 0.0 and "PDK45_PWR" in h:
            return h["PDK45_PWR"][0], c.stem
    return None, None


def _load_file(path: Path, compiler=None, check=True, subsets=(), timeout=60.0) -> Multiplier:
    name = path.stem
    m = _NAME.fullmatch(name)
    if m is None:
        raise AmsimError(f"{path}: not an EvoApproxLib multiplier file name (mul<bits><s|u>_<id>.c, e.g. "
                         "mul8s_1L2H.c).")
    bits, signed = int(m.group(1)), m.group(2) == "s"
    if path.parent.name and _WIDTHS.search(str(path.parent)):
        w = _WIDTHS.search(str(path.parent))
        if w.group(1) != w.group(2):
            raise UnsupportedError(f"{path}: {w.group(1)}x{w.group(2)} circuits (operands of different widths) are "
                                   "not supported yet; amsim's integer multipliers take two operands of one width.")
    if bits > 8:
        raise UnsupportedError(f"{path}: {bits}-bit circuits are not supported yet: amsim tabulates integer "
                               f"multipliers of at most 8-bit operands (a {bits}-bit table has 2^{2 * bits} entries). "
                               "Use the 8-bit circuits (multiplers/8x8_*).")
    text = path.read_text(errors="replace")
    header = parse_evoapprox_header(text)
    params = _signature(text, name)
    mult = from_c(text, name, kind="int", bits=bits, signed=signed, result_bits=16 if signed else None,
                  compiler=compiler, name=name, timeout=timeout)
    if [p.upper() for p in params] == ["B", "A"]:  # declared (B, A): the table was filled as [B, A]
        mult = Multiplier.from_table(mult.table.values.T, kind="int", signed=signed, name=name)
    if check:
        _check_header(mult, header, str(path))
    ref, ref_name = _exact_power(path, bits, signed)
    published = {k: v for k, (v, _) in header.items() if not k.startswith("PDK45_")}
    if ref is not None:
        published["exact_PWR_mW"] = ref
    cost = Cost(power_mw=header.get("PDK45_PWR", (None,))[0], area_um2=header.get("PDK45_AREA", (None,))[0],
                delay_ns=header.get("PDK45_DELAY", (None,))[0],
                source=f"EvoApproxLib {name}" + (f" ({', '.join(subsets)})" if subsets else "")
                + (f"; exact reference {ref_name}" if ref_name else ""),
                technology=TECHNOLOGY, published=published)
    return mult.with_cost(cost)


def _from_meta(root: Path):
    """(file, bits, signed, subset) for every multiplier instance listed in the library's meta.json."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise AmsimError(f"{root / 'meta.json'} is not readable JSON ({exc}).") from None
    out = []
    for group in meta if isinstance(meta, list) else []:
        if not str(group.get("folder", "")).startswith("multiplers"):
            continue
        for ds in group.get("datasets", []):
            bw = ds.get("bitwidth")
            for sub in ds.get("datasets", []):
                folder = root / sub.get("folder", "")
                subset = (_SUBSET.search(sub.get("folder", "")) or [None, "?"])[1]
                for inst in sub.get("instances", []):
                    for f in inst.get("files", []):
                        if str(f.get("file", "")).endswith(".c"):
                            out.append((folder / f["file"], bw, bool(ds.get("signed")), subset))
    return out


def _from_layout(root: Path):
    out = []
    for c in sorted(root.rglob("mul*.c")):
        w = _WIDTHS.search(str(c.parent))
        s = _SUBSET.search(c.parent.name)
        n = _NAME.fullmatch(c.stem)
        if n is None:
            continue
        bits = [int(w.group(1)), int(w.group(2))] if w and w.group(1) != w.group(2) else int(n.group(1))
        out.append((c, bits, n.group(2) == "s", s.group(1) if s else None))
    return out


def load_evoapprox(path, *, bits: int | None = 8, signed: bool | None = None, subset: str | None = None,
                   names=None, compiler: str | None = None, check: bool = True, progress: bool = False,
                   timeout: float = 60.0):
    """Import EvoApproxLib multipliers with their power, area and delay.

    Arguments:
        path: one circuit's ``.c`` file, or a library folder (the repository root with ``meta.json``, or any
            folder below it: ``multiplers/8x8_signed``...).
        bits: keep circuits of this operand width (default 8; ``None``: every supported width). Widths above 8
            and MxN circuits are refused with an explanation.
        signed: keep only signed (True) or unsigned (False) circuits; default both.
        subset: keep circuits of one Pareto subset: ``"mae"``, ``"wce"``, ``"mre"``, ``"mse"``, ``"ep"`` (or
            ``"pareto_pwr_mae"``...).
        names: keep only these circuit names (``["mul8s_1L2H", ...]``).
        compiler: the C compiler (see :func:`amsim.interop.from_c`).
        check: compare the computed MAE, WCE and EP% with the header (a mismatch is an error naming both).
        progress: a progress bar over the circuits of a folder.

    Returns:
        For a file, a :class:`amsim.Multiplier` whose :attr:`~amsim.Multiplier.cost` holds ``power_mw``,
        ``area_um2``, ``delay_ns`` and the header's metrics (``published``, with ``exact_PWR_mW``: the power of
        the library's exact circuit of the same width when the library holds it). For a folder, a dict
        ``name -> Multiplier``, each circuit once (the Pareto subsets it appears in are named in its cost's
        ``source``), sorted by power.
    """
    p = Path(path)
    if p.is_file():
        return _load_file(p, compiler, check, timeout=timeout)
    if not p.is_dir():
        raise AmsimError(f"{p} does not exist; give an EvoApproxLib .c file or the library folder.")
    if subset is not None:
        subset = subset.removeprefix("pareto_pwr_")
    root = next((q for q in [p, *p.parents] if (q / "meta.json").is_file()), None)
    entries = _from_meta(root) if root is not None else _from_layout(p)
    entries = [e for e in entries if root is None or p in e[0].parents or e[0].parent == p]
    if not entries:
        raise AmsimError(f"{p}: no EvoApproxLib multiplier (.c) files found; give the library root (with "
                         "meta.json) or one of its multiplers/<W>x<W>_* folders.")
    widths = sorted({str(b) for _, b, _, _ in entries})
    if bits is not None and bits > 8:
        raise UnsupportedError(f"{bits}-bit EvoApproxLib circuits are not supported yet (amsim tabulates integer "
                               "multipliers of at most 8-bit operands); widths here: " + ", ".join(widths) + ".")
    if bits is not None and not any(b == bits for _, b, _, _ in entries):
        raise AmsimError(f"{p} has no {bits}-bit multipliers; widths here: {', '.join(widths)}.")
    chosen: dict[str, list] = {}
    for file, bw, sg, sub in entries:
        if not isinstance(bw, int) or bw > 8:
            continue  # MxN or wider than 8 bits: not tabulated (bits=None keeps every supported width)
        if (bits is not None and bw != bits) or (signed is not None and sg != signed):
            continue
        if subset is not None and sub != subset:
            continue
        if names is not None and file.stem not in set(names):
            continue
        rec = chosen.setdefault(file.stem, [file, []])
        if sub and sub not in rec[1]:
            rec[1].append(sub)
    if names is not None:
        missing = sorted(set(names) - set(chosen))
        if missing:
            raise AmsimError(f"{p}: no circuit {', '.join(missing)} (with the filters given).")
    if not chosen:
        raise AmsimError(f"{p}: no circuit matches bits={bits}, signed={signed}, subset={subset!r}.")
    from tqdm.auto import tqdm

    out = {}
    for name, (file, subs) in tqdm(sorted(chosen.items()), desc="EvoApproxLib", unit="circuit",
                                   disable=not progress, leave=False):
        if not file.is_file():
            raise AmsimError(f"{file} is listed in meta.json but missing.")
        out[name] = _load_file(file, compiler, check, [f"pareto_pwr_{s}" for s in subs], timeout)
    return dict(sorted(out.items(), key=lambda kv: (kv[1].cost.power_mw is None, kv[1].cost.power_mw or 0, kv[0])))
