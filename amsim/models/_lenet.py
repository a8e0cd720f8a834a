"""LeNet-300-100 (MLP) and LeNet-5 (small CNN)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ._common import activation, check_images


class LeNet300100(nn.Module):
    """LeNet-300-100: flatten -> Dense 300 -> Dense 100 -> Dense ``num_classes``, ReLU between.

    266,610 parameters on 28x28x1 inputs with 10 classes.

    Attributes:
        num_classes: output logits.
        act: "relu" (default) or "tanh".
        dot_general: replaces ``lax.dot_general`` in every Dense (None: Flax's default).
        conv_general_dilated: accepted for a uniform interface; this model has no convolution.
    """

    num_classes: int = 10
    act: str = "relu"
    dot_general: Callable[..., Any] | None = None
    conv_general_dilated: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = activation(self.act)
        x = jnp.reshape(x, (x.shape[0], -1))
        x = f(nn.Dense(300, dot_general=self.dot_general, name="fc1")(x))
        x = f(nn.Dense(100, dot_general=self.dot_general, name="fc2")(x))
        return nn.Dense(self.num_classes, dot_general=self.dot_general, name="fc3")(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (SAME) -> avg-pool 2 -> conv 16@5x5 (VALID) -> avg-pool 2 -> 120 -> 84 -> ``num_classes``.

    ReLU by default (``act="tanh"`` for the classic squashing version); average pooling as in the original
    subsampling layers. 61,706 parameters on 28x28x1 inputs with 10 classes.

    Attributes:
        num_classes: output logits.
        act: "relu" (default) or "tanh".
        dot_general: replaces ``lax.dot_general`` in every Dense (None: Flax's default).
        conv_general_dilated: replaces ``lax.conv_general_dilated`` in every Conv (None: Flax's default).
    """

    num_classes: int = 10
    act: str = "relu"
    dot_general: Callable[..., Any] | None = None
    conv_general_dilated: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_images(x, "LeNet-5", min_hw=10)  # after the first pool the 5x5 VALID conv needs 5x5 pixels
        f = activation(self.act)
        conv = lambda n, pad, name: nn.Conv(  # noqa: E731
            n, (5, 5), padding=pad, conv_general_dilated=self.conv_general_dilated, name=name
        )
        x = f(conv(6, "SAME", "conv1")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = f(conv(16, "VALID", "conv2")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = f(nn.Dense(120, dot_general=self.dot_general, name="fc1")(x))
        x = f(nn.Dense(84, dot_general=self.dot_general, name="fc2")(x))
        return nn.Dense(self.num_classes, dot_general=self.dot_general, name="fc3")(x)
