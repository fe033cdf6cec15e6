"""The activation-aware LoRA objective: align + retain + lm, and the norm control.

One step sees a target-language batch and the parallel English batch (same lines).

  align  = mean over objective layers S of ((A_t - A_en_base) / A_en_base)^2, where A is a
           layer's activation (mean over statistic tokens of sum_i f_i, f the layer's JumpReLU
           code; `analysis.sae_stats`), A_t the adapted model's on the target batch and
           A_en_base the frozen model's on the English batch.
  retain = keep English unchanged. "residual": mean over layers of
           sum_tokens ||r_adapted - r_base||^2 / sum_tokens ||r_base||^2 (per-layer normalised,
           because residual norms grow with depth); "kl": mean over tokens of
           KL(p_base || p_adapted) of the next-token distributions.
  lm     = next-token cross-entropy of the adapted model on the target text.
  norm   = mean over objective layers S of ((N_t - N_en_base) / N_en_base)^2, N a layer's mean
           residual norm per statistic token: the align term with the SAE taken out, the
           control that shows whether an SAE objective only moves the residual norm.

  loss = w_align * align + w_retain * retain + w_lm * lm + w_norm * norm

With align's weight 0 the objective needs no SAE (the lm and norm controls).

The frozen English reference (`reference`) is computed once per batch from the base params and
is never differentiated. The adapted model runs once per step on the target and English rows
together; a term whose weight is 0 is left out of the loss (and its SAE encode or logits are not
computed). JumpReLU passes gradients through active features only; that is expected.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lora.lora import project_hook
from xling_jax.analysis import sae_stats
from xling_jax.model import transformer as model_lib
from xling_jax.model.config import ModelConfig
from xling_jax.runtime import validate

RETAIN_KINDS = ("residual", "kl")


def default_objective_layer(n_layers: int) -> int:
  """Layer 20 of Gemma-2-2B's 26 (the paper's), at the same relative depth elsewhere."""
  return round(20 * (n_layers - 1) / 25)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Weights of the three terms, the objective layers S and the kind of retain term.
  `layers` index the model's blocks; the SAEs handed to the objective are stacked in this order.
  None: the default depth of the model it trains (`default_objective_layer`, see `for_model`)."""
  layers: tuple[int, ...] | None = None
  w_align: float = 1.0
  w_retain: float = 1.0
  w_lm: float = 0.0
  retain: str = "residual"
  w_norm: float = 0.0

  def __post_init__(self):
    validate.fields(self)
    if self.layers is not None:
      if not self.layers or len(set(self.layers)) != len(self.layers):
        raise ValueError(f"ObjectiveConfig.layers={self.layers!r}: expected a non-empty, "
                         "duplicate-free tuple of block indices")
      object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
    if self.retain not in RETAIN_KINDS:
      raise ValueError(f"ObjectiveConfig.retain={self.retain!r}; choose one of {RETAIN_KINDS}")
    weights = (self.w_align, self.w_retain, self.w_lm, self.w_norm)
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
      raise ValueError(f"objective weights (align, retain, lm, norm) = {weights}: expected "
                       "non-negative weights, at least one positive")

  def weight(self, term: str) -> float:
    return getattr(self, f"w_{term}")

  def for_model(self, config: ModelConfig) -> "ObjectiveConfig":
    """This objective on `config`'s model: default layers resolved, every layer checked."""
    layers = self.layers or (default_objective_layer(config.n_layers),)
    bad = [l for l in layers if not 0 <= l < config.n_layers]
    if bad:
      raise ValueError(f"objective layers {bad} out of range for a {config.n_layers}-layer model")
    return dataclasses.replace(self, layers=layers)


class Batch(NamedTuple):
  """A target-language batch and the parallel English batch (same lines), BOS first, right
  padded to one common width T: tokens/mask [B, T] int32 each."""
  target_tokens: jax.Array
  target_mask: jax.Array
  ref_tokens: jax.Array
  ref_mask: jax.Array


