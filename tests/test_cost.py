"""Hardware cost: EvoApproxLib circuits (fixtures in its file format under tests/data/evoapprox), costs on
multipliers, the first-order energy model, the Pareto front and the per-layer assignment search."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import amsim
from amsim import cli
from amsim._energy import pareto_front, relative_power

LIB = Path(__file__).parent / "data" / "evoapprox"
BAD = Path(__file__).parent / "data" / "evoapprox_bad"
S8 = np.arange(-128, 128)
U8 = np.arange(256)

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler (apt-get install gcc)")


def test_signed_circuit_on_unsigned_c_types_is_read_as_twos_complement():
    m = amsim.interop.load_evoapprox(LIB / "multiplers/8x8_signed/pareto_pwr_mae/mul8s_T01.c")
    assert m.signed and m.int_bits == 8 and m.name == "mul8s_T01"
    np.testing.assert_array_equal(m.table.values, np.multiply.outer(S8, S8))
    assert m.digest == amsim.multipliers.exact_int(8).digest
    c = m.cost
    assert (c.power_mw, c.area_um2, c.delay_ns) == (0.4, 700.0, 1.4) and c.technology.startswith("PDK45")
    pub = dict(c.published)
    assert pub["MAE"] == 0 and pub["EP%"] == 0 and pub["exact_PWR_mW"] == 0.4 and relative_power(m) == 1.0


def test_parameter_order_b_a_is_respected():
    m = amsim.interop.load_evoapprox(LIB / "multiplers/8x8_unsigned/pareto_pwr_mae/mul8u_T03.c")
    # declared f(B, A) returning A * (B & ~1): the table is [A, B] whatever the declared order
    np.testing.assert_array_equal(m.table.values, np.multiply.outer(U8, U8 & ~1))
    assert m.table.values[3, 5] == 12 and not m.signed
    assert relative_power(m) == pytest.approx(0.25 / 0.39)


def test_folder_gives_each_circuit_once_with_filters():
    lib = amsim.interop.load_evoapprox(LIB)
    assert list(lib) == ["mul8u_T03", "mul8s_T02", "mul8u_T04", "mul8s_T01"]  # by power
    assert "pareto_pwr_mae, pareto_pwr_wce" in lib["mul8s_T02"].cost.source
    assert set(amsim.interop.load_evoapprox(LIB, signed=True)) == {"mul8s_T01", "mul8s_T02"}
    assert set(amsim.interop.load_evoapprox(LIB, subset="wce")) == {"mul8s_T02"}
    assert set(amsim.interop.load_evoapprox(LIB / "multiplers/8x8_unsigned")) == {"mul8u_T03", "mul8u_T04"}
    assert set(amsim.interop.load_evoapprox(LIB, names=["mul8u_T04"])) == {"mul8u_T04"}
    with pytest.raises(amsim.AmsimError, match="no circuit mul8u_NOPE"):
        amsim.interop.load_evoapprox(LIB, names=["mul8u_NOPE"])


def test_wide_circuits_say_they_are_not_supported():
    with pytest.raises(amsim.UnsupportedError, match="12-bit .* not supported yet"):
        amsim.interop.load_evoapprox(LIB, bits=12)
    with pytest.raises(amsim.UnsupportedError, match="12-bit circuits are not supported yet"):
        amsim.interop.load_evoapprox(LIB / "multiplers/12x12_unsigned/pareto_pwr_mae/mul12u_T05.c")


def test_header_mismatch_names_both_values():
    with pytest.raises(amsim.InvalidTableError, match=r"MAE = 1 over all 65536 operand pairs, but its header says "
                                                      r"MAE = 2"):
        amsim.interop.load_evoapprox(BAD / "mul8s_T02.c")
    assert amsim.interop.load_evoapprox(BAD / "mul8s_T02.c", check=False).cost.power_mw == 0.3


def test_cost_is_kept_in_the_table_file_and_is_not_identity(tmp_path):
    m = amsim.multipliers.drum(4)
    c = m.with_cost(power_mw=0.2, area_um2=300, delay_ns=1.0, source="paper X", technology="45 nm",
                    published={"exact_PWR_mW": 0.4})
    assert c == m and c.digest == m.digest and m.cost is None and relative_power(c) == 0.5
    path = c.save(tmp_path / "d.npz")
    back = amsim.Multiplier.load(path)
    assert back.cost == c.cost and back == m
    # editing the cost in the file is refused like any other metadata
    with np.load(path) as z:
        values, meta = z["values"], json.loads(str(z["metadata"]))
    meta["cost"]["power_mw"] = 0.01
    np.savez(tmp_path / "e.npz", values=values, metadata=np.array(json.dumps(meta)))
    with pytest.raises(amsim.InvalidTableError, match="digest"):
        amsim.Multiplier.load(tmp_path / "e.npz")
    with pytest.raises(ValueError, match="power_mw"):
        m.with_cost(power_mw=-1)
    assert m.with_cost(power_mw=0.3, relative=True).cost.relative and relative_power(m.with_cost(
        power_mw=0.3, relative=True)) == 0.3


def test_sign_magnitude_of_an_unsigned_circuit():
    u = amsim.interop.load_evoapprox(LIB / "multiplers/8x8_unsigned/pareto_pwr_mae/mul8u_T03.c")
    s = amsim.interop.sign_magnitude(u)
    mag = np.abs(S8)
    want = np.multiply.outer(mag, mag & ~1) * np.multiply.outer(np.sign(S8), np.sign(S8))
    np.testing.assert_array_equal(s.table.values, want)
    assert s.signed and s.name == "mul8u_T03_sm" and s.cost == u.cost


def test_energy_is_macs_weighted_relative_power():
    half = amsim.multipliers.drum(4).with_cost(power_mw=0.5, relative=True)
    quarter = amsim.multipliers.drum(3).with_cost(power_mw=0.25, relative=True)
    macs = {"fc1": 64 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
    e = amsim.energy("lenet300", half, rules=(("fc2", quarter), ("fc3", "fp32")), dataset="digits")
    want = (macs["fc1"] * 0.5 + macs["fc2"] * 0.25 + macs["fc3"] * 1.0) / sum(macs.values())
    assert e.relative == pytest.approx(want) and e.total_macs == sum(macs.values())
    assert [d["relative_power"] for d in e.layers] == [0.5, 0.25, 1.0]
    assert amsim.energy("lenet300", "drum4", dataset="digits").relative is None  # no cost known
    assert amsim.energy("lenet300", "fp32", dataset="digits").relative == 1.0


def test_pareto_front():
    pts = [(1.0, 0.95), (0.5, 0.94), (0.6, 0.93), (0.2, 0.90), (0.3, 0.85), (None, 0.99), (0.2, 0.90)]
    assert pareto_front(pts) == [3, 6, 1, 0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost")
    (run,) = amsim.compare(["fp32"], out_dir=out, progress=False, plot=False, model="lenet300", dataset="digits",
                           epochs=2, batch_size=64, lr=3e-3, train_limit=640, test_limit=300)
    return out, next((out / "runs").glob("*.json")), run


def test_cli_takes_evoapprox_specs_everywhere(trained, capsys, monkeypatch):
    out, run_file, run = trained
    monkeypatch.delenv("AMSIM_EVOAPPROX_DIR", raising=False)
    assert cli.main(["inspect", "evo:mul8s_T02", "--evoapprox-dir", str(LIB)]) == 0
    text = capsys.readouterr().out
    assert "mul8s_T02" in text and "0.3 mW" in text and "0.750 x the exact multiplier's power" in text
    assert cli.main(["evaluate", "--from", str(run_file), "--multipliers", "evo:mul8s_T02,evo:mul8u_T03,drum4",
                     "--evoapprox-dir", str(LIB), "--out", str(out), "--no-progress", "--pareto"]) == 0
    text = capsys.readouterr().out
    assert "rel. energy" in text and "mul8u_T03_sm" in text  # unsigned circuit in a sign-magnitude datapath
    doc = json.loads(next(out.glob("evaluate-*.json")).read_text())
    rows = {r["label"]: r for r in doc["results"]}
    assert rows["mul8s_T02"]["energy"] == pytest.approx(0.75) and rows["drum4_int8"]["energy"] is None
    assert rows["mul8s_T02"]["multipliers"]["*"]["cost"]["power_mw"] == 0.3
    assert next(out.glob("evaluate-*-pareto.png")).stat().st_size > 10_000
    # training with a circuit: the run records its energy, the table and the Pareto plot show it
    assert cli.main(["compare", "--model", "lenet300", "--dataset", "digits", "--multipliers", "fp32,evo:mul8s_T02",
                     "--epochs", "1", "--train-limit", "256", "--test-limit", "100", "--batch-size", "64",
                     "--out", str(out / "c"), "--no-progress", "--pareto", "--evoapprox-dir", str(LIB)]) == 0
    text = capsys.readouterr().out
    assert "rel. energy" in text and "0.750" in text
    runs = {r["label"]: r for r in json.loads((out / "c" / "lenet300-digits.json").read_text())["runs"]}
    assert runs["mul8s_T02"]["energy"] == pytest.approx(0.75) and runs["fp32"]["energy"] == 1.0
    assert (out / "c" / "lenet300-digits-pareto.png").stat().st_size > 10_000
    # a .c path works without the folder option; evo: without it is a clear error
    assert cli.main(["inspect", str(LIB / "multiplers/8x8_signed/pareto_pwr_mae/mul8s_T01.c")]) == 0
    assert cli.main(["inspect", "evo:mul8s_T02"]) == 2
    assert "--evoapprox-dir" in capsys.readouterr().err


def test_search_within_budget_verified_resumable_and_its_rules_reproduce(trained, tmp_path, monkeypatch):
    _, run_file, _ = trained
    monkeypatch.setenv("AMSIM_EVOAPPROX_DIR", str(LIB))
    cands = ["evo:mul8s_T02", "evo:mul8u_T03", "evo:mul8s_T01"]
    res = amsim.search(run_file, cands, max_drop=2.0, out_dir=tmp_path, progress=False)
    assert res.within_budget and res.fp32 - res.top1 <= 0.02
    # mul8u_T03 (A * (B & ~1)) is the cheapest; each choice was checked by a whole-network evaluation
    assert set(res.assignment.values()) <= {"mul8u_T03_sm", "mul8s_T02", "fp32"} and res.energy < 1
    assert all(s["accepted"] == (res.assignment[s["layer"]] == s["multiplier"]) for s in res.steps)
    ev = amsim.evaluate(run_file, ["fp32"], rules=res.rules, progress=False)
    assert ev[1].top1 == res.top1 and ev[1].energy == pytest.approx(res.energy)
    (rules_file,) = tmp_path.glob("search-*.rules.json")
    assert amsim.load_rules(rules_file) == tuple(tuple(r) for r in res.rules)
    again = amsim.search(run_file, cands, max_drop=2.0, out_dir=tmp_path, progress=False)
    assert again.evaluations == 0 and again.assignment == res.assignment
    # the CLI takes the rules file: the same accuracy again
    assert cli.main(["evaluate", "--from", str(run_file), "--multipliers", "fp32", "--rules", str(rules_file),
                     "--out", str(tmp_path / "ev"), "--no-progress", "--format", "csv"]) == 0
    doc = json.loads(next((tmp_path / "ev").glob("evaluate-*.json")).read_text())
    assert doc["results"][1]["top1"] == res.top1
    # a rules file whose circuit changed since the search is refused
    doc = json.loads(rules_file.read_text())
    if doc["rules"]:
        doc["digests"][doc["rules"][0][1]] = "0" * 32
        rules_file.write_text(json.dumps(doc))
        with pytest.raises(amsim.AmsimError, match="rerun the search"):
            amsim.load_rules(rules_file)
    with pytest.raises(amsim.AmsimError, match="cost"):
        amsim.search(run_file, ["drum4"], out_dir=tmp_path, progress=False)
    # searched on a small subset with no slack: the choice is verified (and repaired) on the whole test set
    small = amsim.search(run_file, cands, max_drop=0.0, search_limit=40, out_dir=tmp_path / "s", progress=False)
    assert small.n_search == 40 and small.n_verify == 300 and small.within_budget and small.top1 >= small.fp32
    assert small.energy <= 1.0
