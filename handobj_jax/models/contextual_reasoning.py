"""Contextual reasoning (CR) module of Semi-Hand-Object (Sec. 4.1, Eq. 1-4, Fig. 3).

One Transformer cross-attention block on RoI features:
  Q = F_query W_q + b_q,  K = F_ctx W_k + b_k,  V = F_ctx W_v + b_v        (Eq. 1)
  Att = softmax(Q K^T / sqrt(d_k)) V   over all S*S key positions          (Eq. 2)
  Q' = F_query + Att                                                        (Eq. 3)
  F+ = Q' + MLP(LN(Q')),  MLP = Dense(r C) -> GELU -> Dense(C)              (Eq. 4)

Shapes: query, context [B, S, S, C] (S = RoI size, 32 in the paper; C = 256),
context_valid [B] bool. Outputs F+ [B, S, S, C] and the attention weights
[B, h, S*S, S*S] (row = query cell, column = key cell, both flattened row-major
as row * S + col), for the Fig. 7 visualisation. Features are unitless RoIAlign
features of the FPN's P2.

Heads: with h = `num_heads` the C channels are split into h groups of
d_k = C / h (the released code's layout: head n uses channels
[n * d_k, (n + 1) * d_k) of Q, K and V); h = 1 (default, and the released
default) is the paper's Eq. 2 with d_k = C. The heads' outputs are
concatenated back to C channels without an output projection (the paper and
the released code have none).

Query vs context: Eq. 1 writes Q = W_q F^h, but the text, Fig. 3 and the
released code take the *object* RoI features as the query and the features of
the hand-object box intersection as key / value. This module is agnostic: the
caller passes whichever query it wants (object features for the paper's o+
model; hand features for the h+ ablation of Sec. 6.5.1).

Invalid context: when the hand and object boxes do not intersect there is no
context. For examples with context_valid = False this module sets Att = 0, so
F+ = F_query + MLP(LN(F_query)) exactly, and returns all-zero attention
weights for them. (The released code instead zeroes the intersection features,
which leaves Att = b_v, the value bias broadcast to every cell; we prefer the
exact no-context output.)

Details that follow the released code: LayerNorm epsilon 1e-5 (PyTorch
default) with learnable scale and bias; exact (erf) GELU; MLP hidden width
`mlp_ratio` * C = 4 C; the MLP kernels are Xavier-uniform initialised. The
projections use PyTorch's default conv initialisation (uniform with variance
1 / (3 fan_in)); all biases start at zero. No dropout, no positional embedding
(the released code has a zero-initialised one that it never passes).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPSILON = 1e-5
# PyTorch's default Conv2d / Linear kernel init (kaiming_uniform, a = sqrt(5)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                      "uniform")


class ContextualReasoning(nn.Module):
  """CR block: (query [B,S,S,C], context [B,S,S,C], context_valid [B]) -> (F+, attn).

  Attributes:
    num_heads: h; C must be divisible by h. 1 = the paper's Eq. 2.
    mlp_ratio: hidden width of the feed-forward MLP relative to C.
  """
  num_heads: int = 1
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, query: jax.Array, context: jax.Array,
               context_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Applies Eq. 1-4.

    Args:
      query: [B, S, S, C] features to enhance (object RoI features in the paper).
      context: [B, S, S, C] key / value features (hand-object intersection RoI).
      context_valid: [B] bool (or 0/1), False where the boxes do not intersect.

    Returns:
      F+ [B, S, S, C] float32 and attention weights [B, h, S*S, S*S] (rows sum
      to 1 for valid examples, all zero for invalid ones).
    """
    if query.ndim != 4 or context.shape != query.shape:
      raise ValueError(f"ContextualReasoning: query and context must both be "
                       f"[B, S, S, C], got {query.shape} and {context.shape}")
    b, h, w, c = query.shape
    if c % self.num_heads:
      raise ValueError(f"ContextualReasoning: channels {c} not divisible by "
                       f"num_heads {self.num_heads}")
    context_valid = jnp.asarray(context_valid).reshape(b).astype(bool)
    heads, d_k = self.num_heads, c // self.num_heads

    def project(x, name):
      y = nn.Dense(c, kernel_init=torch_default_init, name=name)(x)
      return y.reshape(b, h * w, heads, d_k)

    q = project(query, "query")
    k = project(context, "key")
    v = project(context, "value")
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / jnp.sqrt(
        jnp.asarray(d_k, jnp.float32))
    attn = jax.nn.softmax(logits, axis=-1)  # [B, h, L, L]
    attn = jnp.where(context_valid[:, None, None, None], attn, 0.0)
    out = jnp.einsum("bnqk,bknd->bqnd", attn, v).reshape(b, h, w, c)

    x = query + out  # Q', Eq. 3 (Att = 0 for invalid context)
    y = nn.LayerNorm(epsilon=LN_EPSILON, name="norm")(x)
    y = nn.Dense(int(c * self.mlp_ratio),
                 kernel_init=nn.initializers.xavier_uniform(), name="mlp_fc1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(c, kernel_init=nn.initializers.xavier_uniform(),
                 name="mlp_fc2")(y)
    return x + y, attn
