"""Per-language, per-layer SAE activation statistics, streamed over a corpus.

For every layer l and sentence s the jitted step returns row sums over the sentence's statistic
tokens (real tokens minus BOS, DESIGN.md s.3): activation mass sum_t sum_i f_i, active count
sum_t #{f_i > 0}, residual norm sum_t ||x||, the number of distinct features that fire anywhere
in the sentence, and per-feature token firing counts [W]. The SAE encode happens inside the
model's layer scan, so the [layers, batch, seq, W] codes never exist at once. The host keeps only
per-sentence sums ([sentences, layers]) and per-feature counts ([layers, W]): device memory does
not grow with the corpus. Every corpus-level metric is a ratio of these sums (see `CorpusStats`).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sae import jumprelu
from xling_jax import model as model_lib
from xling_jax.config import ModelConfig
from xling_jax.progress import Progress

ROW_SUMS = ("activation", "l0", "resid_norm", "distinct_features")
METRICS = ("activation", "l0", "mean_active", "resid_norm", "sentence_activation",
           "sentence_distinct_features")


def stat_mask(tokens: jax.Array, mask: jax.Array, bos_id: int) -> jax.Array:
  """[B, T] float32: 1 at real tokens that are not BOS (BOS has a huge norm, DESIGN.md s.3)."""
  return (mask.astype(bool) & (tokens != bos_id)).astype(jnp.float32)


def layer_row_sums(resid: jax.Array, sae_params, weights: jax.Array) -> dict[str, jax.Array]:
  """One layer's statistics. resid [B, T, D], weights [B, T] (0/1) -> row sums [B] and
  feature firing counts [W], all float32. Every statistic of the codes derives from two [B, W]
  weighted sums over tokens. (On an H100, XLA reads the float32 pre-activations in three
  reduction kernels that take half as long as the SAE GEMM itself: BENCHMARKS.md.)"""
  codes = jumprelu.encode(sae_params, resid).astype(jnp.float32)  # [B, T, W]
  active = (codes > 0).astype(jnp.float32)
  w = weights[..., None]
  summed = jnp.sum(w * codes, axis=1)  # code mass per row and feature
  fired = jnp.sum(w * active, axis=1)  # tokens per row where feature w fires
  return {
      "activation": summed.sum(-1),
      "l0": fired.sum(-1),
      "resid_norm": jnp.einsum(
          "bt,bt->b", weights, jnp.linalg.norm(resid.astype(jnp.float32), axis=-1)),
      "distinct_features": (fired > 0).sum(-1).astype(jnp.float32),
      "feature_counts": fired.sum(0),
  }


@partial(jax.jit, static_argnames=("config", "fused"))
def batch_stats(params, config: ModelConfig, saes, tokens: jax.Array, mask: jax.Array,
                hook=None, *, fused: bool = True) -> dict[str, jax.Array]:
  """Statistics of one batch for every layer: row sums [L, B] and feature_counts [L, W], plus
  n_tokens [B]. `saes` is a stacked JumpReLU pytree with one SAE per model layer.

  fused=True encodes inside the layer scan; fused=False materialises the residuals
  [L, B, T, D] first (same numbers; it exists to check the fused path).
  """
  weights = stat_mask(tokens, mask, config.bos_id)
  x = model_lib.embed(params, config, tokens)
  if fused:
    _, out = model_lib.scan_blocks(
        params, config, x, mask, hook=hook,
        observe=lambda resid, sae_l: layer_row_sums(resid, sae_l, weights), observe_xs=saes)
  else:
    residuals = model_lib.forward(params, config, tokens, mask, return_logits=False,
                                  hook=hook).residuals
    out = jax.vmap(layer_row_sums, in_axes=(0, 0, None))(residuals, saes, weights)
  out["n_tokens"] = weights.sum(-1)
  return out


def layer_activations(params, config: ModelConfig, saes, tokens: jax.Array, mask: jax.Array,
                      *, hook=None, layers: Sequence[int] | None = None,
                      remat: bool | str = False) -> jax.Array:
  """Differentiable activation per layer: mean over statistic tokens of sum_i f_i.

  `saes` is stacked over `layers` (default: every model layer). Returns [len(layers)] float32.
  Used as the LoRA objective; residuals of unlisted layers are never encoded.
  """
  layers = tuple(range(config.n_layers)) if layers is None else tuple(layers)
  residuals = model_lib.forward(params, config, tokens, mask, return_logits=False, hook=hook,
                                remat=remat).residuals[jnp.asarray(layers)]
  return activation_from_residuals(residuals, saes, stat_mask(tokens, mask, config.bos_id))


def activation_from_residuals(residuals: jax.Array, saes, weights: jax.Array) -> jax.Array:
  """residuals [n, B, T, D] with `saes` stacked over the same n layers, weights [B, T] ->
  activation [n] = sum over weighted tokens of sum_i f_i / weighted token count."""
  sums = jax.vmap(lambda r, s: layer_row_sums(r, s, weights)["activation"].sum())(residuals, saes)
  return sums / jnp.maximum(weights.sum(), 1.0)


@dataclasses.dataclass
class LanguageSums:
  """Host-side sums for one language. Row arrays are [n_sentences, L] in corpus order."""
  rows: dict[str, np.ndarray]
  n_tokens: np.ndarray  # [n_sentences]
  feature_counts: np.ndarray  # [L, W] token firing counts
  truncated: tuple[int, ...] = ()


@dataclasses.dataclass
class CorpusStats:
  """Statistics of a parallel corpus, languages x layers. `per_language[lang]` holds the sums."""
  languages: tuple[str, ...]
  layers: tuple[int, ...]
  per_language: dict[str, LanguageSums]

  def n_tokens(self, lang: str) -> int:
    return int(self.per_language[lang].n_tokens.sum())

  def n_sentences(self, lang: str) -> int:
    return int(self.per_language[lang].n_tokens.shape[0])

  def metric(self, name: str, lang: str, sentences: np.ndarray | None = None) -> np.ndarray:
    """Corpus-level metric [L] from the sums, optionally over a (bootstrap) sentence index.

    activation = sum f / tokens; l0 = active count / tokens; mean_active = sum f / active
    count; resid_norm = sum ||x|| / tokens; sentence_activation = mean over sentences of the
    sentence's mean-pooled code mass; sentence_distinct_features = mean over sentences of the
    number of features that fire in the sentence.
    """
    s = self.per_language[lang]
    idx = slice(None) if sentences is None else sentences
    rows = {k: v[idx] for k, v in s.rows.items()}
    n = s.n_tokens[idx]
    tokens = max(float(n.sum()), 1.0)
    if name == "activation":
      return rows["activation"].sum(0) / tokens
    if name == "l0":
      return rows["l0"].sum(0) / tokens
    if name == "mean_active":
      return rows["activation"].sum(0) / np.maximum(rows["l0"].sum(0), 1.0)
    if name == "resid_norm":
      return rows["resid_norm"].sum(0) / tokens
    has = n > 0
    if name == "sentence_activation":
      return (rows["activation"][has] / n[has, None]).mean(0)
    if name == "sentence_distinct_features":
      return rows["distinct_features"][has].mean(0)
    raise ValueError(f"unknown metric {name!r}; choose one of {METRICS}")

  def metrics(self, name: str) -> dict[str, list[float]]:
    return {lang: self.metric(name, lang).tolist() for lang in self.languages}


def _batches(n: int, batch_size: int, order: np.ndarray):
  for start in range(0, n, batch_size):
    yield order[start:start + batch_size]


def language_sums(params, config: ModelConfig, saes, tokenizer, sentences: Sequence[str], *,
                  batch_size: int = 16, bucket: int | None = 64, max_len: int | None = None,
                  hook=None, mesh=None, progress: Progress | None = None,
                  fused: bool = True) -> LanguageSums:
  """Stream one language's sentences through `batch_stats`.

  Sentences are sorted by length so batches pad little, each batch is padded with empty rows to
  `batch_size` (one compiled shape per length bucket), and results return to corpus order. The
  next batch is dispatched before the previous one is fetched, so tokenisation and the host copy
  overlap device work. With a `mesh`, the batch axis is split over its `data` axis.
  """
  from xling_jax import sharding as sharding_lib

  if not sentences:
    raise ValueError("no sentences to analyse")
  if mesh is not None:
    n_data = mesh.shape[sharding_lib.DATA]
    batch_size = -(-batch_size // n_data) * n_data
    place = partial(jax.device_put, device=sharding_lib.batch_sharding(mesh))
  else:
    place = jnp.asarray
  max_len = max_len or config.max_seq_len
  lengths = np.array([len(tokenizer.encode(s)) for s in sentences])
  order = np.argsort(lengths, kind="stable")
  n = len(sentences)
  rows = {k: None for k in ROW_SUMS}
  n_tokens = np.zeros(n, np.float64)
  feature_counts = None
  truncated: list[int] = []

  def collect(idx, out):
    nonlocal feature_counts
    if jax.process_count() > 1:  # batch rows live on other hosts' devices too
      from jax.experimental import multihost_utils
      out = multihost_utils.process_allgather(out, tiled=True)
    out = jax.device_get(out)
    k = len(idx)
    for key in ROW_SUMS:
      if rows[key] is None:
        rows[key] = np.zeros((n, out[key].shape[0]), np.float64)
      rows[key][idx] = out[key][:, :k].T
    n_tokens[idx] = out["n_tokens"][:k]
    counts = out["feature_counts"].astype(np.float64)
    feature_counts = counts if feature_counts is None else feature_counts + counts
    if progress is not None:
      progress.update(k)

  pending = None
  for idx in _batches(n, batch_size, order):
    texts = [sentences[i] for i in idx] + [""] * (batch_size - len(idx))
    enc = tokenizer.encode_batch(texts, add_bos=True, max_len=max_len, bucket=bucket)
    truncated.extend(int(idx[r]) for r in enc.truncated if r < len(idx))
    mask = np.asarray(enc.mask).copy()
    mask[len(idx):] = 0  # filler rows contribute nothing
    out = batch_stats(params, config, saes, place(np.asarray(enc.tokens)), place(mask), hook,
                      fused=fused)
    if pending is not None:
      collect(*pending)
    pending = (idx, out)
  collect(*pending)
  return LanguageSums(rows=rows, n_tokens=n_tokens, feature_counts=feature_counts,
                      truncated=tuple(sorted(truncated)))


def corpus_stats(params, config: ModelConfig, saes, tokenizer,
                 texts_by_lang: Mapping[str, Sequence[str]], *, batch_size: int = 16,
                 bucket: int | None = 64, max_len: int | None = None, hook=None, mesh=None,
                 show_progress: bool = True, fused: bool = True) -> CorpusStats:
  """Statistics for every language of a corpus (`{lang: sentences}`), every model layer."""
  per_language = {}
  total = sum(len(v) for v in texts_by_lang.values())
  progress = Progress(total, "analysing", enabled=show_progress)
  for lang, sentences in texts_by_lang.items():
    progress.label = f"analysing [{lang}]"
    per_language[lang] = language_sums(
        params, config, saes, tokenizer, sentences, batch_size=batch_size, bucket=bucket,
        max_len=max_len, hook=hook, mesh=mesh, progress=progress, fused=fused)
  return CorpusStats(languages=tuple(texts_by_lang), layers=tuple(range(config.n_layers)),
                     per_language=per_language)
