"""Multiple-choice log-likelihood scoring under lm-evaluation-harness 0.4.13's rules, context once.

Tokenisation (`encode_pair`, lm-eval `_encode_pair`): trailing whitespace of the context moves to
the front of the continuation; `ctx+cont` is tokenised as a whole and split at `len(tok(ctx))`;
the model reads `tok(ctx) + cont_tokens`. BOS is prepended to the context: lm-eval's HF backend
leaves `add_bos_token=None`, so the tokenizer's default decides, and Gemma's HF tokenizer adds
`<bos>`. A choice's log-likelihood is the sum of the log-softmax of its continuation tokens.

Context once: lm-eval runs the shared context once per choice. We pack one item per row,
`[ctx, cont_1[:-1], ..., cont_n[:-1]]` (a continuation's last token is a target, never an input),
with `positions` restarting at len(ctx) for each continuation and a `pair_mask` letting
continuation i see the context and its own earlier tokens only. Each row is therefore exactly the n
independent sequences, and the needed log-probs are gathered from the last hidden states before
unembedding (P targets per row, not T), whose vocabulary `model.target_logprobs` walks in chunks
rather than holding `[B, P, V]` logits. Row lengths T and target counts P
are rounded up to one of four steps per power of two (at most 25% padding) and batches are padded
to a fixed size, so a whole run compiles a handful of shapes.

Too long: an item whose longest choice needs more than `max_len` input tokens (lm-eval's
`len(ctx) + len(cont) - 1 > max_length`, where lm-eval would cut the context from the left) is
not scored: it is returned in `ScoreResult.too_long` for the caller to report and count.

Metrics (lm-eval `process_results`): acc = argmax(ll); acc_norm = argmax(ll / len(choice)), the
length in Unicode characters of the choice string (no delimiter); acc_bytes = argmax(ll / UTF-8
bytes); ties go to the first choice (numpy argmax). stderr = sample std (ddof 1) / sqrt(n), as
lm-eval's `mean_stderr`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xling_jax.evaluation.prompts import Prompt
from xling_jax.model import transformer as model_lib
from xling_jax.model.config import ModelConfig
from xling_jax.runtime import batching

MIN_ROW = 64
MIN_TARGETS = 16
METRICS = ("acc", "acc_norm", "acc_bytes")
PREDICTION_KEY = {"acc": "pred", "acc_norm": "pred_norm", "acc_bytes": "pred_bytes"}


@dataclasses.dataclass(frozen=True)
class EncodedItem:
  """Token ids of one item: the context (BOS first) and each choice's continuation tokens."""
  context: tuple[int, ...]
  continuations: tuple[tuple[int, ...], ...]

  @property
  def max_input_len(self) -> int:
    """Input tokens of the longest choice, as lm-eval counts them: len(ctx) + len(cont) - 1."""
    return len(self.context) + max(len(c) for c in self.continuations) - 1

  @property
  def packed_len(self) -> int:
    return len(self.context) + sum(len(c) - 1 for c in self.continuations)

  @property
  def n_targets(self) -> int:
    return sum(len(c) for c in self.continuations)


@dataclasses.dataclass(frozen=True)
class ScoreResult:
  """`loglikelihoods[i]` is one float per choice, or None for an item listed in `too_long`."""
  loglikelihoods: list[list[float] | None]
  too_long: list[int]


def encode_pair(tokenizer, context: str, continuation: str, *,
                add_bos: bool = True) -> tuple[list[int], list[int]]:
  """lm-eval's `_encode_pair` for causal LMs -> (context ids, continuation ids)."""
  if not context and not add_bos:
    raise ValueError("an empty context needs add_bos=True (BOS is then the whole context)")
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
  whole = tokenizer.encode(context + continuation, add_bos=add_bos)
  context_ids = tokenizer.encode(context, add_bos=add_bos)
  return context_ids, whole[len(context_ids):]


def encode_item(tokenizer, context: str, continuations: Sequence[str], *,
                add_bos: bool = True, name: str = "item") -> EncodedItem:
  """Every choice of one item under `encode_pair`. The context ids do not depend on the choice (the
  whitespace move depends on the context alone), which is what lets one pass serve all choices."""
  if not continuations:
    raise ValueError(f"{name}: no choices to score")
  context_ids: list[int] | None = None
  conts = []
  for i, cont in enumerate(continuations):
    ctx_ids, cont_ids = encode_pair(tokenizer, context, cont, add_bos=add_bos)
    if not cont_ids:
      raise ValueError(f"{name}: choice {i} ({cont!r}) tokenises to no tokens after the context")
    context_ids = ctx_ids
    conts.append(tuple(cont_ids))
  return EncodedItem(tuple(context_ids), tuple(conts))


