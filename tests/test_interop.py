"""Import / export of other simulators' tables and tabulation of C models: formats by hand, round trips, and
exported-then-imported multipliers that multiply bit-identically."""

import shutil

import numpy as np
import pytest

import amsim
from amsim import interop

from .support.bits import assert_bits_equal

F = np.float32
HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")


def same_matmul(rng, before, after):
    """Random matmuls through both multipliers agree bit for bit (and are not trivially zero)."""
    if before.is_int:
        lo, hi = before.int_range
        a = rng.integers(lo, hi + 1, size=(19, 64)).astype(np.int16)
        b = rng.integers(lo, hi + 1, size=(64, 23)).astype(np.int16)
        c = amsim.matmul(a, b, before)
        np.testing.assert_array_equal(amsim.matmul(a, b, after), c)
    else:
        a = rng.standard_normal((19, 64)).astype(F)
        b = rng.standard_normal((64, 23)).astype(F)
        c = amsim.matmul(a, b, before)
        assert_bits_equal(amsim.matmul(a, b, after), c)
    assert np.count_nonzero(c) > c.size // 2


# ---- ApproxTrain ------------------------------------------------------------------------------------------------
def test_approxtrain_byte_layout_by_hand(tmp_path):
    m = 2
    entries = np.zeros((4, 4), np.uint8)
    entries[1, 2] = 0x01  # no carry, fraction 01 -> 1.25
    entries[3, 0] = 0x80 | 0x03  # carry, fraction 11 -> 2 * 1.75
    entries[0, 3] = 0x80  # carry, fraction 0 -> 2
    path = tmp_path / "HAND_2.bin"
    path.write_bytes(entries.tobytes())  # row-major: index = ma * 2**m + mb
    mult = interop.load_approxtrain(path)
    assert mult.name == "HAND_2" and mult.mantissa_bits == m and mult.rounding == "truncate"
    t = mult.table.values
    assert (t[1, 2], t[3, 0], t[0, 3], t[2, 1]) == (F(1.25), F(3.5), F(2.0), F(1.0))
    assert interop.load_approxtrain(path, rounding="nearest").rounding == "nearest"


def test_approxtrain_matches_exact_truncated_definition(tmp_path):
    """ApproxTrain's bfloat16 table: exact product truncated to m = 7 bits, carry flagged."""
    ma, mb = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    p = (128 + ma) * (128 + mb)  # units of 2**-14
    carry = p >= 2 * 128 * 128
    frac = np.where(carry, (p >> 8) - 128, (p >> 7) - 128)
    path = tmp_path / "ACC_7.bin"
    path.write_bytes((frac | np.where(carry, 0x80, 0)).astype(np.uint8).tobytes())
    imported = interop.load_approxtrain(path)
    np.testing.assert_array_equal(imported.table.values, amsim.multipliers.exact_truncated(7).table.values)


@pytest.mark.parametrize("make", [lambda: amsim.multipliers.mbm(7), lambda: amsim.multipliers.mitchell(4, "truncate"),
                                  lambda: amsim.multipliers.alm_soa(6, k=2), lambda: amsim.multipliers.realm(5)])
def test_approxtrain_round_trip_multiplies_identically(tmp_path, rng, make):
    mult = make()
    path = interop.save_approxtrain(mult, tmp_path / f"X_{mult.mantissa_bits}.bin")
    assert path.stat().st_size == 4**mult.mantissa_bits
    back = interop.load_approxtrain(path, rounding=mult.rounding)
    np.testing.assert_array_equal(back.table.values, mult.table.values)
    same_matmul(rng, mult, back)
    assert interop.load_approxtrain(path).rounding == "truncate"  # ApproxTrain's own operand handling


