"""Per-layer assignment search: the cheapest multiplier per layer within an accuracy budget.

Algorithm (greedy, verified by evaluation at every step):

1. Evaluate the trained weights in fp32 (the baseline) and, for every layer and candidate multiplier, the network
   with only that layer through it (the per-layer sensitivity).
2. Candidates of a layer are the multipliers whose single-layer drop is within the budget, cheapest first.
3. Visit the layers in order of multiply-accumulates (largest first, where a cheaper multiplier saves most);
   for each, try its candidates cheapest first on top of the choices made so far and keep the first one whose
   whole-network accuracy stays within the budget (else the layer stays exact).
4. Evaluate the final assignment on the full test set (the search may use a subset). While it is over the
   budget there, repair it: for each chosen layer, try its next more expensive candidate (or exact) on the full
   set, and apply the move that is within the budget at the least energy, else the one that recovers the most
   accuracy. Report whether the result is within the budget.

Every evaluation is kept in ``<out>/search-evaluations-<key>.json`` (one file per weights, test data and library
versions) as soon as it is done, keyed by the assignment's table digests, so an interrupted search rerun with the
same arguments continues where it stopped, and a search over more candidates reuses what an earlier one
evaluated. The result is written as a rules file that ``amsim train/evaluate/compare --rules`` take.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ._energy import estimate, relative_power
from ._errors import AmsimError
from ._evaluate import _evaluate_one, _exact_path, _Weights, layers_of
from ._io import atomic_write
from ._tables import format_rows

__all__ = ["search", "SearchResult", "load_rules", "save_rules"]

RULES_FORMAT = "amsim-rules"


@dataclasses.dataclass
class SearchResult:
    """The chosen per-layer assignment with its energy and verified accuracy."""

    rules: list  # [(exact-path pattern, spec), ...] for the layers that take an approximate multiplier
    assignment: dict  # path -> multiplier name ("fp32" where it stays exact)
    fp32: float  # baseline top-1 on the verification set
    top1: float  # the assignment's top-1 on the verification set
    max_drop: float  # the budget, in accuracy points (0.5 = half a percentage point)
    within_budget: bool
    energy: float  # relative multiplication energy
    saving: float
    evaluations: int  # evaluations made by this call (cached ones not counted)
    n_search: int
    n_verify: int
    steps: list  # the greedy decisions: dicts layer, multiplier, top1, accepted
    finetuned: dict | None = None  # top-1 after fine-tuning with the assignment, if asked for

    def table(self, fmt: str = "text") -> str:
        rows = [[p, m] for p, m in self.assignment.items()]
        rows.append(["(network)", f"top-1 {100 * self.top1:.2f} % (fp32 {100 * self.fp32:.2f}, "
                                  f"Δ {100 * (self.top1 - self.fp32):+.2f}); energy {self.energy:.3f} "
                                  f"(saving {100 * self.saving:.1f} %)"])
        return format_rows(["layer", "multiplier"], rows, fmt)


def save_rules(path, rules, *, specs_digests: dict, note: dict | None = None) -> Path:
    """A rules file: ``[[pattern, spec], ...]`` plus each spec's table digest (checked when it is read)."""
    doc = {"format": RULES_FORMAT, "format_version": 1, "default": "fp32",
           "rules": [[p, s] for p, s in rules], "digests": specs_digests, **(note or {})}
    return atomic_write(Path(path), json.dumps(doc, indent=1) + "\n")


