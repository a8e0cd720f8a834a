"""Pieces shared by the model zoo."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# He-normal suits the ReLU networks here; Flax's own default (LeCun normal) is kept for the transformer.
he_normal = jax.nn.initializers.he_normal()

_ACTIVATIONS: dict[str, Callable] = {"relu": jax.nn.relu, "tanh": jnp.tanh}


def activation(name: str) -> Callable:
    """The activation function called ``name`` ("relu" or "tanh")."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}.") from None


def check_images(x, model: str, min_hw: int = 1) -> None:
    """Raise a clear error unless ``x`` is a batch of NHWC images at least ``min_hw`` pixels on a side."""
    if x.ndim != 4:
        raise ValueError(f"{model} expects NHWC images of shape (N, H, W, C), got shape {x.shape}.")
    if x.shape[1] < min_hw or x.shape[2] < min_hw:
        raise ValueError(f"{model} needs images of at least {min_hw}x{min_hw} pixels, got {x.shape[1]}x{x.shape[2]}.")
