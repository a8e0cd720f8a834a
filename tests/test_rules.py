"""Interception rules: a rule that matches nothing is an error naming the model's operation paths; "exact",
"fp32" and "native" mean native float32 everywhere; labels say which rules were applied."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import amsim
from amsim import cli, models
from amsim import nn as ann
from amsim._train import RunConfig, resolve_multiplier

X = jnp.zeros((2, 28, 28, 1), jnp.float32)
LENET5_OPS = [("conv1", "conv_general_dilated"), ("conv2", "conv_general_dilated"), ("fc1", "dot_general"),
              ("fc2", "dot_general"), ("fc3", "dot_general")]


def test_op_paths_lists_what_rules_match():
    recs = ann.op_paths(models.get("lenet5"), X, train=False)
    assert [(r.path, r.op) for r in recs] == LENET5_OPS
    assert recs[0].shapes == ((2, 28, 28, 1), (5, 5, 1, 6)) and recs[2].shapes == ((2, 400), (400, 120))


@pytest.mark.parametrize("rules", [{"Conv_9": "mitchell", "*": "exact"},
                                   {"fc1": amsim.multipliers.mbm(7), "Dense_0": "mitchell", "*": "exact"},
                                   {".*": "mbm", "fc1": "mitchell"}])  # shadowed by the rule before it
def test_linen_rule_matching_nothing_is_an_error_listing_the_paths(rules):
    approx = ann.approximate(models.get("lenet5"), rules)
    with pytest.raises(amsim.RuleError, match=r"(?s)matched no operation.*conv1  \(conv_general_dilated\).*fc3"):
        approx.init(jax.random.key(0), X)


def test_catch_all_may_be_unused():
    rules = {"conv.*": "mitchell", "fc.*": "exact", "*": "mbm"}
    approx = ann.approximate(models.get("lenet5"), rules)
    approx.init(jax.random.key(0), X)
    assert [(r.path, r.rule) for r in approx.trace_log] == [("conv1", "conv.*"), ("conv2", "conv.*"),
                                                             ("fc1", "fc.*"), ("fc2", "fc.*"), ("fc3", "fc.*")]


class _Nnx(nnx.Module):
    def __init__(self, rngs):
        self.lin1 = nnx.Linear(4, 3, rngs=rngs)
        self.lin2 = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.lin2(self.lin1(x))


def test_nnx_rule_matching_nothing_is_refused_before_any_layer_changes():
    model = _Nnx(nnx.Rngs(0))
    assert [(r.path, r.op) for r in ann.op_paths(model)] == [("lin1", "dot_general"), ("lin2", "dot_general")]
    before = model.lin1.dot_general
    with pytest.raises(amsim.RuleError, match=r"(?s)'Linear_0'.*lin1  \(dot_general\)"):
        ann.approximate(model, {"Linear_0": "mbm", "*": "exact"})
    assert model.lin1.dot_general is before  # untouched


def test_bad_regex_is_an_error():
    with pytest.raises(amsim.RuleError, match="not a valid regular expression"):
        ann.approximate(models.get("lenet5"), {"conv[": "mbm", "*": "exact"})


def test_exact_fp32_native_mean_native_everywhere():
    for name in ("exact", "fp32", "native", "FP32"):
        assert resolve_multiplier(name) == "fp32"
        assert ann.OpConfig(name).is_native
        assert ann.Rules.make({"*": name}).items[0][1] is None
    with pytest.raises(ValueError, match="'exact7'"):
        amsim.multipliers.get("exact")
    assert amsim.multipliers.get("exact7") == amsim.multipliers.exact(7)  # the simulated one has its width


def _cfg(**kw):
    return RunConfig(**{**dict(model="lenet5", dataset="mnist", epochs=1, batch_size=32, train_limit=64,
                               test_limit=32), **kw})


def test_cli_rule_exact_is_native_and_labels_name_the_rules(tmp_path, capsys):
    rc = cli.main(["train", "--model", "lenet5", "--dataset", "mnist", "--multiplier", "mbm5", "--epochs", "1",
                   "--train-limit", "64", "--test-limit", "32", "--batch-size", "32", "--out", str(tmp_path),
                   "--no-progress", "--rule", "conv1=exact", "--rule", "fc.*=mitchell3"])
    assert rc == 0
    data = json.loads((tmp_path / "lenet5-mnist.json").read_text())["runs"]
    assert data[0]["label"] == "mbm5+conv1=fp32+fc.*=mitchell3"  # "exact" in a rule is native fp32
    layers = {a[0]: a[2] for a in data[0]["approximated"]}
    assert layers == {"conv1": "fp32", "conv2": "mbm5", "fc1": "mitchell3", "fc2": "mitchell3", "fc3": "mitchell3"}
    assert "mbm5+conv1=fp32+fc.*=mitchell3" in capsys.readouterr().out


def test_cli_rule_matching_nothing_stops_before_training(tmp_path, capsys):
    rc = cli.main(["train", "--model", "lenet5", "--dataset", "mnist", "--multiplier", "fp32", "--epochs", "1",
                   "--train-limit", "64", "--test-limit", "32", "--out", str(tmp_path), "--no-progress",
                   "--rule", "Conv_0=mitchell"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'Conv_0' matched no operation" in err and "conv1  (conv_general_dilated)" in err
    assert not list(tmp_path.rglob("*.msgpack")) and not (tmp_path / "lenet5-mnist.json").exists()


def test_label_lists_rules():
    assert _cfg(multiplier="fp32", rules=(("conv1", "mitchell"),)).label == "fp32+conv1=mitchell"
    assert _cfg(multiplier="mbm", backward="ste").label == "mbm+bwd-ste"
    assert np.unique([_cfg(multiplier="fp32", rules=((p, "mbm"),)).label for p in ("conv1", "conv2")]).size == 2
