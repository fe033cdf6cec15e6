"""Streaming activation statistics against a plain numpy reference, and their invariances."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from sae import jumprelu, random_saes
from tests import helpers
from tests.conftest import run_on_fake_devices
from tests.helpers import synthetic_stats
from xling_jax.analysis import corpus_stats, sae_stats
from xling_jax.analysis.corpus_stats import METRICS
from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.model import transformer as model_lib

LANGS = ("en", "hi", "zh")


@pytest.fixture(scope="module")
def setup():
  from xling_jax.data.corpora import embedded_sample
  params, config = helpers.toy_model(seed=0)
  tok = toy_tokenizer(config.vocab_size)
  corpus = embedded_sample().subset(LANGS).head(9)
  saes = random_saes.calibrated_random_saes(params, config, tok, corpus.sentences["en"], seed=0)
  return params, config, tok, saes, corpus.sentences


def _numpy_reference(params, config, tok, saes, sentences):
  """Every metric by explicit loops: one unpadded sentence at a time, one token at a time."""
  W = {k: np.asarray(getattr(saes, k), np.float64) for k in jumprelu.PARAM_NAMES}
  L = config.n_layers
  per_sentence = {k: [] for k in ("act", "l0", "norm", "distinct", "n")}
  feature_counts = np.zeros((L, W["W_enc"].shape[-1]))
  for text in sentences:
    ids = [config.bos_id] + tok.encode(text)
    resid = np.asarray(model_lib.jit_forward(params, config, np.asarray([ids]),
                                             return_logits=False).residuals, np.float64)[:, 0]
    act, l0, norm, fired = np.zeros(L), np.zeros(L), np.zeros(L), np.zeros((L, W["W_enc"].shape[-1]))
    for layer in range(L):
      for t in range(1, len(ids)):  # position 0 is BOS: excluded
        x = resid[layer, t]
        pre = x @ W["W_enc"][layer] + W["b_enc"][layer]
        f = np.where(pre > W["threshold"][layer], np.maximum(pre, 0), 0.0)
        act[layer] += f.sum()
        l0[layer] += (f > 0).sum()
        norm[layer] += np.linalg.norm(x)
        fired[layer] += f > 0
    per_sentence["act"].append(act); per_sentence["l0"].append(l0)
    per_sentence["norm"].append(norm); per_sentence["distinct"].append((fired > 0).sum(-1))
    per_sentence["n"].append(len(ids) - 1)
    feature_counts += fired
  s = {k: np.asarray(v, np.float64) for k, v in per_sentence.items()}
  n = s["n"].sum()
  return {
      "activation": s["act"].sum(0) / n, "l0": s["l0"].sum(0) / n,
      "mean_active": s["act"].sum(0) / s["l0"].sum(0), "resid_norm": s["norm"].sum(0) / n,
      "sentence_activation": (s["act"] / s["n"][:, None]).mean(0),
      "sentence_distinct_features": s["distinct"].mean(0),
      "sentence_mass": s["act"].mean(0),
  }, feature_counts, int(n)


@pytest.mark.slow
def test_streaming_stats_equal_numpy_loops(setup):
  params, config, tok, saes, sentences = setup
  stats = corpus_stats.corpus_stats(params, config, saes, tok, sentences, batch_size=4,
                                   show_progress=False)
  for lang in LANGS:
    ref, counts, n_tokens = _numpy_reference(params, config, tok, saes, sentences[lang])
    assert stats.n_tokens(lang) == n_tokens
    assert stats.n_sentences(lang) == len(sentences[lang])
    assert set(stats.metric_names) == set(METRICS) - {"direction_activation"} == set(ref)
    for name in stats.metric_names:
      np.testing.assert_allclose(stats.metric(name, lang), ref[name], rtol=2e-5,
                                 err_msg=f"{lang} {name}")
    np.testing.assert_array_equal(stats.per_language[lang].feature_counts, counts)
    assert 0.02 < ref["l0"].mean() / saes.d_sae < 0.4  # a realistic fraction fires


@pytest.mark.parametrize("batch_size,bucket,fused", [
    (1, 64, True), pytest.param(7, None, True, marks=pytest.mark.slow),  # a compile per length
    (32, 64, True), (7, 64, False)])
def test_batch_size_bucketing_and_fusion_do_not_change_numbers(setup, batch_size, bucket, fused):
  params, config, tok, saes, sentences = setup
  base = corpus_stats.corpus_stats(params, config, saes, tok, sentences, batch_size=4,
                                  show_progress=False, direction_ref="en")
  other = corpus_stats.corpus_stats(params, config, saes, tok, sentences, batch_size=batch_size,
                                   bucket=bucket, fused=fused, show_progress=False,
                                   direction_ref="en")
  assert base.metric_names == METRICS
  np.testing.assert_allclose(other.direction_norms, base.direction_norms, rtol=1e-6)
  for lang in LANGS:
    for name in METRICS:
      np.testing.assert_allclose(other.metric(name, lang), base.metric(name, lang), rtol=1e-5)
    np.testing.assert_array_equal(other.per_language[lang].feature_counts,
                                  base.per_language[lang].feature_counts)


def test_layer_activations_is_differentiable_and_matches_stats(setup):
  params, config, tok, saes, sentences = setup
  enc = tok.encode_batch(list(sentences["hi"][:4]), bucket=16)
  acts = sae_stats.layer_activations(params, config, saes, enc.tokens, enc.mask)
  stats = corpus_stats.corpus_stats(params, config, saes, tok, {"hi": sentences["hi"][:4]},
                                   show_progress=False)
  np.testing.assert_allclose(acts, stats.metric("activation", "hi"), rtol=1e-5)
  sub = jax.tree.map(lambda a: a[np.array([1, 3])], saes)
  np.testing.assert_allclose(
      sae_stats.layer_activations(params, config, sub, enc.tokens, enc.mask, layers=(1, 3)),
      np.asarray(acts)[[1, 3]], rtol=1e-6)
  grad = jax.grad(lambda p: sae_stats.layer_activations(
      p, config, sub, enc.tokens, enc.mask, layers=(1, 3)).sum())(params)
  assert float(np.abs(np.asarray(grad["layers"]["up"])).sum()) > 0


def test_empty_corpus_is_an_error(setup):
  params, config, tok, saes, _ = setup
  with pytest.raises(ValueError, match="no sentences"):
    corpus_stats.language_sums(params, config, saes, tok, [])


def test_weighted_metrics_count_a_sentence_as_often_as_it_is_repeated():
  """The one implementation of the six formulas: weights = bootstrap multiplicities equal the
  metric of the corpus with each sentence repeated that many times (weights 1 = the corpus)."""
  stats = synthetic_stats(9, langs=("hi",))
  sums = stats.per_language["hi"]
  counts = np.random.default_rng(0).multinomial(len(sums.n_tokens),
                                                np.full(len(sums.n_tokens), 1 / len(sums.n_tokens)))
  repeat = lambda a: np.repeat(a, counts, axis=0)
  repeated = corpus_stats.LanguageSums({k: repeat(v) for k, v in sums.rows.items()},
                                      repeat(sums.n_tokens), sums.feature_counts)
  for name in METRICS:
    np.testing.assert_allclose(corpus_stats.weighted_metric(sums, name, counts[None])[0],
                               corpus_stats.CorpusStats(("hi",), stats.layers,
                                                       {"hi": repeated}).metric(name, "hi"),
                               rtol=1e-12, err_msg=name)
  with pytest.raises(ValueError, match="unknown metric 'gap'"):
    stats.metric("gap", "hi")


def test_non_finite_residuals_are_an_error_not_a_report(setup):
  """NaN weights in one block: NaN residuals from there on, never statistics of 0.0 / n/a."""
  params, config, tok, saes, sentences = setup
  broken = jax.tree.map(lambda x: x, params)
  broken["layers"]["up"] = params["layers"]["up"].at[2].set(np.nan)
  with pytest.raises(FloatingPointError, match=r"'en': .*NaN/inf at layer\(s\) \[2, 3\]"):
    corpus_stats.corpus_stats(broken, config, saes, tok, {"en": sentences["en"][:2]},
                             show_progress=False)


_MESH_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
from sae import random_saes
from xling_jax.analysis import corpus_stats
from xling_jax.data.corpora import embedded_sample
from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.model import presets, transformer
from xling_jax.runtime import sharding
assert len(jax.devices()) == 8, jax.devices()
config = presets.toy()
params = transformer.init_params(config, jax.random.PRNGKey(0))
tok = toy_tokenizer(config.vocab_size)
sents = embedded_sample().subset(("en", "ml")).head(10).sentences
saes = random_saes.calibrated_random_saes(params, config, tok, sents["en"], seed=0)
out = {}
single = corpus_stats.corpus_stats(params, config, saes, tok, sents, batch_size=8, show_progress=False)
out["single"] = {l: single.metric("activation", l).tolist() for l in sents}
out["single_counts"] = {l: single.per_language[l].feature_counts.sum() for l in sents}
mesh = sharding.make_mesh((2, 4))
for mode in sharding.PARAM_MODES:
  p = sharding.shard_params(params, mesh, mode)
  s = corpus_stats.corpus_stats(p, config, saes, tok, sents, batch_size=8, mesh=mesh, show_progress=False)
  out[mode] = {l: s.metric("activation", l).tolist() for l in sents}
  out[mode + "_counts"] = {l: s.per_language[l].feature_counts.sum() for l in sents}
  out[mode + "_spec"] = str(p["layers"]["q"].sharding.spec)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mesh_of_8_fake_devices_matches_one_device():
  out = run_on_fake_devices(_MESH_SCRIPT)
  assert "model" in out["tensor_spec"] and "model" in out["fsdp_spec"]
  for mode in ("replicated", "fsdp", "tensor"):
    for lang in out["single"]:
      np.testing.assert_allclose(out[mode][lang], out["single"][lang], rtol=1e-5, err_msg=mode)
      assert out[mode + "_counts"][lang] == out["single_counts"][lang]


def test_a_subset_of_layers_equals_those_layers_of_the_full_analysis(setup):
  """SAEs for some layers only (as bin.train_sae makes them): each analysed layer's sums equal
  the every-layer run's at that layer."""
  params, config, tok, saes, sentences = setup
  sentences = {lang: sentences[lang][:6] for lang in ("en", "hi")}
  full = corpus_stats.corpus_stats(params, config, saes, tok, sentences, batch_size=4,
                                  show_progress=False, direction_ref="en")
  layers = (1, 3)
  subset = jax.tree.map(lambda x: x[np.asarray(layers)], saes)
  part = corpus_stats.corpus_stats(params, config, subset, tok, sentences, batch_size=4,
                                  show_progress=False, layers=layers, direction_ref="en")
  assert part.layers == layers
  for lang in sentences:
    np.testing.assert_allclose(part.per_language[lang].feature_counts,
                               full.per_language[lang].feature_counts[list(layers)])
    for name in corpus_stats.METRICS:
      np.testing.assert_allclose(part.metric(name, lang), full.metric(name, lang)[list(layers)],
                                 rtol=1e-5)
  with pytest.raises(ValueError, match="increasing layers"):
    corpus_stats.corpus_stats(params, config, subset, tok, sentences, layers=(3, 1))


def test_the_reference_run_in_two_halves_joins_to_its_whole_corpus_sums(setup):
  """The top-k null splits the reference's sentences in two runs: joined, they are the one
  run's sums row by row, and the halves' feature counts add up to the whole's."""
  params, config, tok, saes, sentences = setup
  sentences = {lang: sentences[lang][:7] for lang in ("en", "hi")}  # an odd count
  halves = corpus_stats.corpus_stats(params, config, saes, tok, sentences, batch_size=4,
                                     show_progress=False, direction_ref="en")
  whole = corpus_stats.corpus_stats(params, config, saes, tok, sentences, batch_size=4,
                                    show_progress=False)
  joined, one = halves.per_language["en"], whole.per_language["en"]
  np.testing.assert_array_equal(joined.n_tokens, one.n_tokens)
  for key, rows in one.rows.items():
    np.testing.assert_allclose(joined.rows[key], rows, rtol=1e-5, err_msg=key)
  np.testing.assert_array_equal(joined.feature_counts, one.feature_counts)
  first, second = halves.half_counts
  np.testing.assert_array_equal(first + second, one.feature_counts)
  assert first.sum() > 0 and second.sum() > 0
  assert joined.truncated == one.truncated and sorted(joined.pooled) == sorted(one.pooled)
