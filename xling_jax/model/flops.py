"""Analytic FLOPs per token, for the fraction-of-peak numbers `bin.bench` reports."""
from __future__ import annotations

from xling_jax.model.config import ModelConfig


def forward_flops_per_token(config: ModelConfig, seq_len: int, *, logits: bool,
                            sae_width: int = 0) -> float:
  """Multiply-adds x 2 of one forward pass per token (matmuls and attention; norms ignored).

  Attention averages the causal context: (T + 1) / 2 keys on global layers, at most the window
  on local ones. Each layer counts its own head width, KV heads and MLP width (Gemma 4's layers
  differ), no key/value projections on KV-shared layers and one on K = V layers, the routed
  experts each token reaches (top-k) and the router, and the per-layer-embedding maps.
  `sae_width` > 0 adds one JumpReLU encoder (D x W) per layer.
  """
  c = config
  D, N = c.d_model, c.n_heads
  total = 0.0
  for layer in range(c.n_layers):
    kind = c.layer_kinds[layer]
    H, K, F = c.kind_head_dim(kind), c.kind_kv_heads(kind), c.layer_mlp_hidden(layer)
    kv_maps = 0 if c.is_kv_shared(layer) else 1 if c.attention_kinds[kind].k_eq_v else 2
    proj = D * N * H + kv_maps * D * K * H + N * H * D + 3 * D * F
    proj += c.top_k_experts * 3 * D * c.moe_hidden + D * c.n_experts
    proj += 2 * D * c.ple_dim + D * c.ple_dim  # gate, projection; this layer's embedding part
    keys = (seq_len + 1) / 2
    if c.is_local_layer(layer):
      keys = min(keys, c.layer_kind(layer).window)
    total += 2 * proj + 2 * 2 * N * H * keys
    total += 2 * D * sae_width
  if logits:
    total += 2 * D * c.vocab_size
  return total
