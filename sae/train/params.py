"""The trained tree of one SAE, its initialisation, and its map to `JumpReLUParams`.

The optimiser sees a dict {"W_enc", "b_enc", <threshold>, "W_dec", "b_dec"} whose threshold
entry is "threshold" (θ itself) or "log_threshold" (log θ), per `SAETrainConfig.threshold_param`;
everything else (loss, folding, saving) works on `JumpReLUParams`. Stacked trees carry a leading
[L] axis on every leaf.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sae.jumprelu import JumpReLUParams
from sae.train.config import SAETrainConfig

Trainable = dict[str, jax.Array]


def _threshold_key(config: SAETrainConfig) -> str:
  return "log_threshold" if config.threshold_param == "log" else "threshold"


def init_params(key: jax.Array, d_in: int, config: SAETrainConfig) -> JumpReLUParams:
  """One SAE, float32: decoder rows in uniformly random directions with norm
  `decoder_init_norm`, W_enc = W_dec^T, zero biases, θ = `init_threshold` (SAELens's init,
  with Gaussian rather than Kaiming-uniform draws: only the directions survive the row
  normalisation)."""
  w_dec = jax.random.normal(key, (config.width, d_in), jnp.float32)
  w_dec = w_dec * (config.decoder_init_norm / jnp.linalg.norm(w_dec, axis=-1, keepdims=True))
  return JumpReLUParams(W_enc=w_dec.T, b_enc=jnp.zeros(config.width),
                        threshold=jnp.full(config.width, config.init_threshold, jnp.float32),
                        W_dec=w_dec, b_dec=jnp.zeros(d_in))


def init_stacked(key: jax.Array, d_in: int, layers: tuple[int, ...],
                 config: SAETrainConfig) -> JumpReLUParams:
  """One SAE per model layer in `layers`, stacked. Layer i's SAE is drawn from
  fold_in(key, i), so it does not depend on which other layers train alongside it."""
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(layers))
  return jax.vmap(lambda k: init_params(k, d_in, config))(keys)


def to_trainable(params: JumpReLUParams, config: SAETrainConfig) -> Trainable:
  tree = {"W_enc": params.W_enc, "b_enc": params.b_enc, "W_dec": params.W_dec,
          "b_dec": params.b_dec}
  log = config.threshold_param == "log"
  tree[_threshold_key(config)] = jnp.log(params.threshold) if log else params.threshold
  return tree


def from_trainable(tree: Trainable, config: SAETrainConfig) -> JumpReLUParams:
  threshold = tree[_threshold_key(config)]
  return JumpReLUParams(
      W_enc=tree["W_enc"], b_enc=tree["b_enc"], W_dec=tree["W_dec"], b_dec=tree["b_dec"],
      threshold=jnp.exp(threshold) if config.threshold_param == "log" else threshold)


def project(tree: Trainable, config: SAETrainConfig) -> Trainable:
  """After an update: a directly trained θ is clipped at 0 (below 0 the gate would pass
  negative pre-activations). SAELens clamps the parameter before each forward instead, which is
  the same sequence of forwards."""
  if config.threshold_param == "log":
    return tree
  return {**tree, "threshold": jnp.maximum(tree["threshold"], 0.0)}