class Reference(NamedTuple):
  """The frozen model on the English batch: activation and resid_norm [|S|], and (as the retain
  kind needs) residuals [L, B, T, D] or logits [B, T, V]; unused fields are None."""
  activation: jax.Array | None
  residuals: jax.Array | None
  logits: jax.Array | None
  resid_norm: jax.Array | None = None


def mean_norm(residuals: jax.Array, weights: jax.Array) -> jax.Array:
  """residuals [n, B, T, D], weights [B, T] -> [n] mean ||x|| over the weighted tokens."""
  norms = jnp.linalg.norm(residuals.astype(jnp.float32), axis=-1)
  return jnp.einsum("nbt,bt->n", norms, weights) / jnp.maximum(weights.sum(), 1.0)


def _residuals(params, config: ModelConfig, tokens, mask, adapter,
               remat: bool | str) -> jax.Array:
  return model_lib.forward(params, config, tokens, mask, return_logits=False,
                           return_residuals=True, hook=project_hook(adapter),
                           remat=remat).residuals


def _logits(params, config: ModelConfig, residuals: jax.Array) -> jax.Array:
  """Next-token logits from the last block's raw output (what forward's logits are)."""
  return model_lib.unembed(params, config, residuals[-1])


def reference(params, config: ModelConfig, saes, batch: Batch,
              objective: ObjectiveConfig) -> Reference:
  """The frozen English reference for one batch (base params, no adapter, stop_gradient)."""
  kl = objective.w_retain > 0 and objective.retain == "kl"
  residuals = _residuals(params, config, batch.ref_tokens, batch.ref_mask, None, False)
  weights = sae_stats.stat_mask(batch.ref_tokens, batch.ref_mask, config.bos_id)
  ref = Reference(
      activation=(sae_stats.activation_from_residuals(residuals[jnp.asarray(objective.layers)], saes, weights)
                  if objective.w_align > 0 else None),
      residuals=residuals if objective.w_retain > 0 and not kl else None,
      logits=_logits(params, config, residuals) if kl else None,
      resid_norm=(mean_norm(residuals[jnp.asarray(objective.layers)], weights)
                  if objective.w_norm > 0 else None))
  return jax.tree.map(jax.lax.stop_gradient, ref)


def relative_residual_distance(residuals: jax.Array, base: jax.Array,
                               weights: jax.Array) -> jax.Array:
  """Mean over layers of sum_t ||r - r_base||^2 / sum_t ||r_base||^2 over weighted tokens.
  residuals, base [L, B, T, D]; weights [B, T]."""
  diff = jnp.einsum("lbt,bt->l", jnp.sum((residuals - base).astype(jnp.float32) ** 2, -1),
                    weights)
  norm = jnp.einsum("lbt,bt->l", jnp.sum(base.astype(jnp.float32) ** 2, -1), weights)
  return jnp.mean(diff / jnp.maximum(norm, 1e-30))


