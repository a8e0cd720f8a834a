"""Training and evaluating Flax models with approximate multipliers: the main job behind ``amsim compare``."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from ._errors import AmsimError
from ._io import atomic_write
from ._multiplier import Multiplier
from .multipliers._registry import NATIVE_NAMES

__all__ = ["RunConfig", "RunResult", "train", "resolve_multiplier", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`; ``epoch`` is the last epoch whose checkpoint was saved (0: none)."""

    def __init__(self, label: str, epoch: int, checkpoint):
        super().__init__(f"{label}: interrupted; checkpoint of epoch {epoch} kept in {checkpoint}")
        self.label, self.epoch, self.checkpoint = label, epoch, checkpoint


def resolve_multiplier(spec):
    """A multiplier from a CLI/config spec.

    Accepts a :class:`Multiplier`, "fp32" (= "exact", "native": no simulation, XLA's float32), a built-in name
    ("mbm", "mitchell5", "bf16", "int8", ...), ``path/to/module.py:function`` (a function decorated with
    ``@amsim.multiplier``, or a factory returning a Multiplier), a table file (``.npz`` saved by amsim,
    ``.bin`` from ApproxTrain), or an EvoApproxLib circuit: ``evo:mul8s_1L2H`` (under ``$AMSIM_EVOAPPROX_DIR``)
    or its ``.c`` file, with its power, area and delay.

    Returns:
        A :class:`Multiplier`, or the string "fp32".
    """
    if isinstance(spec, Multiplier):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a multiplier spec must be a string or Multiplier, got {type(spec).__name__}.")
    s = spec.strip()
    if s.lower() in NATIVE_NAMES:
        return "fp32"
    if ".py:" in s:
        path, func = s.rsplit(":", 1)
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"multiplier module {path!r} not found (spec {spec!r}: 'path/to/file.py:name').")
        mod_spec = importlib.util.spec_from_file_location(f"amsim_user_{p.stem}", p)
        mod = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(mod)
        except Exception as exc:  # the user's module: any error it raises is the user's to see, in one line
            raise AmsimError(f"loading multiplier module {path} raised {type(exc).__name__}: {exc}") from exc
        obj = getattr(mod, func, None)
        if obj is None:
            found = sorted(k for k, v in vars(mod).items() if isinstance(v, Multiplier))
            raise AmsimError(f"{path} has no {func!r} (spec {spec!r}); the multipliers it defines: "
                             f"{', '.join(found) or 'none'}.")
        if callable(obj) and not isinstance(obj, Multiplier):
            try:
                obj = obj()  # a factory returning a Multiplier
            except TypeError:
                pass
        if not isinstance(obj, Multiplier):
            raise TypeError(f"{spec}: {func!r} is not an amsim.Multiplier; decorate it with "
                            "@amsim.multiplier(mantissa_bits=...) (or @amsim.int_multiplier(...)).")
        return obj
    if s.lower().startswith("evo:") or s.endswith(".c"):
        return _evoapprox(s)
    if s.endswith(".npz"):
        return Multiplier.load(s)
    if s.endswith(".bin"):
        from . import interop

        return interop.load_approxtrain(s)
    from .multipliers import get

    return get(s)


EVOAPPROX_ENV = "AMSIM_EVOAPPROX_DIR"
_EVO_CACHE: dict = {}


def _evoapprox(spec: str) -> Multiplier:
    """``evo:mul8s_1L2H`` (found under ``$AMSIM_EVOAPPROX_DIR``, the CLI's ``--evoapprox-dir``) or a circuit's
    ``.c`` path. Tabulated once per process and file content (a changed file is a new table)."""
    from . import interop

    if spec.lower().startswith("evo:"):
        name = spec[4:].strip()
        root = os.environ.get(EVOAPPROX_ENV)
        if not root:
            raise AmsimError(f"{spec!r}: say where EvoApproxLib is (--evoapprox-dir DIR or ${EVOAPPROX_ENV}), or give "
                             "the circuit's .c file.")
        hits = sorted(Path(root).rglob(f"{name}.c"))
        if not hits:
            raise AmsimError(f"{spec!r}: no {name}.c under {root} (EvoApproxLib circuits are named like "
                             "mul8s_1L2H; `amsim list --evoapprox-dir DIR` lists them).")
        path = hits[0]
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"EvoApproxLib circuit {spec!r} not found.")
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    if key not in _EVO_CACHE:
        _EVO_CACHE[key] = interop.load_evoapprox(path)
    return _EVO_CACHE[key]


