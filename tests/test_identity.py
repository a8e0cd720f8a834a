"""A table's identity covers everything that decides it; models that fault are reported, not tabulated as 0."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import amsim
from amsim import formats, golden
from amsim._formats import decode_all

from .support.bits import assert_bits_equal


def _full_table_model(fmt):
    @amsim.multiplier(operand_format=fmt, full_table=True, name="scaled")
    def scaled(a, b):
        return a * b * 0.75

    return scaled


def test_full_operand_tables_of_two_formats_are_two_tables(rng):
    # same code, two formats: each table is the model over its own format's values
    e4 = _full_table_model(formats.e4m3(subnormals="keep"))
    e5 = _full_table_model(formats.e5m2(subnormals="keep"))
    assert e4 != e5 and e4.identity != e5.identity
    for mult in (e5, e4):  # e5m2 first: the order that used to hand e5m2's table to e4m3 too
        vals = decode_all(mult.operand_format).astype(np.float64)
        fin = np.isfinite(vals)
        vals = vals[fin]
        want = (np.multiply.outer(vals, vals) * 0.75).astype(np.float32)
        np.testing.assert_array_equal(mult.table.values[np.ix_(fin, fin)], want)
        # golden reads the multiplier's own table: its products are the model's
        x = vals[rng.integers(0, vals.size, 64)].astype(np.float32)
        y = vals[rng.integers(0, vals.size, 64)].astype(np.float32)
        assert_bits_equal(golden.multiply(x, y, mult), (x.astype(np.float64) * y * 0.75).astype(np.float32))
        assert_bits_equal(amsim.multiply(x, y, mult), golden.multiply(x, y, mult))


def _define(namespace):
    exec("import amsim\n"
         "@amsim.multiplier(mantissa_bits=3, name='scaled3')\n"
         "def scaled3(x, y):\n"
         "    return x * y * SCALE\n", namespace)
    return namespace["scaled3"]


def test_module_constant_change_is_a_new_table():
    ns = {"SCALE": np.float32(1.25)}
    first = _define(ns)
    assert first.table.values[0, 0] == np.float32(1.25)
    ns["SCALE"] = np.float32(1.5)
    again = _define(ns)  # same code, new constant: a new identity, a new table
    assert again != first
    assert again.table.values[0, 0] == np.float32(1.5)
    np.testing.assert_array_equal(again.table.values, first.table.values / np.float32(1.25) * np.float32(1.5))


def test_constant_changed_before_first_use_is_refused():
    ns = {"SCALE": 2.0}
    mult = _define(ns)
    ns["SCALE"] = 3.0  # the table would be built from 3.0 under the identity of 2.0
    with pytest.raises(amsim.ModelCompileError, match="changed since the multiplier was defined"):
        _ = mult.table


def test_closure_array_is_hashed_by_contents():
    def make(values):
        @amsim.multiplier(mantissa_bits=2, name="lookup")
        def lookup(x, y):
            return x * y * values[1500]

        return lookup

    base = np.ones(3000)
    changed = base.copy()
    changed[1500] = 2.0  # a change that repr() of the array would not show
    assert make(base) == make(base.copy())
    assert make(base) != make(changed)
    assert make(changed).table.values[0, 0] == 2.0


def test_helper_function_change_is_a_new_identity():
    ns = {}
    exec("import numba\n@numba.njit\ndef helper(p):\n    return p\n", ns)
    exec("import amsim\n"
         "@amsim.multiplier(mantissa_bits=3, name='h')\n"
         "def h(x, y):\n"
         "    return helper(x * y)\n", ns)
    first = ns["h"]
    before = first.table.values.copy()
    exec("import numba\n@numba.njit\ndef helper(p):\n    return p * 0.5 + 0.5\n", ns)  # the helper changes
    exec("import amsim\n"
         "@amsim.multiplier(mantissa_bits=3, name='h')\n"
         "def h(x, y):\n"
         "    return helper(x * y)\n", ns)
    assert ns["h"] != first
    np.testing.assert_array_equal(ns["h"].table.values, before * 0.5 + 0.5)


def test_unhashable_global_is_refused():
    ns = {"TABLE": {"k": 1.0}}
    with pytest.raises(amsim.lut.UnhashableModelError, match=r"global 'TABLE' is a dict"):
        exec("import amsim\n"
             "@amsim.multiplier(mantissa_bits=3)\n"
             "def f(x, y):\n"
             "    return x * y * TABLE['k']\n", ns)


@pytest.mark.parametrize("field, value", [("rounding", "truncate"), ("signed", True), ("name", "other"),
                                          ("operand_format", None), ("bits", 4), ("kind", "code"),
                                          ("builder", "0.0.1")])
def test_edited_metadata_is_refused(tmp_path, field, value):
    mult = amsim.multipliers.mbm(3).with_format(formats.FloatFormat(4, 3, "keep"))
    path = mult.save(tmp_path / "t.npz")
    data = dict(np.load(path, allow_pickle=False))
    meta = json.loads(str(data["metadata"]))
    assert meta[field] != value
    meta[field] = value
    np.savez(tmp_path / "edited.npz", values=data["values"], metadata=np.array(json.dumps(meta)))
    with pytest.raises(amsim.InvalidTableError, match="do not match its stored digest"):
        amsim.Multiplier.load(tmp_path / "edited.npz")
    assert amsim.Multiplier.load(path) == mult  # the unedited file loads as the same multiplier


def test_version_1_files_are_refused(tmp_path):
    meta = {"format_version": 1, "kind": "float", "bits": 3, "signed": False, "name": "x", "source": "table",
            "code_hash": "0", "digest": "0", "rounding": "nearest"}
    np.savez(tmp_path / "v1.npz", values=np.ones((8, 8), np.float32), metadata=np.array(json.dumps(meta)))
    with pytest.raises(amsim.InvalidTableError, match="version-1"):
        amsim.Multiplier.load(tmp_path / "v1.npz")


# a base configuration and one field changed at a time: the identity must change, and a saved file's
_FIELDS = ("mantissa_bits", "rounding", "constant", "op", "exponent_bits", "subnormals", "overflow", "fields")


def _configured(cfg):
    c, op = cfg["constant"], cfg["op"]
    m = cfg["mantissa_bits"]
    fmt = formats.FloatFormat(cfg["exponent_bits"], m, cfg["subnormals"], cfg["overflow"])
    if cfg["fields"]:
        def model(fa, fb):
            return ((1 << m) + fa) * ((1 << m) + fb) + (int(c) if op == "mul" else 1)
    elif op == "mul":
        def model(x, y):
            return x * y * c
    else:
        def model(x, y):
            return x * y + c
    return amsim.multiplier(model, mantissa_bits=m, rounding=cfg["rounding"], fields=cfg["fields"],
                            operand_format=fmt, name="prop")


_BASE = st.fixed_dictionaries({
    "mantissa_bits": st.integers(2, 5), "rounding": st.sampled_from(["nearest", "truncate"]),
    "constant": st.floats(1.0, 2.0, allow_nan=False), "op": st.sampled_from(["mul", "add"]),
    "exponent_bits": st.integers(3, 7), "subnormals": st.sampled_from(["keep", "flush"]),
    "overflow": st.sampled_from(["inf", "saturate", "nan"]), "fields": st.booleans()})


def _changed(cfg, field, data):
    alternatives = {
        "mantissa_bits": [v for v in range(2, 6) if v != cfg["mantissa_bits"]],
        "rounding": [r for r in ("nearest", "truncate") if r != cfg["rounding"]],
        "constant": [cfg["constant"] + d for d in (1.0, -0.5, 2.0 ** -20)],
        "op": [o for o in ("mul", "add") if o != cfg["op"]],
        "exponent_bits": [v for v in range(3, 8) if v != cfg["exponent_bits"]],
        "subnormals": [v for v in ("keep", "flush") if v != cfg["subnormals"]],
        "overflow": [v for v in ("inf", "saturate", "nan") if v != cfg["overflow"]],
        "fields": [not cfg["fields"]],
    }[field]
    new = dict(cfg)
    new[field] = data.draw(st.sampled_from(alternatives))
    return new


@settings(max_examples=60, deadline=None)
@given(_BASE, st.sampled_from(_FIELDS), st.data())
def test_property_any_identity_input_changes_the_identity(cfg, field, data):
    new = _changed(cfg, field, data)
    if cfg["fields"] and new["fields"] and field == "constant" and int(cfg["constant"]) == int(new["constant"]):
        new["constant"] = cfg["constant"] + 1.0  # the fields model reads int(c): make the change visible
    a, b = _configured(cfg), _configured(new)
    assert a.identity != b.identity and a != b
    assert _configured(dict(cfg)).identity == a.identity  # and an unchanged config keeps it


# ---- models that fault ------------------------------------------------------------------------------------
def test_integer_division_by_zero_is_reported_with_operands():
    @amsim.int_multiplier(bits=4, signed=True)
    def div(a, b):
        return a * b + a // (b - 3)

    with pytest.raises(amsim.InvalidTableError, match=r"ZeroDivisionError.*a=-8, b=3"):
        _ = div.table


def test_float_division_by_zero_is_reported_with_operands():
    @amsim.multiplier(mantissa_bits=3)
    def inv(x, y):
        return x * y + 1.0 / (y - 1.5)

    with pytest.raises(amsim.InvalidTableError, match=r"ZeroDivisionError.*x=1\.0, y=1\.5"):
        _ = inv.table


def test_int64_overflow_in_an_integer_model_is_reported():
    @amsim.int_multiplier(bits=4, signed=False)
    def wide(a, b):
        return (a * 2**40) * (b * 2**40) >> 80  # exact in Python; wraps in int64 once a * b > 7

    with pytest.raises(amsim.InvalidTableError, match=r"overflowed int64.*a=1, b=8|overflowed int64"):
        _ = wide.table


def test_int64_overflow_in_a_fields_model_is_reported():
    @amsim.multiplier(mantissa_bits=4, fields=True)
    def wide(fa, fb):
        return (((16 + fa) << 40) * ((16 + fb) << 40)) >> 80

    with pytest.raises(amsim.InvalidTableError, match="overflowed int64"):
        _ = wide.table


def test_integer_models_without_faults_still_build():
    @amsim.int_multiplier(bits=8, signed=True)
    def exact(a, b):
        return (a * b * 2**20) >> 20

    np.testing.assert_array_equal(exact.table.values, amsim.multipliers.exact_int(8).table.values)


def _ieee_code_table(fmt):
    vals = decode_all(fmt).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.multiply.outer(vals, vals).astype(np.float32), vals


@pytest.mark.parametrize("case", ["nan_times_one", "inf_times_zero", "inf_sign", "finite_gives_inf"])
def test_full_operand_table_contradicting_ieee_is_refused(case):
    fmt = formats.e5m2(subnormals="keep")
    table, vals = _ieee_code_table(fmt)
    one, zero = int(np.flatnonzero(vals == 1.0)[0]), int(np.flatnonzero(vals == 0.0)[0])
    nan, inf = int(np.flatnonzero(np.isnan(vals))[0]), int(np.flatnonzero(vals == np.inf)[0])
    amsim.Multiplier.from_table(table, operand_format=fmt, name="ok")  # the IEEE table itself is fine
    i, j, v = {"nan_times_one": (nan, one, 1.0), "inf_times_zero": (inf, zero, 0.0), "inf_sign": (inf, one, -np.inf),
               "finite_gives_inf": (one, one, np.inf)}[case]
    table[i, j] = v
    with pytest.raises(amsim.InvalidTableError, match="break the semantics"):
        amsim.Multiplier.from_table(table, operand_format=fmt, name="bad")
