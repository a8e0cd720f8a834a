"""A small vision transformer: Dense patch embedding, pre-LN encoder blocks, mean pooling."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ._common import check_images


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x)) with a GELU MLP.

    Attributes:
        num_heads: attention heads (must divide the embedding width).
        mlp_dim: hidden width of the MLP.
        dropout: dropout rate on attention weights and MLP outputs (active only when ``train``).
        dot_general: replaces ``lax.dot_general`` in the q/k/v/out projections, in both attention products
            (Q.K^T and weights.V) and in the MLP (None: Flax's default).
    """

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dot_general: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        attention_fn = nn.dot_product_attention
        if self.dot_general is not None:
            # both einsums of the attention (scores and weighted values) contract through this dot_general
            attention_fn = functools.partial(nn.dot_product_attention, einsum_dot_general=self.dot_general)
        y = nn.LayerNorm(name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dropout_rate=self.dropout,
            deterministic=not train,
            attention_fn=attention_fn,
            qkv_dot_general=self.dot_general,
            out_dot_general=self.dot_general,
            name="attn",
        )(y)
        x = x + y
        y = nn.LayerNorm(name="ln2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dot_general=self.dot_general, name="mlp1")(y))
        y = nn.Dense(x.shape[-1], dot_general=self.dot_general, name="mlp2")(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return x + y


class ViTTiny(nn.Module):
    """Image classifier: non-overlapping patches -> Dense embedding + learned positions -> ``depth`` encoder
    blocks -> LayerNorm -> mean over tokens -> Dense.

    Defaults (patch 4, width 64, 2 blocks, 4 heads, MLP 128) give 71,946 parameters on 28x28x1 inputs.
    ``dropout > 0`` with ``train=True`` needs a ``"dropout"`` rng in ``apply``.

    Attributes:
        num_classes: output logits.
        patch_size: side of the square patches; must divide the image height and width.
        dim: embedding width.
        depth: number of encoder blocks.
        num_heads: attention heads.
        mlp_dim: hidden width of each block's MLP.
        dropout: dropout rate (0 by default).
        dot_general: replaces ``lax.dot_general`` in every Dense and inside attention (None: Flax's default).
        conv_general_dilated: accepted for a uniform interface; this model has no convolution.
    """

    num_classes: int = 10
    patch_size: int = 4
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0
    dot_general: Callable[..., Any] | None = None
    conv_general_dilated: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_images(x, "ViTTiny", min_hw=self.patch_size)
        n, h, w, c = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"ViTTiny: patch_size={p} must divide the image size {h}x{w}; pick another patch_size.")
        if self.dim % self.num_heads:
            raise ValueError(f"ViTTiny: num_heads={self.num_heads} must divide dim={self.dim}.")
        # (N, H, W, C) -> (N, tokens, p*p*C): pure data movement, no arithmetic
        x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // p) * (w // p), p * p * c)
        x = nn.Dense(self.dim, dot_general=self.dot_general, name="patch_embed")(x)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (x.shape[1], self.dim), jnp.float32)
        x = x + pos
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.dot_general, name=f"block{i + 1}")(
                x, train=train
            )
        x = nn.LayerNorm(name="ln_final")(x)
        x = jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, dot_general=self.dot_general, name="head")(x)
