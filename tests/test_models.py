"""amsim.models: output shapes, parameter counts, and that injected dot_general / conv_general_dilated callables
carry every product of every model, attention's two einsums included."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amsim import models

DOT, CONV = "dot_general", "conv_general_dilated"


def _freeze(v):
    if type(v) in (list, tuple):  # named tuples (ConvDimensionNumbers) are hashable already and must keep their type
        return tuple(_freeze(e) for e in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(e)) for k, e in v.items()))
    return v


def marked(op, marker):
    """A drop-in for ``op`` whose every use shows in the jaxpr as a jit call named ``marker``.

    Counting Python calls is not enough: ``jnp.einsum`` is jitted with the dot_general as a static argument, so a
    second attention block with the same shapes reuses the first trace without calling the function again. The
    marker survives that cache, so the jaxpr says exactly which products went through the injected callable.
    """

    def body(lhs, rhs, frozen):
        args, kwargs = frozen
        return op(lhs, rhs, *args, **dict(kwargs))

    body.__name__ = body.__qualname__ = marker
    jitted = jax.jit(body, static_argnums=2)

    def wrapper(lhs, rhs, *args, **kwargs):
        wrapper.calls += 1
        return jitted(lhs, rhs, (_freeze(args), _freeze(kwargs)))

    wrapper.calls = 0
    return wrapper


def _subjaxprs(params):
    for v in params.values():
        for item in v if isinstance(v, (list, tuple)) else (v,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def census(jaxpr, inside=frozenset()):
    """{(primitive, frozenset of enclosing markers): [eqn, ...]} for the dot and conv equations of a jaxpr."""
    out = {}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in (DOT, CONV):
            out.setdefault((name, inside), []).append(eqn)
        here = inside | {eqn.params["name"]} if isinstance(eqn.params.get("name"), str) else inside
        for sub in _subjaxprs(eqn.params):
            for k, v in census(sub, here).items():
                out.setdefault(k, []).extend(v)
    return out


def _count(c, prim):
    return sum(len(v) for (p, _), v in c.items() if p == prim)


def _apply_jaxpr(model, variables, x, train=False):
    kw = {"mutable": ["batch_stats"]} if train and "batch_stats" in variables else {}
    return jax.make_jaxpr(lambda v, x: model.apply(v, x, train=train, **kw))(variables, x).jaxpr


def _shapes(model, x):
    # shapes only: compiling the real initialisers costs tens of seconds on a busy 2-core CPU
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _n_params(shapes):
    return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes["params"]))


def _fake_variables(shapes, seed=0):
    """Concrete variables for ``shapes``: small random weights, unit running variances."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if getattr(path[-1], "key", None) == "var":
            return jnp.ones(s.shape, s.dtype)
        return jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


CASES = [
    # name, kwargs, input shape, params, dot_generals, convs, check numbers too
    ("lenet300", {}, (3, 28, 28, 1), 266_610, 3, 0, True),
    ("lenet5", {}, (3, 28, 28, 1), 61_706, 3, 2, True),
    ("lenet5", {"act": "tanh"}, (2, 32, 32, 3), 83_126, 3, 2, False),
    ("resnet20", {}, (2, 32, 32, 3), 269_722, 1, 19, False),
    ("resnet18", {}, (2, 32, 32, 3), 11_173_962, 1, 20, False),
    ("vit_tiny", {}, (2, 28, 28, 1), 71_946, 18, 0, True),
    ("vit_tiny", {"depth": 3, "num_heads": 2}, (2, 32, 32, 3), 74_954 + 33_472, 26, 0, False),
]