def for_network(m):
    """The multiplier a network layer uses: an unsigned integer circuit in a sign-magnitude datapath (named
    ``<circuit>_sm``), since the bridge quantises tensors to signed integers; anything else as it is."""
    if isinstance(m, Multiplier) and m.is_int and not m.signed:
        from .interop import sign_magnitude

        return sign_magnitude(m)
    return m


def canonical_spec(spec, resolved) -> str:
    """The name a run is labelled and filed under: a built-in by its printed name (``drum(k=3)`` and ``drum3`` are
    both ``drum3_int8``), fp32 by ``fp32``; a file or module spec as given (its path is how the user named it)."""
    if resolved == "fp32":
        return "fp32"
    s = spec.name if isinstance(spec, Multiplier) else str(spec).strip()
    if isinstance(spec, Multiplier) or ".py:" in s or s.endswith((".npz", ".bin")):
        return s
    return resolved.name  # built-ins and EvoApproxLib circuits by their own names


def _spec_id(obj) -> str:
    """How a spec appears in results files: a Multiplier by its name, anything else as given."""
    return obj.name if isinstance(obj, Multiplier) else str(obj)


def _array_digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()[:32]


def _versions() -> dict:
    from importlib import metadata

    from ._version import __version__

    out = {"amsim": __version__}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numba", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def describe_multiplier(m) -> dict:
    """What a results row records of a multiplier: name, identity, table digest, format and error metrics."""
    if not isinstance(m, Multiplier):
        return {"name": "fp32", "native": True}
    return {"name": m.name, "kind": m.kind, "bits": m.bits, "signed": m.signed, "rounding": m.rounding,
            "operand_format": m.operand_format.spec() if m.operand_format else None, "identity": m.identity,
            "digest": m.digest, "stats": m.stats().as_dict(), "cost": m.cost.as_dict() if m.cost else None}


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """A config's multiplier specs resolved once: the run's multiplier and its rules (pattern, multiplier)."""

    multiplier: object  # a Multiplier or "fp32"
    rules: tuple

    @classmethod
    def of(cls, cfg) -> _Resolved:
        return cls(for_network(resolve_multiplier(cfg.multiplier)),
                   tuple((p, for_network(resolve_multiplier(s))) for p, s in cfg.rules))

    def all(self):
        return (("*", self.multiplier),) + self.rules


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run.

    Attributes:
        model: zoo name (``amsim.models.available()``).
        dataset: dataset name (``amsim.data.available()``).
        multiplier: spec for :func:`resolve_multiplier` ("fp32" = plain XLA float32, no simulation).
        rules: ``((pattern, spec), ...)`` per-layer overrides (regex on the Flax module path), applied before
            the run's multiplier, which covers every other layer.
        backward: "approx" (both gradient products through the multiplier), "exact" (native float32), "ste", or
            "table" (the derivative of the multiplier's own table, float multipliers; see amsim.nn._table_grad).
        epochs, batch_size, lr, optimizer ("adam" or "sgd" with momentum 0.9), seed: training.
        train_limit, test_limit: use only the first N examples (quick runs); None = all.
        data_dir: searched first for dataset files.
        init_from: start from trained weights (fine-tuning): a run file, a checkpoint or a params file of the same
            model. The weights themselves (their digest), not the path, are part of the run's identity.
    """

    model: str = "lenet5"
    dataset: str = "mnist"
    multiplier: str = "fp32"
    rules: tuple = ()
    backward: str = "approx"
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    data_dir: str | None = None
    init_from: str | None = None

    def __post_init__(self):
        if self.backward not in ("approx", "exact", "ste", "table"):
            raise ValueError(f"backward={self.backward!r}: choose 'approx', 'exact', 'ste' or 'table'.")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose 'adam' or 'sgd'.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive.")

    @property
    def label(self) -> str:
        """The multiplier, the backward mode and every rule applied, e.g. ``mbm+bwd-ste+conv1=mitchell``."""
        name = lambda m: m if isinstance(m, str) else m.name  # noqa: E731
        extra = "" if self.backward == "approx" else f"+bwd-{self.backward}"
        rules = "".join(f"+{pat}={name(spec)}" for pat, spec in self.rules)
        return f"{name(self.multiplier)}{extra}{rules}" + ("+finetuned" if self.init_from else "")



@dataclasses.dataclass
class RunResult:
    """What a run produced: per-epoch history, the loss curve, the ops it approximated, and its provenance.

    ``run_id`` is the hash of everything that determines the results (see :func:`train`); ``identity`` holds
    those inputs; ``multipliers`` describes every multiplier in use (table digest, format, error metrics).
    """

    config: RunConfig
    history: list  # one dict per epoch
    loss_curve: list  # (fractional epoch, train loss) samples
    approximated: list  # (module path, op, multiplier name) from the trace
    params: int = 0
    run_id: str = ""
    identity: dict = dataclasses.field(default_factory=dict)
    multipliers: dict = dataclasses.field(default_factory=dict)
    resumed_from: int = 0  # the epoch a checkpoint supplied (0: trained from scratch)
    checkpoint: str | None = None
    compile_time: float = 0.0  # seconds compiling the step and evaluation (not in any epoch_time)
    finished: str = ""  # when its run file was written (set by amsim._report.load_runs)
    energy: float | None = None  # relative multiplication energy (set by compare/protocol; None: a cost unknown)

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        """The inverse of :meth:`as_dict` (multipliers in the config are their names)."""
        cfg = dict(d["config"])
        cfg["rules"] = tuple(tuple(r) for r in cfg.get("rules", ()))
        return cls(RunConfig(**cfg), d["history"], d["loss_curve"], [tuple(a) for a in d["approximated"]],
                   d.get("params", 0), run_id=d["run_id"], identity=d.get("identity", {}),
                   multipliers=d.get("multipliers", {}), resumed_from=d.get("resumed_from", 0),
                   checkpoint=d.get("checkpoint"), compile_time=d.get("compile_time", 0.0), energy=d.get("energy"))

    @property
    def test_acc(self) -> float:
        return self.history[-1]["test_acc"]

    @property
    def epoch_time(self) -> float:
        return float(np.median([h["epoch_time"] for h in self.history]))

    def as_dict(self) -> dict:
        cfg = json.loads(json.dumps(dataclasses.asdict(self.config), default=_spec_id))
        return {"run_id": self.run_id, "config": cfg, "label": self.config.label, "history": self.history,
                "loss_curve": self.loss_curve, "approximated": self.approximated, "params": self.params,
                "multipliers": self.multipliers, "identity": self.identity, "resumed_from": self.resumed_from,
                "checkpoint": self.checkpoint, "compile_time": self.compile_time, "energy": self.energy}


def _build_model(cfg: RunConfig, num_classes: int, resolved: _Resolved):
    from . import models
    from .nn import approximate

    model = models.get(cfg.model, num_classes=num_classes)
    if resolved.multiplier == "fp32" and not resolved.rules:
        return model
    rules = {p: ("exact" if m == "fp32" else m) for p, m in resolved.rules}
    rules["*"] = "exact" if resolved.multiplier == "fp32" else resolved.multiplier
    bwd = None if cfg.backward == "approx" else cfg.backward
    return approximate(model, rules, dlhs=bwd, drhs=bwd)


def run_identity(cfg: RunConfig, resolved: _Resolved, data_digest: str, init_digest: str) -> dict:
    """Everything that determines a run's results, never a path: the table digest of every multiplier (the
    run's and each rule's; the gradient products follow ``backward``), the model and its initial parameters,
    the data actually used (its digest covers dataset and subset), seed, batch size, optimiser settings and the
    versions of amsim and the libraries that compute. Not the number of epochs: a longer run continues."""
    mults = [[pat, "fp32" if m == "fp32" else m.digest] for pat, m in resolved.all()]
    return {"versions": _versions(), "model": cfg.model, "init": init_digest, "dataset": cfg.dataset,
            "data": data_digest, "train_limit": cfg.train_limit, "test_limit": cfg.test_limit, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "optimizer": cfg.optimizer, "lr": cfg.lr,
            "momentum": 0.9 if cfg.optimizer == "sgd" else None, "backward": cfg.backward, "multipliers": mults}


def _slug(text: str, limit: int = 60) -> str:
    """A file-name-safe rendering of a label (paths in specs must not become folders)."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_")[:limit] or "run"