def load_rules(path) -> tuple:
    """The ``((pattern, spec), ...)`` of a rules file written by :func:`save_rules` (``amsim search``); each
    spec must still resolve to the table it stood for when the file was written."""
    from ._train import for_network, resolve_multiplier

    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise AmsimError(f"{p} is not a readable rules file ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("format") != RULES_FORMAT or not isinstance(doc.get("rules"), list):
        raise AmsimError(f"{p} is not an amsim rules file (written by `amsim search`).")
    rules = []
    for item in doc["rules"]:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise AmsimError(f"{p}: a rule is [pattern, multiplier spec], got {item!r}.")
        want = doc.get("digests", {}).get(item[1])
        m = for_network(resolve_multiplier(item[1]))
        got = "fp32" if m == "fp32" else m.digest
        if want is not None and want != got:
            raise AmsimError(f"{p}: {item[1]!r} now resolves to table {got[:12]}, not the {want[:12]} the search "
                             "chose (the file behind the spec changed); rerun the search.")
        rules.append(tuple(item))
    return tuple(rules)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Cache:
    """Evaluations of this search, kept on disk after each one."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            self.data = {}  # unreadable: start over (the file is rewritten atomically)
        self.new = 0

    def get(self, key, fn):
        if key not in self.data:
            self.data[key] = fn()
            self.new += 1
            atomic_write(self.path, json.dumps(self.data))
        return self.data[key]


def search(source, multipliers, *, max_drop: float = 0.5, out_dir="results", search_limit: int | None = None,
           model=None, dataset=None, data_dir=None, test_limit: int | None = None, finetune_epochs: int = 0,
           progress: bool = True) -> SearchResult:
    """Choose a multiplier per layer that minimises the first-order multiplication energy with the accuracy drop
    within ``max_drop`` points (greedy, see the module docstring); verify it with a full evaluation.

    Arguments:
        source: trained weights (run file, checkpoint, params file or RunResult), as for :func:`amsim.evaluate`.
        multipliers: candidate specs, each with a cost (e.g. EvoApproxLib circuits: ``evo:mul8s_1L2H``).
        max_drop: the accuracy budget in percentage points of top-1 (0.5 = half a point).
        out_dir: where the evaluation cache and the rules file go.
        search_limit: search on the first N test examples (verification always uses the whole test set of the
            source run).
        finetune_epochs: fine-tune the chosen assignment from the weights for this many epochs and report it.
        model, dataset, data_dir: for a params file.
        test_limit: verify on the first N test examples (default: the source run's test set).
        progress: progress bars.

    Returns:
        A :class:`SearchResult`; the rules file is ``<out_dir>/search-<key>.rules.json``.
    """
    from tqdm.auto import tqdm

    from ._train import _versions, describe_multiplier, for_network, resolve_multiplier

    if isinstance(multipliers, str):
        raise TypeError("multipliers: pass a list of specs, e.g. ['evo:mul8s_1L2H', 'drum4'].")
    cands = []
    for spec in multipliers:
        m = for_network(resolve_multiplier(spec))
        if m == "fp32":
            continue
        r = relative_power(m)
        if r is None:
            raise AmsimError(f"{spec}: the search needs each candidate's cost (power); {m.name} has none. Attach one "
                             "with mult.with_cost(power_mw=..., relative=True) or use EvoApproxLib circuits.")
        cands.append((str(spec), m, r))
    if not cands:
        raise ValueError("no candidate multipliers with a cost were given.")
    budget = max_drop / 100.0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = _Weights(source, model, dataset, data_dir, test_limit)
    w = _Weights(source, model, dataset, data_dir, search_limit) if search_limit else full
    ops = layers_of(w.cfg.model, w.num_classes, w.x.shape[1:])
    paths = sorted(dict.fromkeys(o["path"] for o in ops), key=lambda p: -sum(o["macs"] for o in ops
                                                                                 if o["path"] == p))
    key = _key(full.digest, w.data, sorted(m.digest for _, m, _ in cands), max_drop)
    # evaluations are keyed by their whole assignment: every search on these weights and data (and the same
    # library versions, which compute them) shares them
    cache = _Cache(out / f"search-evaluations-{_key(full.digest, w.data, _versions())}.json")

    def acc(assign: dict, weights=w) -> float:
        rules = tuple((_exact_path(p), m) for p, m in assign.items())
        k = _key(weights.digest, weights.data, sorted((p, m.digest) for p, m in assign.items()))
        return cache.get(k, lambda: float(_evaluate_one(weights, "fp32", rules, False)[1]["top1"]))

    n_evals = 1 + len(paths) * len(cands)
    bar = tqdm(total=n_evals, desc="search: sensitivity", unit="eval", disable=not progress, leave=False)
    base = acc({})
    bar.update()
    only = {}
    for p in paths:
        for spec, m, _ in cands:
            only[p, spec] = acc({p: m})
            bar.update()
    bar.close()
    chosen, steps, ok = {}, [], {}
    for p in tqdm(paths, desc="search: greedy", unit="layer", disable=not progress, leave=False):
        ok[p] = [c[1] for c in sorted((c for c in cands if base - only[p, c[0]] <= budget and c[2] < 1.0),
                                      key=lambda c: c[2])]
        for m in ok[p]:
            trial = {**chosen, p: m}
            a = acc(trial)
            steps.append({"layer": p, "multiplier": m.name, "top1": a, "accepted": bool(base - a <= budget)})
            if base - a <= budget:
                chosen[p] = m
                break
    fp32_full = acc({}, full)  # (the cached search-set values when the search used the whole test set)
    top1 = acc(chosen, full)
    energy_of = lambda a: estimate(ops, {p: a.get(p, "fp32") for p in paths}).relative  # noqa: E731
    # repair on the verification set: while over budget, move one layer to its next more expensive candidate
    # (or exact), the move that stays within budget at least energy, else the one that recovers most accuracy
    while fp32_full - top1 > budget and chosen:
        options = []
        for p, m in chosen.items():
            i = next(k for k, c in enumerate(ok[p]) if c is m)
            trial = {q: c for q, c in chosen.items() if q != p}
            if i + 1 < len(ok[p]):
                trial[p] = ok[p][i + 1]
            options.append((acc(trial, full), energy_of(trial), trial, p))
        within = [o for o in options if fp32_full - o[0] <= budget]
        a, _, chosen, p = min(within, key=lambda o: o[1]) if within else max(options, key=lambda o: o[0])
        top1 = a
        steps.append({"layer": p, "multiplier": chosen[p].name if p in chosen else "fp32", "top1": a,
                      "accepted": True, "repair": True})
    specs = {p: next(s for s, m2, _ in cands if m2 is m) for p, m in chosen.items()}
    assign = {p: (chosen[p].name if p in chosen else "fp32") for p in sorted(paths, key=lambda q: [o["path"] for o in
                                                                                                     ops].index(q))}
    est = estimate(ops, {p: chosen.get(p, "fp32") for p in assign})
    rules = [(_exact_path(p), specs[p]) for p in assign if p in chosen]
    res = SearchResult(rules, assign, fp32_full, top1, max_drop, bool(fp32_full - top1 <= budget), est.relative,
                       est.saving, cache.new, len(w.y), len(full.y), steps)
    if finetune_epochs:
        from ._train import train

        ft = train(model=full.cfg.model, dataset=full.cfg.dataset, multiplier="fp32", rules=tuple(rules),
                   epochs=finetune_epochs, init_from=str(source) if not hasattr(source, "run_id") else
                   source.checkpoint, train_limit=full.cfg.train_limit, test_limit=full.cfg.test_limit,
                   data_dir=full.cfg.data_dir, progress=progress, checkpoint_dir=out / "checkpoints")
        res.finetuned = {"epochs": finetune_epochs, "top1": ft.test_acc, "run_id": ft.run_id}
    digests = {s: m.digest for s, m, _ in cands if s in specs.values()}
    note = {"model": full.cfg.model, "dataset": full.cfg.dataset, "weights": full.digest, "max_drop": max_drop,
            "fp32": fp32_full, "top1": top1, "within_budget": res.within_budget, "energy": est.relative,
            "algorithm": "greedy: layers by MACs, cheapest candidate within budget first, each step evaluated",
            "multipliers": {s: describe_multiplier(m) for s, m, _ in cands if s in specs.values()}}
    save_rules(out / f"search-{key}.rules.json", rules, specs_digests=digests, note=note)
    return res
