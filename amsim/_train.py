"""Training and evaluating Flax models with approximate multipliers: the main job behind ``amsim compare``."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from ._errors import AmsimError
from ._multiplier import Multiplier
from .multipliers._registry import NATIVE_NAMES

__all__ = ["RunConfig", "RunResult", "train", "resolve_multiplier"]


def resolve_multiplier(spec):
    """A multiplier from a CLI/config spec.

    Accepts a :class:`Multiplier`, "fp32" (= "exact", "native": no simulation, XLA's float32), a built-in name
    ("mbm", "mitchell5",
    "bf16", "int8", ...), ``path/to/module.py:function`` (a function decorated with ``@amsim.multiplier``), or a
    table file (``.npz`` saved by amsim, ``.bin`` from ApproxTrain).

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
        mod_spec.loader.exec_module(mod)
        obj = getattr(mod, func, None)
        if obj is None:
            raise AttributeError(f"{path} has no attribute {func!r}.")
        if callable(obj) and not isinstance(obj, Multiplier):
            try:
                obj = obj()  # a factory returning a Multiplier
            except TypeError:
                pass
        if not isinstance(obj, Multiplier):
            raise TypeError(f"{spec}: {func!r} is not an amsim.Multiplier; decorate it with "
                            "@amsim.multiplier(mantissa_bits=...) (or @amsim.int_multiplier(...)).")
        return obj
    if s.endswith(".npz"):
        return Multiplier.load(s)
    if s.endswith(".bin"):
        from . import interop

        return interop.load_approxtrain(s)
    from .multipliers import get

    return get(s)


def _spec_id(obj) -> str:
    if isinstance(obj, Multiplier):
        return f"{obj.name}:{obj.kind}{obj.bits}:{obj.rounding}:{obj.code_hash}"
    return str(obj)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run.

    Attributes:
        model: zoo name (``amsim.models.available()``).
        dataset: dataset name (``amsim.data.available()``).
        multiplier: spec for :func:`resolve_multiplier` ("fp32" = plain XLA float32, no simulation).
        rules: ``((pattern, spec), ...)`` per-layer overrides (regex on the Flax module path), applied before
            the run's multiplier, which covers every other layer.
        backward: "approx" (both gradient products through the multiplier), "exact" (native float32) or "ste".
        epochs, batch_size, lr, optimizer ("adam" or "sgd" with momentum 0.9), seed: training.
        train_limit, test_limit: use only the first N examples (quick runs); None = all.
        data_dir: searched first for dataset files.
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

    def __post_init__(self):
        if self.backward not in ("approx", "exact", "ste"):
            raise ValueError(f"backward={self.backward!r}: choose 'approx', 'exact' or 'ste'.")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose 'adam' or 'sgd'.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive.")

    @property
    def label(self) -> str:
        """The multiplier, the backward mode and every rule applied, e.g. ``mbm+bwd-ste+conv1=mitchell``."""
        name = lambda m: m if isinstance(m, str) else m.name  # noqa: E731
        extra = "" if self.backward == "approx" else f"+bwd-{self.backward}"
        return f"{name(self.multiplier)}{extra}" + "".join(f"+{pat}={name(spec)}" for pat, spec in self.rules)

    def key(self) -> str:
        """Hash of everything that determines the run (for checkpoint matching)."""
        d = dataclasses.asdict(self)
        d.pop("data_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=_spec_id).encode()).hexdigest()[:12]


@dataclasses.dataclass
class RunResult:
    """What a run produced: per-epoch history, the loss curve and the ops it approximated."""

    config: RunConfig
    history: list  # one dict per epoch
    loss_curve: list  # (fractional epoch, train loss) samples
    approximated: list  # (module path, op, multiplier name) from the trace
    params: int = 0

    @property
    def test_acc(self) -> float:
        return self.history[-1]["test_acc"]

    @property
    def epoch_time(self) -> float:
        return float(np.median([h["epoch_time"] for h in self.history]))

    def as_dict(self) -> dict:
        cfg = json.loads(json.dumps(dataclasses.asdict(self.config), default=_spec_id))
        return {"config": cfg, "label": self.config.label, "history": self.history,
                "loss_curve": self.loss_curve, "approximated": self.approximated, "params": self.params}


def _build_model(cfg: RunConfig, num_classes: int):
    from . import models
    from .nn import approximate

    model = models.get(cfg.model, num_classes=num_classes)
    mult = resolve_multiplier(cfg.multiplier)
    rules = {pat: resolve_multiplier(spec) for pat, spec in cfg.rules}
    if mult == "fp32" and not rules:
        return model
    rules = {p: ("exact" if m == "fp32" else m) for p, m in rules.items()}
    rules["*"] = "exact" if mult == "fp32" else mult
    bwd = None if cfg.backward == "approx" else cfg.backward
    return approximate(model, rules, dlhs=bwd, drhs=bwd)


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


def train(cfg: RunConfig, *, progress: bool = True, checkpoint: str | Path | None = None) -> RunResult:
    """Train ``cfg.model`` on ``cfg.dataset`` with every product through ``cfg.multiplier``; evaluate each epoch.

    Arguments:
        cfg: the run.
        progress: show a tqdm bar per epoch (loss, accuracy, samples/s).
        checkpoint: file to save after every epoch and to resume from if it holds a checkpoint of the same run.

    Returns:
        A :class:`RunResult`. With the same config and seed, results are identical run to run, resumed or not.
    """
    import flax.serialization
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm.auto import tqdm

    from . import data

    xtr, ytr, xte, yte = _load(cfg)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    model = _build_model(cfg, num_classes)
    variables = model.init(jax.random.key(cfg.seed), jnp.asarray(xtr[:2]), train=False)
    approximated = [(r.path, r.op, r.config.fwd.name if r.config else "fp32")
                    for r in getattr(model, "trace_log", [])]
    params = variables["params"]
    stats = variables.get("batch_stats", {})
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

    @jax.jit
    def evaluate(p, s, x, y):
        v = {"params": p, "batch_stats": s} if has_bn else {"params": p}
        logits = model.apply(v, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum(), jnp.sum(jnp.argmax(logits, -1) == y)

    history: list = []
    curve: list = []
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        saved = flax.serialization.msgpack_restore(ckpt.read_bytes())
        meta = json.loads(saved["meta"])
        if meta["key"] == cfg.key():
            state = flax.serialization.from_state_dict({"p": params, "s": stats, "o": opt_state}, saved["state"])
            params, stats, opt_state = state["p"], state["s"], state["o"]
            history, curve, start_epoch = meta["history"], meta["curve"], meta["epoch"]

    n_train = len(xtr) // cfg.batch_size * cfg.batch_size
    log_every = max(1, (len(xtr) // cfg.batch_size) // 20)
    for epoch in range(start_epoch, cfg.epochs):
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
        te_loss = te_hits = 0.0
        for xb, yb in data.batches(xte, yte, 1000, shuffle=False):
            lsum, hits = evaluate(params, stats, jnp.asarray(xb), jnp.asarray(yb))
            te_loss += float(lsum)
            te_hits += int(hits)
        steps = len(it)
        history.append({
            "epoch": epoch + 1,
            "train_loss": tot_loss / steps,
            "train_acc": tot_acc / steps,
            "test_loss": te_loss / len(xte),
            "test_acc": te_hits / len(xte),
            "epoch_time": epoch_time,
            "samples_per_s": n_train / epoch_time,
        })
        if progress:
            h = history[-1]
            print(f"{cfg.label:>14} epoch {epoch + 1}: test acc {100 * h['test_acc']:.2f} %, "
                  f"test loss {h['test_loss']:.4f}, {h['epoch_time']:.1f} s", flush=True)
        if ckpt is not None:
            meta = {"key": cfg.key(), "epoch": epoch + 1, "history": history, "curve": curve}
            blob = {"state": flax.serialization.to_state_dict({"p": params, "s": stats, "o": opt_state}),
                    "meta": json.dumps(meta)}
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_bytes(flax.serialization.msgpack_serialize(blob))
            tmp.replace(ckpt)  # atomic: an interrupted save never leaves a half-written checkpoint
    from .models import param_count

    return RunResult(cfg, history, [list(c) for c in curve], approximated, param_count({"params": params}))
