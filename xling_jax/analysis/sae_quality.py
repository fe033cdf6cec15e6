"""How well each SAE reconstructs each language: the control that says whether a smaller code
mass is a property of the language or of an SAE that fits it worse.

Per language l and analysed layer, over the statistic tokens t (real, not BOS) of the first
`sentences` sentences:

  fvu            = sum_t ||x_t - x^_t||^2 / sum_t ||x_t - mean_l(x)||^2   (x^ = decode(encode(x)),
                   mean_l(x) the language's mean residual at that layer)
  delta_lm_loss  = the mean next-token cross-entropy with the layer's residual replaced by x^ at
                   every non-BOS position, minus the clean one
  clean_lm_loss  = the mean next-token cross-entropy of the unchanged model

Cross-entropies are in nats per target token; the targets are every real token after BOS.
Each costs a forward pass and the whole-vocabulary softmax (for Gemma 3's 262k entries more
than the 270M model's blocks), once clean and once per analysed layer: `lm_loss=False` measures
the FVU alone.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sae import jumprelu
from xling_jax.analysis.corpus_stats import stream_sentences
from xling_jax.analysis.sae_stats import stat_mask
from xling_jax.model import transformer as model_lib
from xling_jax.model.config import ModelConfig
from xling_jax.runtime.progress import Progress


def _row_nll(params, config: ModelConfig, final: jax.Array, tokens: jax.Array,
             mask: jax.Array) -> jax.Array:
  """Summed next-token cross-entropy per row [B] from the last block's output [B, T, D]: the
  prediction at t scores token t + 1 wherever both are real."""
  logprobs = model_lib.target_logprobs(params, config, final[:, :-1], tokens[:, 1:])
  targets = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
  return -(logprobs * targets).sum(-1)


@partial(jax.jit, static_argnames=("config", "layers", "lm_loss"))
def quality_stats(params, config: ModelConfig, saes: jumprelu.JumpReLUParams, tokens: jax.Array,
                  mask: jax.Array, *, layers: tuple[int, ...],
                  lm_loss: bool = True) -> dict[str, jax.Array]:
  """One batch: for each analysed layer (SAEs stacked over `layers`) the reconstruction error
  sse [n, B], sum ||x||^2 sq [n, B] and sum x [n, D] over statistic tokens, and the summed
  cross-entropy spliced_nll [n, B] with that layer's residual replaced by its reconstruction;
  clean_nll [1, B]; n_targets [1, B]; n_tokens [B] (the cross-entropies only with `lm_loss`)."""
  weights = stat_mask(tokens, mask, config.bos_id)
  x = model_lib.embed(params, config, tokens)
  where = jnp.zeros(config.n_layers, jnp.int32).at[jnp.asarray(layers)].set(
      jnp.arange(1, len(layers) + 1))  # 1 + the SAE index at analysed layers, 0 elsewhere

  def reconstruction(resid, sae):
    return jumprelu.decode(sae, jumprelu.encode(sae, resid)).astype(resid.dtype)

  def fit_sums(resid, index):
    sae = jax.tree.map(lambda p: p[index - 1], saes)
    err = jnp.sum((resid - reconstruction(resid, sae)).astype(jnp.float32) ** 2, -1)
    r32 = resid.astype(jnp.float32)
    return {"sse": jnp.einsum("bt,bt->b", weights, err),
            "sq": jnp.einsum("bt,bt->b", weights, jnp.sum(r32 ** 2, -1)),
            "sum_x": jnp.einsum("bt,btd->d", weights, r32)}

  def fit(resid, index):  # layers without an SAE skip the encode (lax.cond runs one branch)
    return jax.lax.cond(index > 0, fit_sums,
                        lambda r, i: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                 jax.eval_shape(fit_sums, r, i)),
                        resid, index)

  final, fits = model_lib.scan_blocks(params, config, x, mask, observe=fit, observe_xs=where,
                                      tokens=tokens)
  fits = jax.tree.map(lambda a: a[jnp.asarray(layers)], fits)
  out = {**fits, "n_tokens": weights.sum(-1)}
  if not lm_loss:
    return out
  out["clean_nll"] = _row_nll(params, config, final, tokens, mask)[None]

  layer_ids = jnp.asarray(layers)

  def spliced(i):  # one compiled forward, run once per analysed layer by lax.map
    sae = jax.tree.map(lambda p: p[i], saes)
    splice = lambda resid, here: jax.lax.cond(
        here, lambda r: jnp.where(weights[..., None] > 0, reconstruction(r, sae), r),
        lambda r: r, resid)
    is_layer = jnp.arange(config.n_layers) == layer_ids[i]
    last, _ = model_lib.scan_blocks(params, config, x, mask, edit=splice, edit_xs=is_layer,
                                    tokens=tokens)
    return _row_nll(params, config, last, tokens, mask)

  out["spliced_nll"] = jax.lax.map(spliced, jnp.arange(len(layers)))
  out["n_targets"] = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32).sum(-1)[None]
  return out


def language_quality(params, config: ModelConfig, saes, tokenizer, sentences: Sequence[str], *,
                     layers: tuple[int, ...], batch_size: int = 16, bucket: int | None = 64,
                     max_len: int | None = None, mesh=None,
                     progress: Progress | None = None, lm_loss: bool = True) -> dict:
  """{"fvu": [n], "delta_lm_loss": [n] | None, "clean_lm_loss": float | None, "tokens": int} of
  one language's `sentences` (see the module docstring)."""
  step = lambda tokens, mask: quality_stats(params, config, saes, tokens, mask, layers=layers,
                                            lm_loss=lm_loss)
  # One padded width for every batch: the step is large, so one compile beats tighter padding.
  longest = 1 + max(len(tokenizer.encode(s)) for s in sentences)
  width = min(-(-longest // (bucket or 1)) * (bucket or 1), max_len or config.max_seq_len)
  sums = stream_sentences(config, tokenizer, sentences, step, batch_size=batch_size,
                          bucket=width, max_len=max_len, mesh=mesh, progress=progress)
  rows = {k: v.sum(0) for k, v in sums.rows.items()}  # summed over sentences: [n] or [1]
  n = max(float(sums.n_tokens.sum()), 1.0)
  sum_x = sums.pooled["sum_x"]  # [n, D]
  variance = rows["sq"] - (sum_x ** 2).sum(-1) / n
  fvu = (rows["sse"] / np.where(variance > 0, variance, np.nan)).tolist()
  if not lm_loss:
    return {"fvu": fvu, "delta_lm_loss": None, "clean_lm_loss": None,
            "tokens": int(sums.n_tokens.sum())}
  targets = max(float(rows["n_targets"][0]), 1.0)
  clean = float(rows["clean_nll"][0]) / targets
  return {"fvu": fvu, "delta_lm_loss": (rows["spliced_nll"] / targets - clean).tolist(),
          "clean_lm_loss": clean, "tokens": int(sums.n_tokens.sum())}


def corpus_quality(params, config: ModelConfig, saes, tokenizer,
                   texts_by_lang: Mapping[str, Sequence[str]], *, layers: Sequence[int],
                   sentences: int, batch_size: int = 16, bucket: int | None = 64,
                   max_len: int | None = None, mesh=None, show_progress: bool = True,
                   lm_loss: bool = True) -> dict:
  """`sae_quality` of stats.json: {"fvu": {lang: [n]}, "delta_lm_loss": {lang: [n]} | None,
  "clean_lm_loss": {lang: float} | None, "sentences": N, "tokens": {lang: int}} on the first
  `sentences` sentences of each language (0: all of them); without `lm_loss` the FVU only."""
  layers = tuple(layers)
  texts = {lang: list(s[:sentences] if sentences else s) for lang, s in texts_by_lang.items()}
  progress = Progress(sum(map(len, texts.values())), "SAE quality", enabled=show_progress)
  per_lang = {}
  for lang, lines in texts.items():
    progress.label = f"SAE quality [{lang}]"
    per_lang[lang] = language_quality(params, config, saes, tokenizer, lines, layers=layers,
                                      batch_size=batch_size, bucket=bucket, max_len=max_len,
                                      mesh=mesh, progress=progress, lm_loss=lm_loss)
  return {"fvu": {lang: q["fvu"] for lang, q in per_lang.items()},
          "delta_lm_loss": ({lang: q["delta_lm_loss"] for lang, q in per_lang.items()}
                            if lm_loss else None),
          "clean_lm_loss": ({lang: q["clean_lm_loss"] for lang, q in per_lang.items()}
                            if lm_loss else None),
          "sentences": len(next(iter(texts.values()))),
          "tokens": {lang: q["tokens"] for lang, q in per_lang.items()}}
