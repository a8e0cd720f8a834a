"""The table-derived gradient (dlhs/drhs = "table"): checked against a brute-force sum over the full derivative
tables, and for the exact product against native gradients of the grid-rounded operands."""

import jax
import numpy as np
import pytest

import amsim
from amsim import nn as ann
from amsim.nn._table_grad import TableGradient, derivative_tables

DN = (((1,), (0,)), ((), ()))


def _grid(v, n):
    f, e = np.frexp(v)
    x = 2 * np.abs(f)
    idx = np.clip(np.floor((x - 1) * n + 0.5), 0, n - 1).astype(np.int64)
    return idx, np.where(v == 0, 0, v / np.where(x == 0, 1, x)), e


def _rounded(v, n):
    idx, scale, _ = _grid(v, n)
    return (scale * (1 + idx / n)).astype(np.float32)


@pytest.mark.parametrize("mult", [amsim.multipliers.exact(7), amsim.multipliers.mitchell(7),
                                  amsim.multipliers.mbm(5)], ids=lambda m: m.name)
def test_dot_general_matches_the_brute_force_derivative(mult, rng):
    a = rng.standard_normal((6, 9)).astype(np.float32)
    b = rng.standard_normal((9, 4)).astype(np.float32)
    a[0, 0] = 0.0  # a zero operand: its partner gets no gradient through it
    g = rng.standard_normal((6, 4)).astype(np.float32)
    dg = ann.dot_general(mult, dlhs="table", drhs="table")
    da, db = jax.vjp(lambda x, y: dg(x, y, DN), a, b)[1](g)
    tx, ty = derivative_tables(mult)
    n = 1 << mult.mantissa_bits
    ia, sa, _ = _grid(a, n)
    ib, sb, _ = _grid(b, n)
    da_bf = np.einsum("ij,kj,ikj->ik", g, sb, tx[ia[:, :, None], ib[None, :, :]])
    db_bf = np.einsum("ik,ij,ikj->kj", sa, g, ty[ia[:, :, None], ib[None, :, :]])
    tol = 1e-6 if mult.name == "exact7" else 0.06  # the rank-r factorisation's error (rank_error)
    assert np.abs(da - da_bf).max() <= tol * np.abs(da_bf).max()
    assert np.abs(db - db_bf).max() <= tol * np.abs(db_bf).max()
    assert np.isfinite(da).all() and np.isfinite(db).all()
    assert max(TableGradient(mult).rank_error) <= (1e-12 if mult.name == "exact7" else 0.03)


def test_exact_product_gives_the_native_gradient_of_rounded_operands(rng):
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    conv = ann.conv_general_dilated(amsim.multipliers.exact(7), dlhs="table", drhs="table")
    y, vjp = jax.vjp(lambda x, w: conv(x, w, (2, 1), "SAME", dimension_numbers=dn), x, w)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = vjp(gy)
    nat = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 1), "SAME", dimension_numbers=dn)  # noqa: E731
    dx_ref = jax.vjp(lambda x: nat(x, _rounded(w, 128)), x)[1](gy)[0]
    dw_ref = jax.vjp(lambda w: nat(_rounded(x, 128), w), w)[1](gy)[0]
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)


def test_modes_and_errors():
    cfg = ann.OpConfig(amsim.multipliers.mitchell(7), "table", "ste")
    assert isinstance(cfg.dlhs, TableGradient) and cfg.drhs == "ste"
    with pytest.raises(ValueError, match="needs a forward multiplier"):
        ann.OpConfig("exact", "table")
    with pytest.raises(ValueError, match="gradient mode"):
        ann.OpConfig("table")
    with pytest.raises(amsim.UnsupportedError, match="integer .* not supported yet"):
        ann.OpConfig(amsim.multipliers.exact_int(8), "table")


def test_training_with_the_table_gradient_learns():
    r = amsim.train(model="lenet300", dataset="digits", multiplier="mitchell5", backward="table", epochs=2,
                    batch_size=64, lr=3e-3, train_limit=640, test_limit=200, progress=False)
    assert r.config.label == "mitchell5+bwd-table" and r.history[-1]["test_acc"] > 0.5
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
