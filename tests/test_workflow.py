"""The researcher's workflow on small runs (LeNet-300 on the 8x8 digits): evaluate trained weights from every
kind of source, per-layer sensitivity, the layer list rules match, seeds, the paper table, the fine-tuning
protocol, and the README's Python blocks."""

import json
import re
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import pytest

import amsim
from amsim import cli
from amsim._weights import load_variables

SMALL = dict(model="lenet300", dataset="digits", batch_size=64, lr=3e-3, train_limit=640, test_limit=200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One fp32 run kept in a results folder: (out dir, run file, RunResult)."""
    out = tmp_path_factory.mktemp("wf")
    (run,) = amsim.compare(["fp32"], out_dir=out, progress=False, plot=False, epochs=2, **SMALL)
    (path,) = (out / "runs").glob("*.json")
    return out, path, run


def _variables(path):
    like = {"params": jax.tree_util.tree_map(np.zeros_like, _params_like())}
    return load_variables(path, like)


def _params_like():
    import jax.numpy as jnp

    m = amsim.models.get("lenet300", num_classes=10)
    return m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)["params"]


def test_evaluate_every_kind_of_source_gives_the_same_numbers(trained, tmp_path):
    out, path, run = trained
    res = amsim.evaluate(path, ["mbm", "mitchell4"], progress=False)
    assert [r.label for r in res] == ["fp32", "mbm7", "mitchell4"]
    fp32, mbm, mit = res
    # the weights in fp32 are the run's own last evaluation, bit for bit (same test set, same compiled model)
    assert fp32.top1 == run.test_acc and fp32.n == 200 and fp32.delta == 0
    assert 0 < mit.top1 < 1 and mit.delta == mit.top1 - fp32.top1 and mbm.delta == mbm.top1 - fp32.top1
    assert fp32.top5 >= fp32.top1 and mbm.top5 is not None  # 10 classes: top-5 reported
    assert mbm.multipliers["*"]["digest"] == amsim.multipliers.mbm(7).digest
    variables = _variables(path)
    npz = tmp_path / "params.npz"
    flat = {"/".join(k.key for k in kp): np.asarray(v)
            for kp, v in jax.tree_util.tree_leaves_with_path(variables["params"])}
    np.savez(npz, **flat)
    msg = tmp_path / "params.msgpack"
    msg.write_bytes(flax.serialization.to_bytes(variables))
    sources = [run, run.checkpoint, npz, msg]
    for src in sources:
        kw = {"model": "lenet300", "dataset": "digits", "test_limit": 200} if src in (npz, msg) else {}
        again = amsim.evaluate(src, ["mitchell4"], progress=False, **kw)
        assert [(r.top1, r.top5, r.loss) for r in again] == [(r.top1, r.top5, r.loss) for r in (fp32, mit)], src
        assert again[0].weights == fp32.weights  # what the numbers stand for, whatever the file
    # a params file must say which model it is for; the wrong model is refused, naming the shapes
    with pytest.raises(amsim.AmsimError, match="model and dataset"):
        amsim.evaluate(npz, ["mbm"], progress=False)
    with pytest.raises(amsim.AmsimError):
        amsim.evaluate(npz, ["mbm"], model="lenet5", dataset="mnist", test_limit=10, progress=False)


def test_evaluate_baseline_is_plain_fp32_and_rules_apply(trained):
    _, path, _ = trained
    plain = amsim.evaluate(path, [], progress=False)
    ruled = amsim.evaluate(path, ["fp32", "mbm"], rules=[("fc1", "mitchell3")], progress=False)
    assert len(plain) == 1 and [r.label for r in ruled] == ["fp32", "fp32+fc1=mitchell3", "mbm7+fc1=mitchell3"]
    assert ruled[0].top1 == plain[0].top1 and ruled[0].rules == ()
    assert ruled[1].multipliers["fc1"]["name"] == "mitchell3" and ruled[1].delta == ruled[1].top1 - plain[0].top1
    with pytest.raises(ValueError, match="Did you mean 'mitchell'"):
        amsim.evaluate(path, ["mbm", "michell"], progress=False)  # checked before anything is evaluated


def test_stale_run_file_after_a_longer_run_continued_its_checkpoint(tmp_path):
    short = amsim.compare(["fp32"], out_dir=tmp_path, progress=False, plot=False, epochs=1, **SMALL)[0]
    short_file = amsim._report.run_file(tmp_path, short)
    amsim.compare(["fp32"], out_dir=tmp_path, progress=False, plot=False, epochs=2, **SMALL)
    with pytest.raises(amsim.AmsimError, match="a longer run continued it"):
        amsim.evaluate(short_file, ["mbm"], progress=False)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2  # both runs kept


def test_sensitivity_is_evaluate_with_one_layer_each_way(trained, tmp_path):
    _, path, _ = trained
    sens = amsim.sensitivity(path, "mitchell3", progress=False)
    assert [d["path"] for d in sens.layers] == ["fc1", "fc2", "fc3"]
    assert [d["macs"] for d in sens.layers] == [64 * 300, 300 * 100, 100 * 10]
    ev = amsim.evaluate(path, ["mitchell3"], progress=False)
    assert (sens.fp32, sens.all_layers) == (ev[0].top1, ev[1].top1) and sens.multiplier == "mitchell3"
    for d in sens.layers:
        only = amsim.evaluate(path, ["fp32"], rules=[(f"^{d['path']}$", "mitchell3")], progress=False)[1]
        but = amsim.evaluate(path, ["mitchell3"], rules=[(f"^{d['path']}$", "exact")], progress=False)[1]
        assert (d["only"], d["all_but"]) == (only.top1, but.top1), d
    for fmt in ("text", "md", "latex", "csv"):
        assert "fc2" in sens.table(fmt)
    assert sens.plot(tmp_path / "s.png").stat().st_size > 5_000


def test_layers_are_the_paths_rules_match(capsys):
    ops = amsim.layers("lenet5", "mnist")
    assert [o["path"] for o in ops] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    conv1, conv2, fc1 = ops[:3]
    assert conv1["op"] == "conv_general_dilated" and conv1["params"] == 5 * 5 * 1 * 6 + 6
    assert fc1["macs"] == fc1["params"] - 120 == 400 * 120  # 16x5x5 features -> 120, bias not a product
    assert conv2["macs"] == 10 * 10 * 16 * 5 * 5 * 6  # VALID 5x5 on 14x14x6
    assert cli.main(["layers", "--model", "lenet5", "--format", "md"]) == 0
    text = capsys.readouterr().out
    assert "| conv2 |" in text and "| (total) |" in text
    # every listed path is accepted by a rule (and a path that is not listed is refused, listing them)
    for o in ops:
        amsim.nn.approximate(amsim.models.get("lenet5"), {f"^{o['path']}$": "mbm", "*": "exact"})
    with pytest.raises(ValueError, match="conv1"):
        amsim.train(multiplier="fp32", rules=(("conv9", "mbm"),), epochs=1, model="lenet5", dataset="mnist",
                    train_limit=128, test_limit=16, progress=False)


BUILTINS = [amsim.multipliers.exact(7), amsim.multipliers.exact_truncated(7), amsim.multipliers.mitchell(5),
            amsim.multipliers.mbm(7), amsim.multipliers.alm_soa(7, k=3), amsim.multipliers.realm(7, segments=16),
            amsim.multipliers.truncated_significand(7, t=9), amsim.multipliers.exact_int(8),
            amsim.multipliers.drum(4), amsim.multipliers.drum(4, signed=False),
            amsim.multipliers.broken_array(8, hbl=1, vbl=4), amsim.multipliers.truncated_array(8, t=4),
            amsim.multipliers.kulkarni(8, signed=False), amsim.multipliers.mitchell_int(8),
            amsim.multipliers.mbm(5, rounding="truncate"), amsim.multipliers.exact_truncated(7, rounding="nearest")]


@pytest.mark.parametrize("mult", BUILTINS, ids=lambda m: m.name)
def test_every_builtin_is_reachable_by_its_printed_name(mult):
    assert amsim.multipliers.get(mult.name).digest == mult.digest
    assert amsim.resolve_multiplier(mult.name).digest == mult.digest


def test_call_syntax_ranges_baselines_and_typos():
    get = amsim.multipliers.get
    assert get("alm_soa(m=7, k=3)").name == "alm_soa7_k3" == get("alm_soa7_k3").name
    assert get("realm(m=7, segments=16)").digest == get("realm7_M16").digest
    assert get("trunc_sig(m=7,t=9)").name == "trunc_sig7_t9"
    assert amsim.multipliers.expand("drum(k=3..6)") == [f"drum(k={k})" for k in range(3, 7)]
    assert amsim.multipliers.expand("alm_soa(m=6..7, k=2..3)") == [
        "alm_soa(m=6, k=2)", "alm_soa(m=6, k=3)", "alm_soa(m=7, k=2)", "alm_soa(m=7, k=3)"]
    assert get("bf16").digest == amsim.multipliers.exact(7).digest
    assert get("fp16").operand_format.name == "fp16" and get("e4m3").mantissa_bits == 3
    assert get("e5m2").mantissa_bits == 2
    with pytest.raises(ValueError, match="Did you mean 'mitchell'"):
        get("michell")
    with pytest.raises(ValueError, match=r"does not take 'q'"):
        get("drum(q=3)")
    with pytest.raises(ValueError, match="range"):
        amsim.multipliers.expand("drum(k=6..3)")
    # every spec of a sweep is resolved before the first run trains
    with pytest.raises(ValueError, match="Did you mean"):
        amsim.compare(["fp32", "mbmm"], out_dir="/nonexistent/never-created", progress=False, epochs=1, **SMALL)


def test_seeds_give_mean_and_std_and_the_report_merges_every_run(trained, capsys):
    out, _, _ = trained  # holds the seed-0 fp32 run (2 epochs) already: it is reused, not retrained
    runs = amsim.compare(["fp32", "mitchell4"], out_dir=out, seeds=[0, 1], progress=False, plot=True, epochs=2,
                         **SMALL)
    assert [(r.config.label, r.config.seed) for r in runs] == [("fp32", 0), ("fp32", 1), ("mitchell4", 0),
                                                                ("mitchell4", 1)]
    assert runs[0].resumed_from == 2  # the fixture's run, from its checkpoint
    csv = amsim.report(out, "csv").splitlines()
    head = csv[0].split(",")
    rows = {d["multiplier"]: d for d in (dict(zip(head, r.split(","), strict=True)) for r in csv[1:])}
    for label in ("fp32", "mitchell4"):
        accs = [100 * r.test_acc for r in runs if r.config.label == label]
        assert float(rows[label]["test_acc_mean_pct"]) == pytest.approx(np.mean(accs), abs=0.005)
        assert float(rows[label]["test_acc_std_pct"]) == pytest.approx(np.std(accs, ddof=1), abs=0.005)
        assert rows[label]["seeds"] == "0 1" and rows[label]["epochs"] == "2"
    assert float(rows["mitchell4"]["delta_vs_fp32_pct"]) == pytest.approx(
        float(rows["mitchell4"]["test_acc_mean_pct"]) - float(rows["fp32"]["test_acc_mean_pct"]), abs=0.011)
    md = amsim.report(out, "md")
    assert re.search(r"\| mitchell4 \|\s+2 \| 0,1 \|\s+\d+\.\d\d ± \d+\.\d\d \|", md), md
    latex = amsim.report(out, "latex")
    assert "\\begin{tabular}" in latex and "\\pm" in latex and "\\end{tabular}" in latex
    assert cli.main(["report", str(out), "--format", "csv", "-o", str(out / "t.csv")]) == 0
    assert (out / "t.csv").read_text().strip() == "\n".join(csv)
    assert (out / "lenet300-digits.png").stat().st_size > 10_000


def test_protocol_pretrain_evaluate_finetune(tmp_path):
    res = amsim.protocol(["mitchell3"], pretrain_epochs=1, finetune_epochs=1, out_dir=tmp_path, progress=False,
                         **SMALL)
    (pre,) = res.pretrained
    (before,) = res.before["mitchell3"]
    (after,) = res.after["mitchell3"]
    # "before" is the pretrained weights evaluated under the multiplier; fine-tuning starts from those weights
    assert before.weights == after.identity["init"] and before.delta == before.top1 - pre.test_acc
    assert after.config.init_from and after.config.epochs == 1 and after.run_id != pre.run_id
    (control,) = res.control  # the same fine-tuning in fp32: the after-fine-tuning Δ is against it
    assert control.config.label == "fp32+finetuned" and control.identity["init"] == before.weights
    table = res.table("md")
    assert "| mitchell3 |" in table and f"{100 * after.test_acc:.2f}" in table
    assert f"{100 * (after.test_acc - control.test_acc):+.2f}" in table
    assert (tmp_path / "lenet300-digits-protocol.md").read_text().strip() == table.strip()
    # the same protocol again trains nothing: every run is found in the folder
    again = amsim.protocol(["mitchell3"], pretrain_epochs=1, finetune_epochs=1, out_dir=tmp_path, progress=False,
                           **SMALL)
    assert again.after["mitchell3"][0].resumed_from == 1 and again.table("md") == table


def test_init_from_enters_the_run_identity(trained, tmp_path):
    _, path, run = trained
    a = amsim.train(multiplier="fp32", epochs=1, init_from=str(path), progress=False, **SMALL)
    b = amsim.train(multiplier="fp32", epochs=1, progress=False, **SMALL)
    assert a.run_id != b.run_id and a.identity["init"] == amsim.evaluate(path, [], progress=False)[0].weights
    # starting from trained weights: the first epoch of the fine-tune is already far better than from scratch
    assert a.history[0]["test_acc"] >= run.test_acc - 0.05 > b.history[0]["test_acc"] - 0.5
    with pytest.raises(amsim.AmsimError, match="does not exist"):
        amsim.train(multiplier="fp32", epochs=1, init_from=str(tmp_path / "nope.json"), progress=False, **SMALL)


def test_compile_time_is_apart_from_epoch_time(trained):
    out, path, run = trained
    assert run.compile_time > 0 and all(h["epoch_time"] > 0 for h in run.history)
    # the run file keeps the session that trained it, even after a rerun resumed it and trained nothing
    again = amsim.compare(["fp32"], out_dir=out, progress=False, plot=False, epochs=2, **SMALL)[0]
    assert again.resumed_from == 2 and again.compile_time != run.compile_time
    assert json.loads(path.read_text())["run"]["compile_time"] == run.compile_time


def test_readme_python_blocks_run_in_order():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README


def test_demo_runs_every_step_and_a_failing_step_fails_it(tmp_path, capsys):
    from amsim import demo

    small = ["--model", "lenet300", "--dataset", "digits", "--train-limit", "256", "--test-limit", "100",
             "--multipliers", "mbm5", "--sensitivity", "mitchell4", "--no-progress"]
    out = tmp_path / "fresh" / "results"  # does not exist yet
    assert demo.main([*small, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert all(f"=== {i}." in text for i in range(1, 5)) and "| mbm5+finetuned |" in text
    assert (out / "multipliers.png").is_file() and (out / "lenet300-digits-protocol.md").is_file()
    assert (out / "sensitivity-lenet300-digits-mitchell4.png").is_file()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert demo.main([*small, "--out", str(blocked / "results")]) == 2
    assert "amsim: error:" in capsys.readouterr().err
    assert demo.main([*small, "--out", str(out), "--multipliers", "mbm5,nosuch"]) == 2


def test_protocol_refuses_options_it_would_ignore(capsys):
    for extra in (["--epochs", "3"], ["--init-from", "x.json"]):
        assert cli.main(["compare", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--multipliers", "mbm",
                         "--model", "lenet300", "--dataset", "digits", *extra]) == 2
        assert f"{extra[0]} does not apply to the protocol" in capsys.readouterr().err
