"""The training state of L SAEs trained together, and the jitted update over all of them.

Multi-layer training maps the single-SAE update over a stacked layer axis with `lax.map`: each
layer keeps its own weights, Adam moments, gradient clipping, normalisation scalar and feature
statistics, and gets the same tokens' activations at its layer. The L updates are one XLA
program (one dispatch, one host sync per step) that runs them one after the other, so only one
layer's [B, W] intermediates are live at a time. `jax.vmap` would compute the same numbers
with batched matmuls, which XLA's CPU backend runs ~20% slower than plain ones and which hold
all L layers' intermediates at once.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sae.jumprelu import JumpReLUParams
from sae.train import features, objective, optim, params as params_lib
from sae.train.config import SAETrainConfig

METRICS = ("loss", "mse", "sparsity_loss", "pre_act_loss", "l0", "fvu", "grad_norm",
           "dead_fraction", "dense_fraction")


@flax.struct.dataclass
class TrainState:
  """Every leaf has a leading [L] axis."""
  trainable: params_lib.Trainable
  opt_state: Any
  features: features.FeatureStats
  scale: jax.Array  # [L] float32: the inputs' normalisation scalar s


@functools.partial(jax.jit, static_argnames=("d_in", "layers", "config"))
def init_state(key: jax.Array, d_in: int, layers: tuple[int, ...], scale: jax.Array,
               config: SAETrainConfig) -> TrainState:
  """Fresh SAEs for model layers `layers` (scale [L]: their inputs' normalisation scalars)."""
  scale = jnp.asarray(scale, jnp.float32)
  trainable = jax.vmap(lambda p: params_lib.to_trainable(p, config))(
      params_lib.init_stacked(key, d_in, layers, config))
  tx = optim.make_optimizer(config)
  return TrainState(trainable=trainable, opt_state=jax.vmap(tx.init)(trainable),
                    features=jax.vmap(lambda _: features.init(config.width))(scale), scale=scale)


@functools.partial(jax.jit, static_argnames="config")
def normalised_params(state: TrainState, config: SAETrainConfig) -> JumpReLUParams:
  """The stacked SAEs as trained, i.e. on normalised inputs (fold them before saving)."""
  return jax.vmap(lambda t: params_lib.from_trainable(t, config))(state.trainable)


def make_train_step(config: SAETrainConfig) -> Callable[[TrainState, jax.Array, jax.Array],
                                                        tuple[TrainState, dict]]:
  """step(state, x [L, B, d] raw activations, step index []) -> (state, metrics).

  metrics: METRICS [L] (dead/dense after this update), `finite` [L] (loss, gradients and
  updated weights all finite), and the step's `lr` and `l0_coefficient` []."""
  c = config
  tx = optim.make_optimizer(c)

  def one_layer(trainable, opt_state, stats, scale, x, step):
    x = x.astype(jnp.float32) * scale
    dead = features.dead(stats, c)

    def loss_fn(tree):
      return objective.loss(params_lib.from_trainable(tree, c), x,
                            optim.l0_coefficient(c, step), c, dead)

    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = params_lib.project(optax.apply_updates(trainable, updates), c)
    stats = features.update(stats, terms.pop("fired"), step, c)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(trainable)]))
    metrics = {"loss": total, **terms, "grad_norm": grad_norm,
               "dead_fraction": jnp.mean(features.dead(stats, c)),
               "dense_fraction": features.dense_fraction(stats, step + 1, c), "finite": finite}
    return trainable, opt_state, stats, metrics

  def train_step(state: TrainState, x: jax.Array, step: jax.Array):
    trainable, opt_state, stats, metrics = jax.lax.map(
        lambda layer: one_layer(*layer, step),
        (state.trainable, state.opt_state, state.features, state.scale, x))
    metrics.update(lr=optim.lr_schedule(c)(step), l0_coefficient=optim.l0_coefficient(c, step))
    return TrainState(trainable, opt_state, stats, state.scale), metrics

  return jax.jit(train_step)
