"""Models by name."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from ._lenet import LeNet5, LeNet300100
from ._resnet import ResNet18, ResNet20
from ._vit import ViTTiny

_MODELS: dict[str, type[nn.Module]] = {
    "lenet300": LeNet300100,
    "lenet5": LeNet5,
    "resnet20": ResNet20,
    "resnet18": ResNet18,
    "vit_tiny": ViTTiny,
}
_ALIASES = {"lenet300100": "lenet300", "lenet_300_100": "lenet300", "mlp": "lenet300", "lenet": "lenet5",
            "lenet_5": "lenet5", "resnet_20": "resnet20", "resnet_18": "resnet18", "vit": "vit_tiny",
            "vittiny": "vit_tiny"}


def available() -> list[str]:
    """Names accepted by :func:`get`."""
    return list(_MODELS)


def get(name: str, num_classes: int = 10, **kw) -> nn.Module:
    """Build a model of the zoo by name.

    Every model takes NHWC float32 images and is applied as ``model.apply(variables, x, train=...)`` (ResNets
    also need ``mutable=["batch_stats"]`` when ``train=True``).

    Arguments:
        name: one of :func:`available` ("lenet300", "lenet5", "resnet20", "resnet18", "vit_tiny").
        num_classes: number of output logits.
        **kw: attributes of the model class, e.g. ``dot_general=...``, ``conv_general_dilated=...``,
            ``act="tanh"`` (LeNets), ``depth=4`` (vit_tiny). ``width=w`` for resnet18 sets channels w/2w/4w/8w.

    Returns:
        The (unbound) Flax module.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}; choose one of {available()}.")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {available()}.")
    cls = _MODELS[key]
    if key == "resnet18" and "width" in kw:
        w = kw.pop("width")
        kw["widths"] = tuple(int(w) * m for m in (1, 2, 4, 8))
    allowed = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(f"{key} has no attribute(s) {unknown}; it accepts {sorted(allowed)}.")
    return cls(num_classes=num_classes, **kw)


def param_count(variables) -> int:
    """Number of trainable parameters (the ``"params"`` collection, or the whole tree if there is none)."""
    tree = variables.get("params", variables) if hasattr(variables, "get") else variables
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))
