"""The main job: multiplier specs, every model fully approximated, training runs, resume, results, CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amsim
from amsim import cli, interop, models
from amsim import nn as ann
from amsim._report import compare, results_table
from amsim._train import RunConfig, resolve_multiplier, run_id_of, train


def test_resolve_specs(tmp_path):
    assert resolve_multiplier("fp32") == "fp32"
    assert resolve_multiplier("mbm") == amsim.multipliers.mbm(7)
    assert resolve_multiplier("bf16") == amsim.multipliers.exact(7)
    mod = tmp_path / "mine.py"
    mod.write_text("import amsim\n\n@amsim.multiplier(mantissa_bits=4)\ndef half_lsb(x, y):\n    return x * y\n\n"
                   "def plain(x, y):\n    return x * y\n")
    m = resolve_multiplier(f"{mod}:half_lsb")
    assert m.mantissa_bits == 4 and m.name == "half_lsb"
    with pytest.raises(TypeError, match="decorate it"):
        resolve_multiplier(f"{mod}:plain")
    p = amsim.multipliers.mitchell(5).save(tmp_path / "mit5.npz")
    assert resolve_multiplier(str(p)).mantissa_bits == 5
    with pytest.raises(ValueError, match="unknown multiplier"):
        resolve_multiplier("nope")


def _walk(jaxpr, counts):
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    _walk(sub.jaxpr, counts)
                elif hasattr(sub, "eqns"):
                    _walk(sub, counts)
    return counts


@pytest.mark.parametrize("name", models.available())
def test_every_product_of_every_model_is_approximated(name):
    """No native dot_general/conv is left in the forward pass nor in the gradient: only amsim callbacks."""
    model = models.get(name, num_classes=10, **({"width": 8} if name == "resnet18" else {}))  # narrow: same graph
    approx = ann.approximate(model, {"*": amsim.multipliers.mbm(7)})
    x = jnp.asarray(np.random.default_rng(0).random((2, 28, 28, 1) if "lenet" in name else (2, 32, 32, 3),
                                                    dtype=np.float32))
    variables = approx.init(jax.random.key(0), x, train=False)
    assert approx.trace_log and all(r.config is not None for r in approx.trace_log)

    def loss(p):
        return approx.apply({**variables, "params": p}, x, train=False).sum()

    fwd = _walk(jax.make_jaxpr(lambda p: approx.apply({**variables, "params": p}, x, train=False))(
        variables["params"]).jaxpr, {})
    bwd = _walk(jax.make_jaxpr(jax.grad(loss))(variables["params"]).jaxpr, {})
    for counts in (fwd, bwd):
        assert counts.get("dot_general", 0) == 0 and counts.get("conv_general_dilated", 0) == 0, counts
        assert counts.get("buffer_callback", 0) > 0
    # backward: two gradient products per layer weight (minus d(input) of the first layer), all callbacks
    assert bwd["buffer_callback"] > fwd["buffer_callback"]


def _cfg(**kw):
    base = dict(model="lenet300", dataset="digits", epochs=2, batch_size=64, lr=3e-3, train_limit=640,
                test_limit=200)
    base.update(kw)
    return RunConfig(**base)


def _strip(history):
    return [{k: v for k, v in e.items() if k not in ("epoch_time", "samples_per_s")} for e in history]


def test_training_learns_and_resumes_identically(tmp_path, capsys):
    full = train(_cfg(multiplier="mbm"), progress=False)
    assert full.history[-1]["test_acc"] > 0.5  # 10 classes: far above chance after 2 short epochs
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]
    assert {a[2] for a in full.approximated} == {"mbm7"}
    ckpt = tmp_path / "run.msgpack"
    first = train(_cfg(multiplier="mbm", epochs=1), progress=False, checkpoint=ckpt)
    assert len(first.history) == 1 and first.resumed_from == 0
    # raising the epoch count continues the same run from its checkpoint, bit for bit the uninterrupted run
    resumed = train(_cfg(multiplier="mbm"), progress=False, checkpoint=ckpt)
    assert resumed.resumed_from == 1 and resumed.run_id == first.run_id == full.run_id
    assert _strip(resumed.history) == _strip(full.history)
    out = capsys.readouterr().out
    assert f"resuming run {first.run_id[:12]} after epoch 1 of 2 from {ckpt}" in out
    # asking for fewer epochs than the checkpoint holds reports them from its history, training nothing
    again = train(_cfg(multiplier="mbm", epochs=1), progress=False, checkpoint=ckpt)
    assert _strip(again.history) == _strip(full.history[:1]) and again.resumed_from == 2
    assert "nothing trained" in capsys.readouterr().out


def test_compare_writes_results(tmp_path):
    res = compare(["fp32", "mitchell4"], out_dir=tmp_path, progress=False, **{
        k: v for k, v in vars(_cfg(epochs=1)).items() if k != "multiplier"})
    assert [r.config.label for r in res] == ["fp32", "mitchell4"]
    assert res[0].approximated == []
    table = results_table(res)
    assert "fp32" in table and "mitchell4" in table and "Δ vs fp32" in table
    data = json.loads((tmp_path / "lenet300-digits.json").read_text())
    runs = data["runs"]
    assert runs[1]["history"][0]["test_acc"] == res[1].test_acc
    assert data["versions"]["amsim"] == amsim.__version__ and data["versions"]["jax"] == jax.__version__
    assert data["created"] and data["command"] and data["machine"]["processor"]
    mit = runs[1]["multipliers"]["*"]
    assert mit["digest"] == amsim.multipliers.mitchell(4).digest and mit["stats"]["mre"] > 0
    assert runs[0]["multipliers"]["*"] == {"name": "fp32", "native": True}
    assert runs[0]["run_id"] != runs[1]["run_id"]
    assert (tmp_path / "lenet300-digits.csv").read_text().count("\n") == 3
    assert (tmp_path / "lenet300-digits.png").stat().st_size > 10_000


def test_cli_compare_and_inspect(tmp_path, capsys):
    rc = cli.main(["compare", "--model", "lenet300", "--dataset", "digits", "--multipliers", "fp32,mbm5",
                   "--epochs", "1", "--train-limit", "256", "--test-limit", "100", "--out", str(tmp_path),
                   "--no-progress", "--rule", "fc1=mitchell3", "--backward", "ste"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mbm5+bwd-ste+fc1=mitchell3" in out and "fp32+bwd-ste+fc1=mitchell3" in out
    data = json.loads((tmp_path / "lenet300-digits.json").read_text())["runs"]
    layers = {tuple(a) for a in data[1]["approximated"]}
    assert ("fc1", "dot_general", "mitchell3") in layers and ("fc2", "dot_general", "mbm5") in layers
    rc = cli.main(["inspect", "mbm", "mitchell", "--heatmap", str(tmp_path / "h.png")])
    assert rc == 0 and (tmp_path / "h.png").exists()
    assert "mitchell7" in capsys.readouterr().out
    assert cli.main(["inspect", "nonexistent"]) == 2


# ---- run identity: what decides a result is what a checkpoint is matched by --------------------------------------
def _cli_train(out, spec, *extra):
    return cli.main(["train", "--model", "lenet300", "--dataset", "digits", "--multiplier", spec, "--epochs", "1",
                     "--train-limit", "256", "--test-limit", "100", "--batch-size", "64", "--out", str(out),
                     "--no-progress", *extra])


def _latest(out):
    """The run the last command finished (the summary keeps every run, oldest first)."""
    return json.loads((out / "lenet300-digits.json").read_text())["runs"][-1]


def test_changed_model_body_is_a_new_run_not_the_old_result(tmp_path, capsys):
    sub = tmp_path / "my" / "models"
    sub.mkdir(parents=True)
    src = sub / "my.py"
    src.write_text("import amsim\n\n@amsim.multiplier(mantissa_bits=4)\ndef fn(x, y):\n    return x * y\n")
    assert _cli_train(tmp_path, f"{src}:fn") == 0
    first = _latest(tmp_path)
    src.write_text("import amsim\n\n@amsim.multiplier(mantissa_bits=4)\ndef fn(x, y):\n"
                   "    return 1.0 + (x - 1) + (y - 1)\n")
    assert _cli_train(tmp_path, f"{src}:fn") == 0
    second = _latest(tmp_path)
    assert "resuming" not in capsys.readouterr().out  # trained, not the old accuracy printed again
    assert second["run_id"] != first["run_id"] and second["resumed_from"] == 0
    assert second["multipliers"]["*"]["digest"] != first["multipliers"]["*"]["digest"]
    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    assert len(ckpts) == 2 and all(p.is_file() and p.suffix == ".msgpack" for p in ckpts)  # flat: no folders
    assert all("/" not in p.name and "my_models" not in str(p.parent) for p in ckpts)


def test_overwritten_table_file_is_a_new_run(tmp_path, capsys):
    luts = tmp_path / "luts"
    luts.mkdir()
    path = luts / "x_7.bin"
    interop.save_approxtrain(amsim.multipliers.exact_truncated(7), path)
    assert _cli_train(tmp_path, str(path)) == 0
    first = _latest(tmp_path)
    interop.save_approxtrain(amsim.multipliers.mbm(7), path)  # same path, other table
    assert _cli_train(tmp_path, str(path)) == 0
    second = _latest(tmp_path)
    assert second["run_id"] != first["run_id"] and second["resumed_from"] == 0
    capsys.readouterr()
    assert _cli_train(tmp_path, str(path)) == 0  # the same table again: resumed (complete), same result
    out = capsys.readouterr().out
    assert f"run {second['run_id'][:12]} already has 1 epoch(s)" in out
    third = _latest(tmp_path)  # the run file of the session that trained it is kept as it was
    assert third["run_id"] == second["run_id"] and third["history"] == second["history"]


def test_settings_that_decide_the_result_are_part_of_the_run(tmp_path):
    base_cfg = _cfg(multiplier="mitchell4", epochs=1, train_limit=128)
    base = run_id_of(base_cfg)
    assert train(base_cfg, progress=False).run_id == base  # the id train() uses
    for change in ({"seed": 1}, {"lr": 1e-2}, {"batch_size": 32}, {"train_limit": 192}, {"optimizer": "sgd"},
                   {"backward": "ste"}, {"multiplier": "mitchell5"}, {"rules": (("fc1", "mbm4"),)},
                   {"dataset": "mnist"}, {"test_limit": 100}):
        assert run_id_of(_cfg(**{"multiplier": "mitchell4", "epochs": 1, "train_limit": 128, **change})) != base, change
    same = [_cfg(multiplier="mitchell4", epochs=1, train_limit=128, data_dir=str(tmp_path)),  # not the data
            _cfg(multiplier="mitchell4", epochs=5, train_limit=128)]  # a longer run is the same run
    assert all(run_id_of(c) == base for c in same)


def test_checkpoint_of_another_run_or_damaged_is_refused(tmp_path):
    ckpt = tmp_path / "c.msgpack"
    train(_cfg(multiplier="mitchell4", epochs=1, train_limit=128), progress=False, checkpoint=ckpt)
    with pytest.raises(amsim.AmsimError, match="holds another run"):
        train(_cfg(multiplier="mbm4", epochs=1, train_limit=128), progress=False, checkpoint=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(amsim.AmsimError, match=r"c\.msgpack could not be read.*--no-resume"):
        train(_cfg(multiplier="mitchell4", epochs=1, train_limit=128), progress=False, checkpoint=ckpt)