def encode_prompts(tokenizer, prompts: Sequence[Prompt], *,
                   add_bos: bool = True) -> list[EncodedItem]:
  return [encode_item(tokenizer, p.context, p.continuations, add_bos=add_bos,
                      name=f"{p.item.task}/{p.item.lang}/{p.item.id}") for p in prompts]


# ---- packing ----------------------------------------------------------------------------------
def bucket(n: int, minimum: int) -> int:
  """n rounded up to a multiple of 2**(bit_length(n) - 3): four sizes per octave, <= 25% padding."""
  n = max(n, minimum)
  step = 1 << max(0, n.bit_length() - 3)
  return -(-n // step) * step


@dataclasses.dataclass(frozen=True)
class PackedBatch:
  """One item per row. tokens/mask/positions/segments [B, T] (segment 0 = context, i + 1 = choice i,
  -1 = padding); gather [B, P] = row index whose output predicts target [B, P]; choice [B, P] = the
  target's choice, -1 for padding targets."""
  tokens: np.ndarray
  mask: np.ndarray
  positions: np.ndarray
  segments: np.ndarray
  gather: np.ndarray
  targets: np.ndarray
  choice: np.ndarray


def pack(items: Sequence[EncodedItem], batch_size: int, pad_id: int = 0) -> PackedBatch:
  """Pack up to `batch_size` items (rows past len(items) are padding) into bucketed arrays."""
  if not 0 < len(items) <= batch_size:
    raise ValueError(f"pack: got {len(items)} items for batch_size {batch_size}")
  T = bucket(max(it.packed_len for it in items), MIN_ROW)
  P = bucket(max(it.n_targets for it in items), MIN_TARGETS)
  tokens = np.full((batch_size, T), pad_id, np.int32)
  mask = np.zeros((batch_size, T), np.int32)
  positions = np.zeros((batch_size, T), np.int32)
  segments = np.full((batch_size, T), -1, np.int32)
  gather = np.zeros((batch_size, P), np.int32)
  targets = np.zeros((batch_size, P), np.int32)
  choice = np.full((batch_size, P), -1, np.int32)
  for b, it in enumerate(items):
    n_ctx = len(it.context)
    tokens[b, :n_ctx] = it.context
    positions[b, :n_ctx] = np.arange(n_ctx)
    segments[b, :n_ctx] = 0
    t, p = n_ctx, 0
    for i, cont in enumerate(it.continuations):
      inputs = cont[:-1]
      tokens[b, t:t + len(inputs)] = inputs
      positions[b, t:t + len(inputs)] = n_ctx + np.arange(len(inputs))
      segments[b, t:t + len(inputs)] = i + 1
      # cont[0] is predicted by the last context token, cont[j] by the row slot holding cont[j-1].
      gather[b, p:p + len(cont)] = [n_ctx - 1] + list(range(t, t + len(inputs)))
      targets[b, p:p + len(cont)] = cont
      choice[b, p:p + len(cont)] = i
      t, p = t + len(inputs), p + len(cont)
    mask[b, :t] = 1
  return PackedBatch(tokens, mask, positions, segments, gather, targets, choice)


@functools.partial(jax.jit, static_argnames=("config",))
def packed_logprobs(params, config: ModelConfig, tokens, mask, positions, segments, gather,
                    targets, hook=None) -> jax.Array:
  """log p(target) [B, P] float32 for a PackedBatch (see the module docstring)."""
  seg_q, seg_k = segments[:, :, None], segments[:, None, :]
  pair_mask = (seg_k == 0) | (seg_k == seg_q)  # [B, T, S]: the context, or the query's own choice
  x = model_lib.embed(params, config, tokens)
  hidden, _ = model_lib.scan_blocks(params, config, x, mask, hook=hook, positions=positions,
                                    pair_mask=pair_mask, tokens=tokens)
  picked = jnp.take_along_axis(hidden, gather[:, :, None], axis=1)  # [B, P, D]
  return model_lib.target_logprobs(params, config, picked, targets)


def score(params, config: ModelConfig, items: Sequence[EncodedItem], *, batch_size: int = 8,
          max_len: int | None = None, hook: Any = None, mesh=None,
          on_batch: Callable[[int], None] | None = None) -> ScoreResult:
  """Per-choice log-likelihoods of every item; items longer than `max_len` (default: the config's
  max_seq_len) are skipped and listed in `too_long`. `on_batch(n)` is called after each batch.
  With a `mesh`, each batch's rows are split over its `data` axis. `batching.batch_rows` caps
  the batch at the number of items and rounds it up to a multiple of that axis (the extra rows
  are padding)."""
  max_len = config.max_seq_len if max_len is None else max_len
  too_long = [i for i, it in enumerate(items) if it.max_input_len > max_len]
  skipped = set(too_long)
  for i, it in enumerate(items):
    bad = [t for t in it.context + sum(it.continuations, ()) if not 0 <= t < config.vocab_size]
    if i not in skipped and bad:
      raise ValueError(f"item {i}: token id {bad[0]} is outside the model's vocabulary "
                       f"[0, {config.vocab_size}): tokenizer and checkpoint do not match")
  # Longest first, so each batch holds similar lengths and the first batch meets the largest shapes.
  order = sorted((i for i in range(len(items)) if i not in skipped),
                 key=lambda i: -items[i].packed_len)
  batch_size = batching.batch_rows(batch_size, len(order), mesh)
  place = batching.placer(mesh)
  out: list[list[float] | None] = [None] * len(items)

  def dispatch(idx):
    batch = pack([items[i] for i in idx], batch_size)
    arrays = [place(a) for a in (batch.tokens, batch.mask, batch.positions, batch.segments,
                                 batch.gather, batch.targets)]
    return batch, packed_logprobs(params, config, *arrays, hook)

  def collect(idx, result):
    batch, logp = result
    logp = np.asarray(batching.fetch(logp), dtype=np.float64)
    for row, i in enumerate(idx):
      real = batch.choice[row] >= 0
      out[i] = np.bincount(batch.choice[row][real], weights=logp[row][real],
                           minlength=len(items[i].continuations)).tolist()
    if on_batch is not None:
      on_batch(len(idx))

  batching.pipelined((order[i:i + batch_size] for i in range(0, len(order), batch_size)),
                     dispatch, collect)
  return ScoreResult(out, too_long)


# ---- metrics ----------------------------------------------------------------------------------
def item_record(prompt: Prompt, loglikelihoods: Sequence[float]) -> dict:
  """One items.jsonl record: lm-eval's predictions from the log-likelihoods and choice lengths."""
  lls = np.asarray(loglikelihoods, dtype=np.float64)
  n_chars = [len(c) for c in prompt.choices]
  n_bytes = [len(c.encode("utf-8")) for c in prompt.choices]
  # An empty choice divides by 0 (inf / nan), as it does in lm-eval.
  with np.errstate(divide="ignore", invalid="ignore"):
    pred_norm = int(np.argmax(lls / np.asarray(n_chars, dtype=np.float64)))
    pred_bytes = int(np.argmax(lls / np.asarray(n_bytes, dtype=np.float64)))
  item = prompt.item
  return {"task": item.task, "lang": item.lang, "id": item.id, "loglikelihoods": lls.tolist(),
          "n_chars": n_chars, "n_bytes": n_bytes, "gold": item.gold, "pred": int(np.argmax(lls)),
          "pred_norm": pred_norm, "pred_bytes": pred_bytes}


def mean_stderr(values: Sequence[float]) -> float | None:
  """lm-eval's `mean_stderr`: sample standard deviation / sqrt(n); None when n < 2."""
  n = len(values)
  if n < 2:
    return None
  mu = sum(values) / n
  return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def margin(record: Mapping) -> float:
  """The gold answer's log-likelihood margin (nats): loglik(gold) - the best other choice's. A
  continuous score that moves before the argmax flips (0 with a single choice)."""
  lls = np.asarray(record["loglikelihoods"], np.float64)
  others = np.delete(lls, record["gold"])
  return float(lls[record["gold"]] - others.max()) if others.size else 0.0


def aggregate(records: Sequence[dict]) -> dict:
  """{acc, acc_norm, acc_bytes, margin, n, stderr: {metric: value}} over item records (None
  when empty); margin is the mean gold log-likelihood margin."""
  hits = {m: [float(r[PREDICTION_KEY[m]] == r["gold"]) for r in records] for m in METRICS}
  hits["margin"] = [margin(r) for r in records]
  out: dict[str, Any] = {m: (sum(v) / len(v) if v else None) for m, v in hits.items()}
  out["n"] = len(records)
  out["stderr"] = {m: mean_stderr(v) for m, v in hits.items()}
  return out