def next_token_kl(logits: jax.Array, base_logits: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean over weighted positions of KL(softmax(base) || softmax(logits)); [B, T, V], [B, T]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  base_logp = jax.nn.log_softmax(base_logits.astype(jnp.float32), -1)
  kl = jnp.sum(jnp.exp(base_logp) * (base_logp - logp), -1)
  return jnp.sum(kl * weights) / jnp.maximum(weights.sum(), 1.0)


def next_token_nll(params, config: ModelConfig, hidden: jax.Array, tokens: jax.Array,
                   mask: jax.Array, chunk_tokens: int = 2048) -> jax.Array:
  """Mean cross-entropy of predicting tokens[:, 1:] from the logits of hidden[:, :-1], over real
  targets. hidden [B, T, D] is the last block's raw output; tokens, mask [B, T].

  Positions are scored `chunk_tokens` at a time, each chunk under `jax.checkpoint`, so neither
  pass holds more than one chunk's [chunk, V] logits: for a 32 x 256 batch over Gemma's 256k
  vocabulary the float32 logits alone are 8.4 GB, and autodiff of unembed + softcap +
  log-softmax would keep several such arrays. A batch that fits one chunk is not recomputed.
  Within a chunk the whole vocabulary is one matmul: `model.target_logprobs`' vocabulary loop is
  faster without autodiff, but under it the LoRA step on the 270M took 1.14x as long.
  """
  D = hidden.shape[-1]
  h = hidden[:, :-1].reshape(-1, D)
  targets = tokens[:, 1:].reshape(-1)
  weights = mask[:, 1:].reshape(-1).astype(jnp.float32)

  def chunk_nll(xs):
    h_c, t_c, w_c = xs
    logits = model_lib.unembed(params, config, h_c)  # [chunk, V] float32
    target = jnp.take_along_axis(logits, t_c[:, None], -1)[:, 0]
    return jnp.sum((jax.nn.logsumexp(logits, -1) - target) * w_c)

  n_chunks = -(-h.shape[0] // chunk_tokens)
  if n_chunks == 1:  # a loop of one costs ~15% of a small CPU step
    total = chunk_nll((h, targets, weights))
  else:
    pad = n_chunks * chunk_tokens - h.shape[0]
    chunked = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(
        (n_chunks, chunk_tokens) + a.shape[1:])
    total = jnp.sum(jax.lax.map(jax.checkpoint(chunk_nll),
                                (chunked(h), chunked(targets), chunked(weights))))
  return total / jnp.maximum(weights.sum(), 1.0)


def loss_terms(adapter, params, config: ModelConfig, saes, batch: Batch, ref: Reference,
               objective: ObjectiveConfig, *, remat: bool | str = False
               ) -> dict[str, jax.Array]:
  """The unweighted terms with positive weight, each a float32 scalar. `adapter` is the full
  adapter pytree ({"scale", "layers"}); `saes` are stacked over `objective.layers`.

  The adapted model runs once: on the target rows, stacked with the English rows into one
  [2B, T] batch when the retain term needs them (one layer scan to differentiate instead of
  two, half the compile time); without a retain term English never enters the adapted model."""
  B = batch.target_tokens.shape[0]
  with_english = objective.w_retain > 0
  tokens, mask = batch.target_tokens, batch.target_mask
  if with_english:
    tokens = jnp.concatenate([tokens, batch.ref_tokens])
    mask = jnp.concatenate([mask, batch.ref_mask])
  residuals = _residuals(params, config, tokens, mask, adapter, remat)
  target, english = residuals[:, :B], residuals[:, B:]
  terms = {}
  if objective.w_align > 0:
    weights = sae_stats.stat_mask(batch.target_tokens, batch.target_mask, config.bos_id)
    act = sae_stats.activation_from_residuals(target[jnp.asarray(objective.layers)], saes, weights)
    terms["align"] = jnp.mean(((act - ref.activation) / ref.activation) ** 2)
  if objective.w_retain > 0:
    weights = sae_stats.stat_mask(batch.ref_tokens, batch.ref_mask, config.bos_id)
    terms["retain"] = (
        next_token_kl(_logits(params, config, english), ref.logits, weights)
        if objective.retain == "kl" else
        relative_residual_distance(english, ref.residuals, weights))
  if objective.w_lm > 0:
    terms["lm"] = next_token_nll(params, config, target[-1], batch.target_tokens,
                                 batch.target_mask)
  if objective.w_norm > 0:
    weights = sae_stats.stat_mask(batch.target_tokens, batch.target_mask, config.bos_id)
    norm = mean_norm(target[jnp.asarray(objective.layers)], weights)
    terms["norm"] = jnp.mean(((norm - ref.resid_norm) / ref.resid_norm) ** 2)
  return terms


def total_loss(adapter, params, config: ModelConfig, saes, batch: Batch, ref: Reference,
               objective: ObjectiveConfig, *, remat: bool | str = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(weighted total, unweighted terms)."""
  terms = loss_terms(adapter, params, config, saes, batch, ref, objective, remat=remat)
  total = sum(objective.weight(name) * value for name, value in terms.items())
  return total, terms