def test_approxtrain_legacy_uint32_files(tmp_path):
    mult = amsim.multipliers.mbm(3)
    enc = interop.approxtrain_bytes(mult).astype(np.uint32)
    legacy = ((enc & 0x7F) << np.uint32(23 - 3)) | np.where(enc & 0x80, np.uint32(0x80000000), np.uint32(0))
    path = tmp_path / "MBM_3.bin"
    path.write_bytes(legacy.astype("<u4").tobytes())
    np.testing.assert_array_equal(interop.load_approxtrain(path).table.values, mult.table.values)


def test_approxtrain_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(amsim.InvalidTableError, match="at most 5 fraction bits"):
        interop.save_approxtrain(amsim.multipliers.exact(5), tmp_path / "E_5.bin")  # 10-bit exact products
    with pytest.raises(ValueError, match="at most 7"):
        interop.save_approxtrain(amsim.multipliers.mbm(8), tmp_path / "M_8.bin")
    with pytest.raises(TypeError, match="float significand products"):
        interop.approxtrain_bytes(amsim.multipliers.exact_int(8))
    (tmp_path / "BAD_3.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(amsim.InvalidTableError, match="has 10 bytes"):
        interop.load_approxtrain(tmp_path / "BAD_3.bin")
    (tmp_path / "ODD_2.bin").write_bytes(bytes([0x40] * 16))  # bit 6 is neither carry nor a 2-bit fraction
    with pytest.raises(amsim.InvalidTableError, match="outside the carry"):
        interop.load_approxtrain(tmp_path / "ODD_2.bin")


# ---- TFApprox ---------------------------------------------------------------------------------------------------
def test_tfapprox_layout_and_round_trip(tmp_path, rng):
    mult = amsim.multipliers.drum(4, bits=8, signed=False)
    path = interop.save_tfapprox(mult, tmp_path / "drum4.bin")
    raw = path.read_bytes()
    assert len(raw) == 131072
    a, b = 200, 37
    entry = raw[2 * (a * 256 + b): 2 * (a * 256 + b) + 2]
    assert int.from_bytes(entry, "little") == mult.table.values[a, b]
    back = interop.load_tfapprox(path)
    assert back.name == "drum4" and not back.signed and back.int_bits == 8
    np.testing.assert_array_equal(back.table.values, mult.table.values)
    same_matmul(rng, mult, back)
    with pytest.raises(ValueError, match="unsigned 8-bit"):
        interop.save_tfapprox(amsim.multipliers.exact_int(8), tmp_path / "s.bin")
    (tmp_path / "short.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(amsim.InvalidTableError, match="131072"):
        interop.load_tfapprox(tmp_path / "short.bin")


# ---- AdaPT / TransAxx C headers and byte-indexed arrays ----------------------------------------------------------
def test_byte_indexed_layout():
    lut = interop.to_byte_indexed(amsim.multipliers.exact_int(8))
    assert lut.dtype == np.int32 and lut.shape == (256, 256)
    # the layout of AdaPT's exact header: row uint8(1) is 0..127 then -128..-1
    np.testing.assert_array_equal(lut[1], np.r_[np.arange(128), np.arange(-128, 0)])
    assert lut[0xFF, 0x80] == (-1) * (-128) and lut[0x80, 0x80] == 16384
    unsigned = interop.to_byte_indexed(amsim.multipliers.exact_int(4, signed=False))
    np.testing.assert_array_equal(unsigned, np.multiply.outer(np.arange(16), np.arange(16)))
    with pytest.raises(ValueError, match="does not fit int8"):
        interop.to_byte_indexed(amsim.multipliers.exact_int(8), np.int8)


def test_c_header_round_trip_and_adapt_layout(tmp_path, rng):
    mult = amsim.multipliers.kulkarni(8)
    path = interop.save_c_header(mult, tmp_path / "mul8s_kulkarni.h")
    text = path.read_text()
    assert "#include <stdint.h>" in text and "const int16_t lut[256][256] = {" in text
    back = interop.load_c_header(path)
    assert back.name == "mul8s_kulkarni" and back.signed and back.int_bits == 8
    np.testing.assert_array_equal(back.table.values, mult.table.values)
    same_matmul(rng, mult, back)
    # and the header's rows are in two's-complement order: first row is a = 0, second a = 1
    first_rows = interop.parse_c_array(text)[:512].reshape(2, 256)
    np.testing.assert_array_equal(first_rows[1], mult.table.values[129][np.r_[128:256, 0:128]])


def test_c_header_parser_handles_real_world_syntax():
    n = 4  # 2-bit signed operands: patterns 0, 1, 2 (= -2), 3 (= -1)
    patterns = np.array([0, 1, -2, -1])
    lut = np.multiply.outer(patterns, patterns)
    rows = [", ".join(hex(v) if v > 0 else str(v) for v in row) for row in lut]
    header = ("/* generated */\n#include <stdint.h>\n// an unrelated table first\n"
              "static const uint8_t other[2] = {1, 2};\n"
              f"const int32_t my_lut [{n}][{n}] = {{\n" + "".join(f"  {{{r}}}, // row\n" for r in rows) + "};\n")
    mult = interop.load_c_header(header, array_name="my_lut", name="tiny")
    np.testing.assert_array_equal(mult.table.values, amsim.multipliers.exact_int(2).table.values)
    with pytest.raises(amsim.InvalidTableError, match="several arrays"):
        interop.load_c_header(header)
    with pytest.raises(amsim.InvalidTableError, match="not an integer literal"):
        interop.load_c_header("const int16_t lut[2][2] = {{1, 2}, {3, 4 + 1}};")
    assert interop.parse_c_array("int x[3] = {010, 0x10, -7u};").tolist() == [8, 16, -7]


def test_torchapprox_arrays_round_trip(tmp_path, rng):
    mult = amsim.multipliers.mitchell_int(8)
    lut = interop.to_torchapprox(mult)
    assert lut.dtype == np.int32 and lut.shape == (256, 256)
    a, b = -77, 45
    assert lut[a & 0xFF, b & 0xFF] == mult.table.values[a + 128, b + 128]  # index = uint8(a)
    back = interop.from_torchapprox(lut, name="mitchell_ta")
    np.testing.assert_array_equal(back.table.values, mult.table.values)
    same_matmul(rng, mult, back)
    np.save(tmp_path / "lut.npy", lut)
    assert interop.from_torchapprox(tmp_path / "lut.npy").table.digest == mult.table.digest
    # an unsigned table read back as unsigned
    u = amsim.multipliers.drum(3, bits=8, signed=False)
    np.testing.assert_array_equal(interop.from_torchapprox(interop.to_torchapprox(u), signed=False).table.values,
                                  u.table.values)


# ---- C models -----------------------------------------------------------------------------------------------------
EVO_STYLE_U = """
#include <stdint.h>
/* EvoApprox-style unsigned model: drops the two lowest partial-product columns */
uint16_t mul8u_test(uint8_t A, uint8_t B)
{
    uint16_t P = 0;
    for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 8; ++j)
            if (i + j >= 2 && ((A >> i) & 1) && ((B >> j) & 1))
                P += (uint16_t)(1u << (i + j));
    return P;
}
"""

EVO_STYLE_S_BROKEN = """
uint16_t mul8s_test(uint8_t A, uint8_t B)   /* signed circuit behind an unsigned signature */
{
    int8_t a = (int8_t)A, b = (int8_t)B;
    return (uint16_t)((a * b) & ~7);
}
"""

APPROXTRAIN_STYLE = """
/* ApproxTrain .inl style: float in, float out, Mitchell on the bit patterns */
float FPmultMitch(float Af, float Bf)
{
    uint32_t at, bt, out;
    memcpy(&at, &Af, 4);
    memcpy(&bt, &Bf, 4);
    uint32_t s = (at & 0x7fffff) + (bt & 0x7fffff);
    bool carry = s >= 0x800000;
    out = carry ? 0x40000000u + (s - 0x800000u) : 0x3f800000u + s;
    float r;
    memcpy(&r, &out, 4);
    return r;
}
"""


@needs_cc
def test_from_c_integer_model_matches_numpy(tmp_path, rng):
    src = tmp_path / "mul8u_test.c"
    src.write_text(EVO_STYLE_U)
    mult = interop.from_c(src, "mul8u_test", bits=8, signed=False)
    assert mult.name == "mul8u_test" and not mult.signed
    v = np.arange(256)
    np.testing.assert_array_equal(mult.table.values, amsim.multipliers.truncated_array(8, signed=False, t=2)
                                  .table.values)
    # 3 * 3 = 1 (column 0) + 2 + 2 (column 1) + 4 (column 2): only the 4 is kept
    assert mult.table.values[3, 3] == 4
    assert mult.table.values[255, 255] == 255 * 255 - 1 - 2 * 2
    same_matmul(rng, mult, amsim.multipliers.truncated_array(8, signed=False, t=2))
    # a signed model with a signed signature, given as a string
    signed = interop.from_c("int16_t m(int8_t a, int8_t b) { return (int16_t)((a * b) & ~3); }", "m", bits=8)
    np.testing.assert_array_equal(signed.table.values, np.multiply.outer(v - 128, v - 128) & ~3)


@needs_cc
def test_from_c_detects_unsigned_return_of_signed_model():
    with pytest.raises(amsim.InvalidTableError, match="result_bits=16"):
        interop.from_c(EVO_STYLE_S_BROKEN, "mul8s_test", bits=8, signed=True)
    fixed = interop.from_c(EVO_STYLE_S_BROKEN, "mul8s_test", bits=8, signed=True, result_bits=16)
    v = np.arange(-128, 128)
    np.testing.assert_array_equal(fixed.table.values, np.multiply.outer(v, v) & ~7)


@needs_cc
def test_from_c_float_model_at_exponent_bias(rng):
    mult = interop.from_c(APPROXTRAIN_STYLE, "FPmultMitch", kind="float", mantissa_bits=7)
    assert mult.mantissa_bits == 7 and mult.rounding == "nearest"
    np.testing.assert_array_equal(mult.table.values, amsim.multipliers.mitchell(7).table.values)
    same_matmul(rng, amsim.multipliers.mitchell(7), mult)
    four = interop.from_c(APPROXTRAIN_STYLE, "FPmultMitch", kind="float", mantissa_bits=4, rounding="truncate")
    np.testing.assert_array_equal(four.table.values, amsim.multipliers.mitchell(4).table.values)


def test_from_c_without_compiler_says_so(monkeypatch):
    with pytest.raises(interop.CCompilerError, match="no C compiler found.*/nonexistent/cc"):
        interop.from_c(APPROXTRAIN_STYLE, "FPmultMitch", kind="float", compiler="/nonexistent/cc")
    monkeypatch.setenv("AMSIM_CC", "/nonexistent/amsim-cc")
    with pytest.raises(interop.CCompilerError, match=r"\$AMSIM_CC"):
        interop.from_c(EVO_STYLE_U, "mul8u_test", signed=False)
    assert isinstance(interop.CCompilerError("x"), amsim.AmsimError)


@needs_cc
def test_from_c_errors_name_the_problem(tmp_path):
    with pytest.raises(amsim.ModelCompileError, match="did not compile"):
        interop.from_c("int f(int a, int b) { return a * b +; }", "f")
    with pytest.raises(ValueError, match="does not mention g"):
        interop.from_c("int f(int a, int b) { return a * b; }", "g")
    with pytest.raises(amsim.InvalidTableError, match="non-integers"):
        interop.from_c("double f(int a, int b) { return a * b / 3.0; }", "f", bits=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interop.from_c(str(tmp_path / "missing.c"), "f")
    with pytest.raises(amsim.InvalidTableError, match="negative"):  # float models must give products >= 0
        interop.from_c("float f(float a, float b) { return -a * b; }", "f", kind="float", mantissa_bits=3)
