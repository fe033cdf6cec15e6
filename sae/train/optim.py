"""Optimiser and schedules (values and sources in `config.SAETrainConfig`).

Both schedules take the 0-based index of the update being computed (optax's count): the first
update already has a nonzero rate and coefficient, as SAELens's `CoefficientScheduler`
((step + 1) / warmup) does, so no step is wasted at zero.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

from sae.train.config import SAETrainConfig


def _ramp(step, warmup: int):
  return 1.0 if warmup == 0 else jnp.minimum((step + 1) / warmup, 1.0)


def lr_schedule(config: SAETrainConfig) -> optax.Schedule:
  """peak_lr * linear warm-up over `lr_warmup` * linear decay to 0 over the last
  `lr_decay_steps`."""
  c = config

  def schedule(step):
    decay = 1.0 if c.lr_decay_steps == 0 else jnp.clip((c.steps - step) / c.lr_decay_steps,
                                                       0.0, 1.0)
    return c.peak_lr * _ramp(step, c.lr_warmup) * decay

  return schedule


def l0_coefficient(config: SAETrainConfig, step) -> jnp.ndarray:
  """The sparsity coefficient at update `step`: linear warm-up from 0 to `l0_coef`."""
  return jnp.asarray(config.l0_coef * _ramp(step, config.sparsity_warmup), jnp.float32)


def make_optimizer(config: SAETrainConfig) -> optax.GradientTransformation:
  """clip to global norm -> Adam(lr schedule). Applied to one SAE's tree: the trainer maps it
  over layers, so each layer's gradient is clipped on its own norm, as if trained alone."""
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adam(lr_schedule(config), b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
