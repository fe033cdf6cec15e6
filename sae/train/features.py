"""Dead and dense feature tracking over training steps, for one SAE (mapped over layers).

Definitions (windows counted in training steps, `B` tokens each):
  * dead: the feature fired on no token of the last `dead_window` steps
    (`since_fired >= dead_window`; SAELens counts the same, dead_feature_window);
  * dense: it fired on more than `dense_threshold` of the tokens of the last completed
    tumbling window of `feature_window` steps (windows are steps [0, w), [w, 2w), ...; before
    the first window completes, the steps so far stand in for it).
The state is a few [W] vectors, so it is checkpointed with the weights and a resumed run counts
exactly as the uninterrupted one.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sae.train.config import SAETrainConfig


@flax.struct.dataclass
class FeatureStats:
  since_fired: jax.Array  # [W] int32: steps since the feature last fired
  window_fires: jax.Array  # [W] float32: tokens it fired on in the current window
  last_frequency: jax.Array  # [W] float32: firing frequency over the last completed window


def init(width: int) -> FeatureStats:
  return FeatureStats(since_fired=jnp.zeros(width, jnp.int32),
                      window_fires=jnp.zeros(width, jnp.float32),
                      last_frequency=jnp.zeros(width, jnp.float32))


def update(stats: FeatureStats, fired: jax.Array, step, config: SAETrainConfig) -> FeatureStats:
  """After update `step` (0-based), whose batch fired feature j on fired[j] tokens."""
  since = jnp.where(fired > 0, 0, stats.since_fired + 1)
  fires = stats.window_fires + fired
  window_done = (step + 1) % config.feature_window == 0
  frequency = fires / (config.feature_window * config.batch_size)
  return FeatureStats(since_fired=since,
                      window_fires=jnp.where(window_done, 0.0, fires),
                      last_frequency=jnp.where(window_done, frequency, stats.last_frequency))


def dead(stats: FeatureStats, config: SAETrainConfig) -> jax.Array:
  """[W] bool."""
  return stats.since_fired >= config.dead_window


def dense_fraction(stats: FeatureStats, steps_done, config: SAETrainConfig) -> jax.Array:
  """Fraction of features above `dense_threshold`, after `steps_done` updates."""
  in_window = steps_done % config.feature_window
  partial = stats.window_fires / jnp.maximum(in_window * config.batch_size, 1)
  frequency = jnp.where(steps_done >= config.feature_window, stats.last_frequency, partial)
  return jnp.mean(frequency > config.dense_threshold)
