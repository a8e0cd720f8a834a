"""Trained weights from where they are kept: a run file (``<out>/runs/*.json``), an amsim checkpoint
(``.msgpack``), or a params file (a Flax msgpack of the variables or the params, or an ``.npz`` of the params with
``/``-joined paths as keys). Every file is parsed as data (msgpack, JSON, ``.npz`` without pickle) and its arrays
must fit the model's variables exactly; anything else is one :class:`amsim.AmsimError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._errors import AmsimError

__all__ = ["source_info", "load_variables"]

_MAX_PARAMS_BYTES = 4 << 30


def _flax():
    import flax.serialization

    return flax.serialization


def _read_run(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        return doc["run"]
    except Exception as exc:
        raise AmsimError(f"{path} is not an amsim run file ({type(exc).__name__}: {exc}).") from None


def _read_msgpack(path: Path) -> dict:
    if path.stat().st_size > _MAX_PARAMS_BYTES:
        raise AmsimError(f"{path} is larger than any weights file amsim reads ({_MAX_PARAMS_BYTES >> 30} GiB).")
    try:
        obj = _flax().msgpack_restore(path.read_bytes())
    except Exception as exc:
        raise AmsimError(f"{path} is not a readable msgpack file ({type(exc).__name__}: {exc}).") from None
    if not isinstance(obj, dict):
        raise AmsimError(f"{path} holds a {type(obj).__name__}, not a dict of weights.")
    return obj


def _run_info(path, ckpt, run_id, epochs, config) -> dict:
    """A finished run's weights are its checkpoint, provided it still holds that run at that epoch: a longer run
    of the same identity continues the same checkpoint, and the weights of the shorter one are gone."""
    where = path or f"run {str(run_id)[:12]}"
    if not ckpt or not Path(ckpt).is_file():
        raise AmsimError(f"the run in {where} kept no checkpoint, or it is gone ({ckpt}); rerun it with an --out "
                         "directory, or give its weights as a params file.")
    try:
        meta = json.loads(_read_msgpack(Path(ckpt))["meta"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AmsimError(f"checkpoint {ckpt} (of the run in {where}) has unreadable metadata ({exc}).") from None
    if meta.get("run_id") != run_id or meta.get("epoch") != epochs:
        raise AmsimError(f"checkpoint {ckpt} now holds epoch {meta.get('epoch')} of run "
                         f"{str(meta.get('run_id'))[:12]}, not epoch {epochs} of run {str(run_id)[:12]} ({where}): "
                         "a longer run continued it. Evaluate the newer run file or the checkpoint itself, or "
                         "rerun this run to get its weights back.")
    return {"kind": "run", "path": str(path or ckpt), "checkpoint": str(ckpt), "config": config, "run_id": run_id,
            "epoch": epochs}


def source_info(source) -> dict:
    """What a source says about itself: ``kind`` ("run", "checkpoint" or "params"), ``path``, and for runs and
    checkpoints the ``config`` (a RunConfig dict), ``run_id`` and ``epoch`` of the weights."""
    if hasattr(source, "run_id") and hasattr(source, "history"):  # a RunResult in hand: its checkpoint
        if not source.checkpoint:
            raise AmsimError(f"run {source.run_id[:12]} kept no checkpoint: train it with checkpoint_dir= (or "
                             "amsim.compare, which keeps every run), then evaluate it.")
        return _run_info(None, source.checkpoint, source.run_id, len(source.history), source.as_dict()["config"])
    path = Path(source)
    if not path.is_file():
        raise AmsimError(f"weights source {path} does not exist; give a run file (<out>/runs/*.json), a checkpoint "
                         "(.msgpack) or a params file (.msgpack, .npz).")
    if path.suffix == ".json":
        run = _read_run(path)
        return _run_info(path, run.get("checkpoint"), run.get("run_id"), len(run.get("history", [])),
                         run.get("config"))
    if path.suffix == ".msgpack":
        obj = _read_msgpack(path)
        if "meta" in obj and "state" in obj:
            try:
                meta = json.loads(obj["meta"])
            except Exception as exc:
                raise AmsimError(f"checkpoint {path} has unreadable metadata ({exc}).") from None
            config = meta.get("config") or {k: meta.get("identity", {}).get(k) for k in ("model", "dataset")}
            return {"kind": "checkpoint", "path": str(path), "checkpoint": str(path), "config": config,
                    "run_id": meta.get("run_id"), "epoch": meta.get("epoch")}
        return {"kind": "params", "path": str(path), "config": None, "run_id": None, "epoch": None}
    if path.suffix == ".npz":
        return {"kind": "params", "path": str(path), "config": None, "run_id": None, "epoch": None}
    raise AmsimError(f"{path}: weights are read from a run file (.json), a checkpoint or params file (.msgpack) or "
                     "an .npz of params.")


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def _shapes(tree):
    import jax

    return [(jax.tree_util.keystr(k), tuple(np.shape(v))) for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def load_variables(source, like: dict) -> dict:
    """The weights of ``source`` as a variables dict shaped exactly like ``like`` (the model's own initial
    variables: ``{"params": ..., "batch_stats": ...}``).

    Raises:
        AmsimError: the file is unreadable, or its arrays do not fit the model (names, shapes).
    """
    info = source_info(source)
    path = Path(info.get("checkpoint") or info["path"])
    if info["kind"] in ("run", "checkpoint"):
        state = _read_msgpack(path).get("state", {})
        found = {"params": state.get("p")}
        if state.get("s"):
            found["batch_stats"] = state["s"]
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                flat = {k: np.array(z[k]) for k in z.files}
        except Exception as exc:
            raise AmsimError(f"{path} is not a readable .npz of params ({type(exc).__name__}: {exc}).") from None
        tree = _unflatten(flat)
        found = tree if "params" in tree else {"params": tree}
    else:
        obj = _read_msgpack(path)
        found = obj if "params" in obj else {"params": obj}
    target = {k: v for k, v in like.items() if k in ("params", "batch_stats")}
    if "batch_stats" in target and "batch_stats" not in found:
        raise AmsimError(f"{path} has no batch_stats, which this model (with batch normalisation) needs.")
    try:
        restored = _flax().from_state_dict(target, {k: found[k] for k in target})
    except Exception as exc:
        raise AmsimError(f"the weights in {path} do not fit this model ({type(exc).__name__}: {str(exc)[:300]}).") \
            from None
    if _shapes(restored) != _shapes(target):
        bad = [(a, b) for a, b in zip(_shapes(restored), _shapes(target), strict=False) if a != b][:3]
        raise AmsimError(f"the weights in {path} do not fit this model: (found, expected) {bad}.")
    return {**like, **restored}