def checkpoint_path(directory, cfg: RunConfig, run_id: str) -> Path:
    """Where a run keeps its checkpoint: one flat file per run identity in ``directory``."""
    return Path(directory) / f"{_slug(cfg.model)}-{_slug(cfg.dataset)}-{_slug(cfg.label)}-{run_id[:16]}.msgpack"


def _load(cfg: RunConfig):
    from . import data

    xtr, ytr = data.load(cfg.dataset, "train", cfg.data_dir)
    xte, yte = data.load(cfg.dataset, "test", cfg.data_dir)
    if cfg.train_limit:
        xtr, ytr = xtr[: cfg.train_limit], ytr[: cfg.train_limit]
    if cfg.test_limit:
        xte, yte = xte[: cfg.test_limit], yte[: cfg.test_limit]
    if xtr.shape[-1] == 3:  # colour datasets: standardise per channel with training statistics
        mean, std = data.channel_stats(xtr)
        xtr, xte = data.normalize(xtr, mean, std), data.normalize(xte, mean, std)
    return xtr, ytr, xte, yte


def read_checkpoint(path: Path, target):
    """The training state and metadata of a checkpoint file, restored into the structure of ``target``.

    Raises :class:`AmsimError` naming the file (and ``--no-resume``) when it is damaged, not a checkpoint, or
    of another model; nothing in it is executed (msgpack holds only data).
    """
    import flax.serialization

    path = Path(path)
    try:
        saved = flax.serialization.msgpack_restore(path.read_bytes())
        meta = json.loads(saved["meta"])
        if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int) or \
                not isinstance(meta.get("history"), list) or not isinstance(meta.get("curve"), list):
            raise ValueError("its metadata is incomplete")
        state = flax.serialization.from_state_dict(target, saved["state"])
        if jax_tree_shapes(state) != jax_tree_shapes(target):
            raise ValueError("its arrays do not have this model's shapes")
        return state, meta
    except Exception as exc:  # truncated, corrupted, of another model, or not a checkpoint at all
        raise AmsimError(f"checkpoint {path} could not be read ({type(exc).__name__}: {str(exc)[:300]}); delete it, "
                         "or rerun with --no-resume (resume=False) to start the run over.") from None


