"""The training loss of one JumpReLU SAE on one batch: SAELens 6.54's
`JumpReLUTrainingSAE.training_forward_pass` with `apply_b_dec_to_input=False` (Gemma Scope's
convention), term for term (tests/test_sae_training.py checks the loss and all five gradients
against it).

    pre   = x @ W_enc + b_enc                       [B, W]
    f     = jumprelu(pre, θ)                        (threshold STE, `ste`)
    x_hat = f @ W_dec + b_dec                       [B, d]
    mse   = mean_b sum_d (x_hat - x)^2
    l0_b  = sum_j step(pre_bj, θ_j)                 (step / quadratic modes)
    sparsity = mean_b c * {l0_b | 2/t (l0_b - t)^2 | sum_j tanh(s f_bj ||W_dec_j||)}
    pre_act  = k * mean_b sum_j relu(θ_j - pre_bj) * dead_j * ||W_dec_j||   (k = 0: off)
    loss  = mse + sparsity + pre_act
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sae.jumprelu import JumpReLUParams
from sae.train import ste
from sae.train.config import SAETrainConfig


def loss(params: JumpReLUParams, x: jax.Array, l0_coefficient: jax.Array,
         config: SAETrainConfig, dead: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """x [B, d] float32 (already normalised), l0_coefficient [] (after warm-up), dead [W] bool
  (features the pre-activation loss revives; None = none) -> (loss, terms).

  terms: mse, sparsity_loss, pre_act_loss, l0 (mean active count), fvu (batch fraction of
  variance unexplained), fired [W] (tokens each feature fired on)."""
  c = config
  pre = x @ params.W_enc + params.b_enc
  f = ste.jumprelu(pre, params.threshold, c.bandwidth, c.ste_to_input)
  x_hat = f @ params.W_dec + params.b_dec
  squared_error = jnp.sum((x_hat - x) ** 2, axis=-1)
  mse = jnp.mean(squared_error)
  w_dec_norm = jnp.linalg.norm(params.W_dec, axis=-1)
  if c.sparsity == "tanh":
    per_item = jnp.sum(jnp.tanh(c.tanh_scale * f * w_dec_norm), axis=-1)
  else:
    l0 = jnp.sum(ste.step(pre, params.threshold, c.bandwidth, c.ste_to_input), axis=-1)
    per_item = l0 if c.sparsity == "step" else 2.0 / c.target_l0 * (l0 - c.target_l0) ** 2
  sparsity_loss = jnp.mean(l0_coefficient * per_item)
  total = mse + sparsity_loss
  pre_act_loss = jnp.zeros((), jnp.float32)
  if c.pre_act_coefficient and dead is not None:
    # Zero when no feature is dead, as SAELens's branch on dead_neuron_mask.any() gives.
    pre_act_loss = c.pre_act_coefficient * jnp.mean(jnp.sum(
        jax.nn.relu(params.threshold - pre) * dead * w_dec_norm, axis=-1))
    total = total + pre_act_loss
  active = jax.lax.stop_gradient(f) != 0
  variance = jnp.sum((x - jnp.mean(x, axis=0)) ** 2)
  terms = {
      "mse": mse, "sparsity_loss": sparsity_loss, "pre_act_loss": pre_act_loss,
      "l0": jnp.mean(jnp.sum(active, axis=-1, dtype=jnp.float32)),
      "fvu": jax.lax.stop_gradient(jnp.sum(squared_error) / jnp.maximum(variance, 1e-30)),
      "fired": jnp.sum(active, axis=0, dtype=jnp.float32),
  }
  return total, terms
