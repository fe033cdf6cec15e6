"""Harvested training activations: the shuffling buffer serves exactly the requested layers'
residuals at statistic tokens (no BOS, no padding), each token once per epoch, as a pure function
of the batch index; bad requests fail before any compute; a toy run writes SAEs that load."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sae import trees
from sae.train import harvest, loop, sources
from sae.train.config import SAETrainConfig
from xling_jax.data import corpora
from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.model import transformer as model_lib

LAYERS = (3, 1)


@pytest.fixture(scope="module")
def rows(toy_config):
  corpus = corpora.load_corpus("embedded", ["en", "hi", "zh"], max_sentences=6)
  return harvest.tokenize(corpus.sentences, toy_tokenizer(toy_config.vocab_size), max_len=48)


def _source(toy_params, toy_config, rows, **kw):
  kw = {"buffer_tokens": 64, "sentences_per_forward": 4, "bucket": 16, "seed": 3, **kw}
  return harvest.HarvestSource(toy_params, toy_config, rows, LAYERS, 16, name="toy corpus",
                               model="toy", **kw)


def _expected(toy_params, toy_config, rows) -> np.ndarray:
  """Residuals of LAYERS at every non-BOS token [n, L, d], from one right-padded forward."""
  width = max(len(r) for r in rows)
  tokens = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for b, r in enumerate(rows):
    tokens[b, :len(r)], mask[b, :len(r)] = r, 1
  resid = np.asarray(model_lib.jit_forward(toy_params, toy_config, jnp.asarray(tokens),
                                           jnp.asarray(mask), return_logits=False).residuals)
  keep = mask.astype(bool) & (tokens != toy_config.bos_id)
  return resid[list(LAYERS)][:, keep].transpose(1, 0, 2)


def _is_sub_multiset(got: np.ndarray, expected: np.ndarray, atol: float) -> bool:
  """Whether each row of `got` matches a distinct row of `expected` (up to atol), compared by
  a random projection: tokens with the same prefix have equal residuals, so rows repeat."""
  v = np.random.default_rng(0).standard_normal(got.shape[1])
  want = np.sort(expected @ v)
  used = np.zeros(len(want), bool)
  for key in np.sort(got @ v):
    candidates = np.flatnonzero(~used & (np.abs(want - key) <= atol))
    if not candidates.size:
      return False
    used[candidates[0]] = True
  return True


def test_batches_are_the_requested_layers_at_statistic_tokens_once_per_epoch(
    toy_params, toy_config, rows):
  source = _source(toy_params, toy_config, rows)
  expected = _expected(toy_params, toy_config, rows)
  assert source.n_tokens == len(expected) == sum(len(r) - 1 for r in rows)
  n_batches = source.n_tokens // 16
  got = np.concatenate([source.batch(i) for i in range(n_batches)], axis=1)  # [L, n, d]
  assert got.shape == (2, n_batches * 16, toy_config.d_model)
  # Each served row is one token's residuals at both layers, and no token is served twice
  # within the epoch (padded and batched differently from the reference: rounding apart).
  flat_expected = expected.reshape(len(expected), -1)
  flat_got = got.transpose(1, 0, 2).reshape(n_batches * 16, -1)
  atol = 1e-5 * np.abs(flat_expected).sum(axis=1).max()
  assert _is_sub_multiset(flat_got, flat_expected, atol)
  assert not _is_sub_multiset(flat_got + 1e3 * atol, flat_expected, atol)  # the check bites
  # Shuffled: consecutive served tokens are not consecutive tokens of one sentence.
  projection = flat_got @ np.random.default_rng(1).standard_normal(flat_got.shape[1])
  in_order = flat_expected[:len(flat_got)] @ np.random.default_rng(1).standard_normal(
      flat_got.shape[1])
  assert not np.allclose(projection, in_order)


def test_batch_i_is_a_pure_function_of_i(toy_params, toy_config, rows):
  """A fresh source (a resumed run) serves the same batches, in any order, across chunk and
  epoch boundaries."""
  first = _source(toy_params, toy_config, rows, epochs=3)
  second_epoch = first.n_tokens // 16 + 1
  order = [0, 7, 3, 7, second_epoch, 1]
  served = {i: first.batch(i) for i in order}
  second = _source(toy_params, toy_config, rows, epochs=3)
  for i in reversed(order):
    np.testing.assert_array_equal(second.batch(i), served[i])
  other_seed = _source(toy_params, toy_config, rows, epochs=3, seed=4)
  assert not np.array_equal(other_seed.batch(0), served[0])


def test_bad_requests_fail_before_any_compute(toy_params, toy_config, rows):
  with pytest.raises(ValueError, match=r"layers \[1, 9\]: the model has 4 layers \(0\.\.3\)"):
    harvest.HarvestSource(toy_params, toy_config, rows, (1, 9), 16, name="c", model="toy")
  source = _source(toy_params, toy_config, rows)
  config = SAETrainConfig(width=32, steps=10_000, batch_size=16)
  with pytest.raises(ValueError, match=rf"toy corpus has {source.n_tokens:,} tokens, but "
                                       r"10,000 training steps"):
    sources.check_enough(source, config.steps + config.eval_batches,
                         "10,000 training steps + 4 evaluation batches")


def test_a_toy_run_writes_gemma_scope2_saes_that_load(tmp_path, toy_params, toy_config, rows):
  source = _source(toy_params, toy_config, rows, epochs=4)
  config = SAETrainConfig(width=32, steps=12, batch_size=16, lr=1e-3, sparsity="quadratic",
                          target_l0=5, log_every=4, save_every=6, eval_batches=2, norm_batches=2)
  result = loop.train(source, config, tmp_path / "out", echo=lambda _: None, progress=False)
  assert [d.name for d in result.sae_dirs] == ["layer_3_width_32_l0_5", "layer_1_width_32_l0_5"]
  loaded = trees.load_layers(tmp_path / "out", [3, 1], width=32, l0=5, d_in=toy_config.d_model)
  np.testing.assert_array_equal(np.asarray(loaded.W_enc), np.asarray(result.saes.W_enc))
  reports = sorted(p.name for p in (tmp_path / "out" / loop.REPORTS).iterdir())
  assert reports == ["layer_1.json", "layer_1.png", "layer_3.json", "layer_3.png"]