def jax_tree_shapes(tree):
    import jax

    return [(getattr(x, "shape", None), str(getattr(x, "dtype", type(x).__name__)))
            for x in jax.tree_util.tree_leaves(tree)]


class Evaluator:
    """Test-set loss, top-1 and (with more than 5 classes) top-5 accuracy of a model's weights: one compiled
    function, fixed batches (the last one padded and masked), no gradients."""

    def __init__(self, model, has_bn: bool, num_classes: int, batch: int = 1000):
        import jax
        import jax.numpy as jnp
        import optax

        self.batch, self.k = batch, 5 if num_classes > 5 else 0

        def fn(p, s, x, y, w):
            logits = model.apply({"params": p, "batch_stats": s} if has_bn else {"params": p}, x, train=False)
            loss = (optax.softmax_cross_entropy_with_integer_labels(logits, y) * w).sum()
            top1 = ((jnp.argmax(logits, -1) == y) * w).sum()
            top5 = ((jax.lax.top_k(logits, self.k)[1] == y[:, None]).any(-1) * w).sum() if self.k else top1
            return loss, top1, top5

        self.fn = jax.jit(fn)

    def compile(self, p, s, x):
        """Compile ahead for test sets like ``x``; returns the seconds it took."""
        import time

        import jax
        import jax.numpy as jnp

        t0 = time.perf_counter()
        b = min(self.batch, len(x))
        spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
        self.fn = self.fn.lower(p, s, spec((b,) + x.shape[1:], jnp.float32), spec((b,), jnp.int32),
                                spec((b,), jnp.float32)).compile()
        # one call, discarded: the simulation kernels behind the callbacks are compiled on first use
        jax.block_until_ready(self.fn(p, s, jnp.asarray(x[:b], jnp.float32), jnp.zeros(b, jnp.int32),
                                      jnp.ones(b, jnp.float32)))
        return time.perf_counter() - t0

    def __call__(self, p, s, x, y) -> dict:
        import jax.numpy as jnp

        n, b = len(x), min(self.batch, len(x))
        tot = np.zeros(3)
        for start in range(0, n, b):
            xb, yb = x[start:start + b], y[start:start + b]
            w = np.ones(len(xb), np.float32)
            if len(xb) < b:  # pad the last batch: one compiled shape
                pad = b - len(xb)
                xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
                yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
                w = np.concatenate([w, np.zeros(pad, np.float32)])
            out = self.fn(p, s, jnp.asarray(xb, jnp.float32), jnp.asarray(yb, jnp.int32), jnp.asarray(w))
            tot += [float(v) for v in out]
        return {"loss": tot[0] / n, "top1": tot[1] / n, "top5": tot[2] / n if self.k else None, "n": n}