@pytest.mark.parametrize("name,kw,shape,n_params,n_dot,n_conv,numeric", CASES)
def test_injected_ops_carry_every_product(name, kw, shape, n_params, n_dot, n_conv, numeric):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    plain = models.get(name, **kw)
    shapes = _shapes(plain, x)
    assert _n_params(shapes) == n_params
    dg, conv = marked(jax.lax.dot_general, "injected_dot"), marked(jax.lax.conv_general_dilated, "injected_conv")
    injected = models.get(name, dot_general=dg, conv_general_dilated=conv, **kw)

    base = census(_apply_jaxpr(plain, shapes, x))
    assert (_count(base, DOT), _count(base, CONV)) == (n_dot, n_conv)
    got = census(_apply_jaxpr(injected, shapes, x))
    # same products as the stock model, and every one of them inside the injected callable
    assert (_count(got, DOT), _count(got, CONV)) == (n_dot, n_conv)
    for (prim, markers), eqns in got.items():
        want = "injected_dot" if prim == DOT else "injected_conv"
        assert want in markers, f"{len(eqns)} {prim} outside the injected op in {name}"
    assert dg.calls >= min(n_dot, 1) and conv.calls == n_conv  # Python-level calls, einsum cache aside

    out = jax.eval_shape(functools.partial(plain.apply, train=False), shapes, x)
    assert out.shape == (shape[0], 10) and out.dtype == jnp.float32
    if numeric:  # the injected ops are exact wrappers, so the numbers must not move
        variables = _fake_variables(shapes)
        xv = jnp.asarray(np.random.default_rng(0).random(shape, dtype=np.float32))
        y0 = jax.jit(functools.partial(plain.apply, train=False))(variables, xv)
        y1 = jax.jit(functools.partial(injected.apply, train=False))(variables, xv)
        assert np.std(np.asarray(y0)) > 1e-3
        np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=1e-5, atol=1e-5)


def test_attention_products_go_through_dot_general():
    depth = 2
    x = jnp.asarray(np.random.default_rng(1).random((2, 8, 8, 1), dtype=np.float32))
    dg = marked(jax.lax.dot_general, "injected_dot")
    model = models.get("vit_tiny", dot_general=dg, depth=depth)
    variables = _fake_variables(_shapes(model, x))
    c = census(_apply_jaxpr(model, variables, x))
    eqns = [e for (p, m), es in c.items() if p == DOT and "injected_dot" in m for e in es]
    # Q.K^T and weights.V are the only products with batch dimensions (batch and head), one pair per block
    batched = [e for e in eqns if e.params["dimension_numbers"][1][0]]
    assert len(batched) == 2 * depth
    assert all(len(e.params["dimension_numbers"][1][0]) == 2 for e in batched)

    # their results are what the model uses: zeroing only those two products changes the output, and makes the
    # attention a plain average of values times zero, i.e. the block adds only the output projection's bias
    def zero_attention(lhs, rhs, dimension_numbers, precision=None, **kw):
        y = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, **kw)
        return y * 0 if dimension_numbers[1][0] else y

    y_ref = jax.jit(models.get("vit_tiny", depth=depth).apply)(variables, x)
    y_zero = jax.jit(models.get("vit_tiny", depth=depth, dot_general=zero_attention).apply)(variables, x)
    assert np.max(np.abs(np.asarray(y_ref) - np.asarray(y_zero))) > 1e-3


def test_resnet_training_mode_updates_batch_stats():
    x = jnp.asarray(np.random.default_rng(3).random((2, 16, 16, 3), dtype=np.float32))
    m = models.get("resnet20", num_classes=7)
    v = _fake_variables(_shapes(m, x))
    y, updates = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert y.shape == (2, 7)
    # a training step moves the running statistics (momentum 0.9 towards the batch's)
    before = v["batch_stats"]["stem_bn"]["mean"]
    after = updates["batch_stats"]["stem_bn"]["mean"]
    assert np.any(np.abs(np.asarray(after) - np.asarray(before)) > 1e-4)


def test_dropout_in_training_needs_and_uses_rng():
    x = jnp.asarray(np.random.default_rng(2).random((2, 8, 8, 1), dtype=np.float32))
    m = models.get("vit_tiny", dropout=0.5)
    v = _fake_variables(_shapes(m, x))
    run = jax.jit(lambda v, x, key: m.apply(v, x, train=True, rngs={"dropout": key}))
    assert not np.allclose(run(v, x, jax.random.key(1)), run(v, x, jax.random.key(2)))
    ev = jax.jit(lambda v, x: m.apply(v, x, train=False))
    np.testing.assert_array_equal(ev(v, x), ev(v, x))


def test_registry_and_errors():
    assert models.available() == ["lenet300", "lenet5", "resnet20", "resnet18", "vit_tiny"]
    assert isinstance(models.get("LeNet-300-100"), models.LeNet300100)
    assert models.get("resnet18", width=16).widths == (16, 32, 64, 128)
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        models.get("vgg16")
    with pytest.raises(TypeError, match="no attribute"):
        models.get("lenet5", depth=3)
    with pytest.raises(ValueError, match="unknown activation"):
        models.get("lenet5", act="swish").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="at least 10x10"):
        models.get("lenet5").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="must divide the image size"):
        models.get("vit_tiny", patch_size=3).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
