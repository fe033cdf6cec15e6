"""Analytic FLOPs per token, for the fraction-of-peak numbers `bin.bench` reports."""
from __future__ import annotations

from xling_jax.model.config import ModelConfig


def forward_flops_per_token(config: ModelConfig, seq_len: int, *, logits: bool,
                            sae_width: int = 0) -> float:
  """Multiply-adds x 2 of one forward pass per token (matmuls and attention; norms ignored).

  Attention averages the causal context: (T + 1) / 2 keys on global layers, at most the window
  on local ones. `sae_width` > 0 adds one JumpReLU encoder (D x W) per layer.
  """
  c = config
  D, N, K, H, F = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_hidden
  proj = D * N * H + 2 * D * K * H + N * H * D + 3 * D * F
  total = 0.0
  for layer in range(c.n_layers):
    keys = (seq_len + 1) / 2
    if c.is_local_layer(layer):
      keys = min(keys, c.sliding_window)
    total += 2 * proj + 2 * 2 * N * H * keys
    total += 2 * D * sae_width
  if logits:
    total += 2 * D * c.vocab_size
  return total