def _prepare(cfg: RunConfig, resolved: _Resolved):
    """The run's data, model, initial variables, identity and run id (no training)."""
    import jax
    import jax.numpy as jnp

    arrays = _load(cfg)
    xtr, ytr, xte, yte = arrays
    model = _build_model(cfg, int(max(ytr.max(), yte.max())) + 1, resolved)
    variables = model.init(jax.random.key(cfg.seed), jnp.asarray(xtr[:2]), train=False)
    if cfg.init_from:
        from ._weights import load_variables

        variables = load_variables(cfg.init_from, variables)
    identity = run_identity(cfg, resolved, _array_digest(*arrays),
                            _array_digest(*jax.tree_util.tree_leaves(variables)))
    run_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return arrays, model, variables, identity, run_id


def run_id_of(cfg: RunConfig) -> str:
    """The run identity hash :func:`train` would give ``cfg`` (loads the data and builds the model; trains nothing)."""
    return _prepare(cfg, _Resolved.of(cfg))[-1]


def train(cfg: RunConfig | None = None, *, progress: bool = True, checkpoint: str | Path | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = True, resolved: _Resolved | None = None,
          **fields) -> RunResult:
    """Train ``cfg.model`` on ``cfg.dataset`` with every product through ``cfg.multiplier``; evaluate each epoch.

    A run is identified by :func:`run_identity` (multipliers' table digests, model and initial parameters, data,
    seed, batch size, optimiser, versions; not the epoch count). Its checkpoint, saved after every epoch, is
    resumed only by the same run: a longer run continues from it, a changed multiplier, dataset or setting
    starts afresh in a checkpoint of its own. A resume is announced in one line.

    Arguments:
        cfg: the run; or give its fields as keywords (``amsim.train(model="lenet5", multiplier="mbm", epochs=2)``),
            which also override those of ``cfg``.
        progress: show a tqdm bar per epoch (loss, accuracy, samples/s).
        checkpoint: a checkpoint file to save after every epoch and resume from; one that holds another run is
            refused (choose another file, or delete it).
        checkpoint_dir: instead of ``checkpoint``: a folder in which the run's file is named by its identity.
        resume: False starts over even if the checkpoint exists (it is overwritten after the first epoch).
        resolved: the config's multipliers, already resolved (``amsim compare`` resolves every spec first).

    Returns:
        A :class:`RunResult`. With the same config and seed, results are identical run to run, resumed or not.
    """
    import flax.serialization
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm.auto import tqdm

    from . import data
    from .models import param_count

    if fields:
        cfg = dataclasses.replace(cfg, **fields) if cfg is not None else RunConfig(**fields)
    elif cfg is None:
        raise TypeError("train() needs a RunConfig or its fields, e.g. train(model='lenet5', multiplier='mbm').")
    if resolved is not None and fields:
        raise TypeError("train(): resolved= belongs to the config it was resolved from; give no other fields.")
    resolved = resolved or _Resolved.of(cfg)
    (xtr, ytr, xte, yte), model, variables, identity, run_id = _prepare(cfg, resolved)
    if len(xtr) < cfg.batch_size:
        raise ValueError(f"{cfg.label}: {len(xtr)} training examples do not fill one batch of {cfg.batch_size} "
                         "(incomplete batches are dropped); lower batch_size (--batch-size) or raise train_limit.")
    approximated = [(r.path, r.op, r.config.fwd.name if r.config else "fp32")
                    for r in getattr(model, "trace_log", [])]
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    mults = {pat: describe_multiplier(m) for pat, m in resolved.all()}
    opt = optax.adam(cfg.lr) if cfg.optimizer == "adam" else optax.sgd(cfg.lr, momentum=0.9)
    opt_state = opt.init(params)
    has_bn = bool(stats)

    def loss_fn(p, s, x, y):
        if has_bn:
            logits, upd = model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
            s = upd["batch_stats"]
        else:
            logits = model.apply({"params": p}, x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (s, jnp.mean(jnp.argmax(logits, -1) == y))

    @jax.jit
    def step(p, s, o, x, y):
        (loss, (s, acc)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), s, o, loss, acc

    evaluator = Evaluator(model, has_bn, int(max(ytr.max(), yte.max())) + 1)

    history: list = []
    curve: list = []
    start_epoch = 0
    if checkpoint is not None and checkpoint_dir is not None:
        raise ValueError("train(): give checkpoint= (a file) or checkpoint_dir= (a folder), not both.")
    ckpt = Path(checkpoint) if checkpoint else checkpoint_path(checkpoint_dir, cfg, run_id) if checkpoint_dir \
        else None
    if ckpt is not None and ckpt.exists() and resume:
        state, meta = read_checkpoint(ckpt, {"p": params, "s": stats, "o": opt_state})
        if meta.get("run_id") != run_id:
            raise AmsimError(f"checkpoint {ckpt} holds another run (run {str(meta.get('run_id'))[:12]}, this is run "
                             f"{run_id[:12]}): its multiplier, data or settings differ. Use another checkpoint file "
                             "or delete this one.")
        params, stats, opt_state = state["p"], state["s"], state["o"]
        history, curve, start_epoch = meta["history"], meta["curve"], meta["epoch"]
        if start_epoch >= cfg.epochs:
            print(f"{cfg.label}: run {run_id[:12]} already has {start_epoch} epoch(s) in {ckpt}; reporting epoch(s) "
                  f"1-{cfg.epochs} from it, nothing trained.", flush=True)
            history = history[: cfg.epochs]
            curve = [c for c in curve if c[0] < cfg.epochs]
        else:
            print(f"{cfg.label}: resuming run {run_id[:12]} after epoch {start_epoch} of {cfg.epochs} from {ckpt}",
                  flush=True)

    n_train = len(xtr) // cfg.batch_size * cfg.batch_size
    log_every = max(1, (len(xtr) // cfg.batch_size) // 20)
    compile_time = 0.0
    if start_epoch < cfg.epochs:  # compiled ahead, so that no epoch's time includes compilation
        t0 = time.perf_counter()
        xs = jax.ShapeDtypeStruct((cfg.batch_size,) + xtr.shape[1:], jnp.asarray(xtr[:1]).dtype)
        ys = jax.ShapeDtypeStruct((cfg.batch_size,), jnp.asarray(ytr[:1]).dtype)
        step = step.lower(params, stats, opt_state, xs, ys).compile()
        # one step, its result discarded (the step is a pure function): the kernels behind the callbacks compile
        jax.block_until_ready(step(params, stats, opt_state, jnp.asarray(xtr[: cfg.batch_size]),
                                   jnp.asarray(ytr[: cfg.batch_size])))
        evaluator.compile(params, stats, xte)
        compile_time = time.perf_counter() - t0

    def train_epoch(epoch):
        """One epoch, its evaluation and its checkpoint; returns the epoch number once it is saved."""
        nonlocal params, stats, opt_state
        rng = np.random.default_rng([cfg.seed, epoch])  # per-epoch stream: resuming replays the same batches
        it = data.batches(xtr, ytr, cfg.batch_size, rng, shuffle=True, drop_remainder=True)
        t0 = time.perf_counter()
        tot_loss = tot_acc = 0.0
        bar = tqdm(it, total=len(it), desc=f"{cfg.label:>14} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, leave=True, dynamic_ncols=True)
        for i, (xb, yb) in enumerate(bar):
            params, stats, opt_state, loss, acc = step(params, stats, opt_state, jnp.asarray(xb), jnp.asarray(yb))
            loss, acc = float(loss), float(acc)
            if not np.isfinite(loss):
                raise AmsimError(f"{cfg.label}: training diverged (loss {loss}) at epoch {epoch + 1}, step {i}.")
            tot_loss += loss
            tot_acc += acc
            if i % log_every == 0:
                curve.append((epoch + i / len(it), loss))
                done = (i + 1) * cfg.batch_size
                bar.set_postfix(loss=f"{tot_loss / (i + 1):.4f}", acc=f"{tot_acc / (i + 1):.4f}",
                                sps=f"{done / (time.perf_counter() - t0):.0f}")
        bar.close()
        epoch_time = time.perf_counter() - t0
        te = evaluator(params, stats, xte, yte)
        steps = len(it)
        history.append({
            "epoch": epoch + 1,
            "train_loss": tot_loss / steps,
            "train_acc": tot_acc / steps,
            "test_loss": te["loss"],
            "test_acc": te["top1"],
            **({"test_top5": te["top5"]} if te["top5"] is not None else {}),
            "epoch_time": epoch_time,
            "samples_per_s": n_train / epoch_time,
        })
        if progress:
            h = history[-1]
            print(f"{cfg.label:>14} epoch {epoch + 1}: test acc {100 * h['test_acc']:.2f} %, "
                  f"test loss {h['test_loss']:.4f}, {h['epoch_time']:.1f} s", flush=True)
        if ckpt is not None:
            meta = {"run_id": run_id, "identity": identity, "epoch": epoch + 1, "history": history, "curve": curve,
                    "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=_spec_id))}
            blob = {"state": flax.serialization.to_state_dict({"p": params, "s": stats, "o": opt_state}),
                    "meta": json.dumps(meta)}
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(ckpt, flax.serialization.msgpack_serialize(blob))  # never a half-written checkpoint
            return epoch + 1
        return 0

    saved = start_epoch if ckpt is not None else 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            saved = train_epoch(epoch) or saved
    except KeyboardInterrupt:
        raise TrainingInterrupted(cfg.label, saved, ckpt) from None

    return RunResult(cfg, history, [list(c) for c in curve], approximated, param_count({"params": params}),
                     run_id=run_id, identity=identity, multipliers=mults, resumed_from=start_epoch,
                     checkpoint=str(ckpt) if ckpt else None, compile_time=compile_time)
