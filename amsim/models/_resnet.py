"""CIFAR-style ResNets: ResNet-20 (He et al. 2016, section 4.2) and ResNet-18 with a 3x3 stem."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ._common import check_images, he_normal


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity or downsampling shortcut.

    Attributes:
        features: output channels.
        stride: stride of the first convolution (2 halves the resolution).
        shortcut: "pad" (option A: subsample and zero-pad channels, no parameters) or "conv" (option B: 1x1 conv
            + BatchNorm) when the shape changes.
        conv_general_dilated: replaces ``lax.conv_general_dilated`` in every Conv (None: Flax's default).
    """

    features: int
    stride: int = 1
    shortcut: str = "pad"
    conv_general_dilated: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = lambda n, k, s, name: nn.Conv(  # noqa: E731
            n, (k, k), strides=(s, s), padding="SAME" if k > 1 else "VALID", use_bias=False,
            kernel_init=he_normal, conv_general_dilated=self.conv_general_dilated, name=name,
        )
        y = conv(self.features, 3, self.stride, "conv1")(x)
        y = nn.relu(_batch_norm(train, "bn1")(y))
        y = conv(self.features, 3, 1, "conv2")(y)
        y = _batch_norm(train, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            if self.shortcut == "pad":
                x = x[:, :: self.stride, :: self.stride, :]
                extra = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                x = conv(self.features, 1, self.stride, "proj")(x)
                x = _batch_norm(train, "proj_bn")(x)
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    """3x3 stem conv + BatchNorm + ReLU, stages of :class:`BasicBlock`, global average pool, Dense.

    Attributes:
        stage_sizes: blocks per stage; every stage after the first halves the resolution.
        widths: channels per stage.
        shortcut: "pad" or "conv" (see :class:`BasicBlock`).
        num_classes: output logits.
        dot_general: replaces ``lax.dot_general`` in the classifier (None: Flax's default).
        conv_general_dilated: replaces ``lax.conv_general_dilated`` in every Conv (None: Flax's default).
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int]
    shortcut: str = "pad"
    num_classes: int = 10
    dot_general: Callable[..., Any] | None = None
    conv_general_dilated: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_images(x, type(self).__name__)
        if self.shortcut not in ("pad", "conv"):
            raise ValueError(f"shortcut must be 'pad' or 'conv', got {self.shortcut!r}.")
        x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=False, kernel_init=he_normal,
                    conv_general_dilated=self.conv_general_dilated, name="stem")(x)
        x = nn.relu(_batch_norm(train, "stem_bn")(x))
        for s, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for b in range(blocks):
                stride = 2 if s > 0 and b == 0 else 1
                block = BasicBlock(
                    width, stride, self.shortcut, self.conv_general_dilated, name=f"stage{s + 1}_block{b + 1}"
                )
                x = block(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dot_general=self.dot_general, name="fc")(x)


class ResNet20(CifarResNet):
    """ResNet-20 for 32x32 images: 3 stages x 3 basic blocks, 16/32/64 channels, option-A (zero-pad) shortcuts.

    269,722 parameters with 10 classes (BatchNorm scale and bias included; running statistics are not parameters).
    """

    stage_sizes: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    shortcut: str = "pad"


class ResNet18(CifarResNet):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool): 4 stages x 2 basic blocks of 64/128/256/512
    channels, 1x1-conv (option B) shortcuts; 11,173,962 parameters with 10 classes. Narrower copies of the same
    shape: ``widths=(16, 32, 64, 128)`` (or ``models.get("resnet18", width=16)``).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    shortcut: str = "conv"
