"""Streaming activation statistics against a plain numpy reference, and their invariances."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from sae import jumprelu
from xling_jax import activations, disparity, model as model_lib, toy
from xling_jax.activations import METRICS
from xling_jax.toy_tokenizer import toy_tokenizer

from tests.conftest import run_on_fake_devices

LANGS = ("en", "hi", "zh")


@pytest.fixture(scope="module")
def setup():
  from xling_jax.corpora import embedded_sample
  params, config = toy.toy_model(seed=0)
  tok = toy_tokenizer(config.vocab_size)
  corpus = embedded_sample().subset(LANGS).head(9)
  saes = toy.calibrated_random_saes(params, config, tok, corpus.sentences["en"], seed=0)
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
  }, feature_counts, int(n)


def test_streaming_stats_equal_numpy_loops(setup):
  params, config, tok, saes, sentences = setup
  stats = activations.corpus_stats(params, config, saes, tok, sentences, batch_size=4,
                                   show_progress=False)
  for lang in LANGS:
    ref, counts, n_tokens = _numpy_reference(params, config, tok, saes, sentences[lang])
    assert stats.n_tokens(lang) == n_tokens
    assert stats.n_sentences(lang) == len(sentences[lang])
    for name in METRICS:
      np.testing.assert_allclose(stats.metric(name, lang), ref[name], rtol=2e-5,
                                 err_msg=f"{lang} {name}")
    np.testing.assert_array_equal(stats.per_language[lang].feature_counts, counts)
    assert 0.02 < ref["l0"].mean() / saes.d_sae < 0.4  # a realistic fraction fires


@pytest.mark.parametrize("batch_size,bucket,fused", [(1, 64, True), (7, None, True),
                                                     (32, 64, True), (7, 64, False)])
def test_batch_size_bucketing_and_fusion_do_not_change_numbers(setup, batch_size, bucket, fused):
  params, config, tok, saes, sentences = setup
  base = activations.corpus_stats(params, config, saes, tok, sentences, batch_size=4,
                                  show_progress=False)
  other = activations.corpus_stats(params, config, saes, tok, sentences, batch_size=batch_size,
                                   bucket=bucket, fused=fused, show_progress=False)
  for lang in LANGS:
    for name in METRICS:
      np.testing.assert_allclose(other.metric(name, lang), base.metric(name, lang), rtol=1e-5)
    np.testing.assert_array_equal(other.per_language[lang].feature_counts,
                                  base.per_language[lang].feature_counts)


def test_layer_activations_is_differentiable_and_matches_stats(setup):
  params, config, tok, saes, sentences = setup
  enc = tok.encode_batch(list(sentences["hi"][:4]), bucket=16)
  acts = activations.layer_activations(params, config, saes, enc.tokens, enc.mask)
  stats = activations.corpus_stats(params, config, saes, tok, {"hi": sentences["hi"][:4]},
                                   show_progress=False)
  np.testing.assert_allclose(acts, stats.metric("activation", "hi"), rtol=1e-5)
  sub = jax.tree.map(lambda a: a[np.array([1, 3])], saes)
  np.testing.assert_allclose(
      activations.layer_activations(params, config, sub, enc.tokens, enc.mask, layers=(1, 3)),
      np.asarray(acts)[[1, 3]], rtol=1e-6)
  grad = jax.grad(lambda p: activations.layer_activations(
      p, config, sub, enc.tokens, enc.mask, layers=(1, 3)).sum())(params)
  assert float(np.abs(np.asarray(grad["layers"]["up"])).sum()) > 0


def test_empty_corpus_is_an_error(setup):
  params, config, tok, saes, _ = setup
  with pytest.raises(ValueError, match="no sentences"):
    activations.language_sums(params, config, saes, tok, [])


_MESH_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
from xling_jax import activations, sharding, toy
from xling_jax.corpora import embedded_sample
from xling_jax.toy_tokenizer import toy_tokenizer
assert len(jax.devices()) == 8, jax.devices()
params, config = toy.toy_model(seed=0)
tok = toy_tokenizer(config.vocab_size)
sents = embedded_sample().subset(("en", "ml")).head(10).sentences
saes = toy.calibrated_random_saes(params, config, tok, sents["en"], seed=0)
out = {}
single = activations.corpus_stats(params, config, saes, tok, sents, batch_size=8, show_progress=False)
out["single"] = {l: single.metric("activation", l).tolist() for l in sents}
out["single_counts"] = {l: single.per_language[l].feature_counts.sum() for l in sents}
mesh = sharding.make_mesh((2, 4))
for mode in sharding.PARAM_MODES:
  p = sharding.shard_params(params, mesh, mode)
  s = activations.corpus_stats(p, config, saes, tok, sents, batch_size=8, mesh=mesh, show_progress=False)
  out[mode] = {l: s.metric("activation", l).tolist() for l in sents}
  out[mode + "_counts"] = {l: s.per_language[l].feature_counts.sum() for l in sents}
  out[mode + "_spec"] = str(p["layers"]["q"].sharding.spec)
print(json.dumps(out))
"""


def test_mesh_of_8_fake_devices_matches_one_device():
  out = run_on_fake_devices(_MESH_SCRIPT)
  assert "model" in out["tensor_spec"] and "model" in out["fsdp_spec"]
  for mode in ("replicated", "fsdp", "tensor"):
    for lang in out["single"]:
      np.testing.assert_allclose(out[mode][lang], out["single"][lang], rtol=1e-5, err_msg=mode)
      assert out[mode + "_counts"][lang] == out["single_counts"][lang]


# --------------------------------------------------------------------------- disparity


def test_gap_and_band_summary_definitions():
  values = {"en": np.array([10.0, 20.0, 40.0]), "hi": np.array([5.0, 20.0, 50.0]),
            "ml": np.array([8.0, 10.0, 40.0])}
  gaps = disparity.gap_pct(values, "en")
  np.testing.assert_allclose(gaps["hi"], [50.0, 0.0, -25.0])
  np.testing.assert_allclose(gaps["ml"], [20.0, 50.0, 0.0])
  summary = disparity.band_summary({k: v for k, v in gaps.items() if k != "en"},
                                   {"early": (0, 1), "deep": (2, 2)}, ["hi", "ml"])
  assert summary["early"]["per_language"]["hi"] == {"mean": 25.0, "max": 50.0}
  assert summary["early"]["group_max"] == 50.0
  assert summary["early"]["group_mean"] == pytest.approx((25.0 + 35.0) / 2)
  assert summary["deep"]["group_max"] == 0.0


def test_bands_parsing_and_defaults():
  assert disparity.default_bands(26) == {"early": (0, 8), "middle": (9, 17), "deep": (18, 25)}
  assert disparity.default_bands(4) == {"early": (0, 1), "middle": (2, 2), "deep": (3, 3)}
  assert disparity.parse_bands("a:0-3,b:4-5") == {"a": (0, 3), "b": (4, 5)}
  with pytest.raises(ValueError, match="NAME:FIRST-LAST"):
    disparity.parse_bands("early0-8")


def test_bootstrap_brackets_the_estimate_and_is_paired(setup):
  params, config, tok, saes, sentences = setup
  same = {"en": sentences["en"], "hi": sentences["hi"], "copy": sentences["en"]}
  stats = activations.corpus_stats(params, config, saes, tok, same, show_progress=False)
  ci = disparity.bootstrap(stats, ref="en", bands={"all": (0, 3)}, group=["hi"], n_resamples=200)
  point = disparity.gap_pct({l: stats.metric("activation", l) for l in same}, "en")
  for layer in range(config.n_layers):
    assert ci.gap["hi"]["lo"][layer] <= point["hi"][layer] <= ci.gap["hi"]["hi"][layer]
  # Paired resampling: a language identical to the reference has a zero-width gap interval.
  np.testing.assert_allclose(ci.gap["copy"]["lo"], 0.0, atol=1e-9)
  np.testing.assert_allclose(ci.gap["copy"]["hi"], 0.0, atol=1e-9)


def test_top_features_and_overlap(setup):
  params, config, tok, saes, sentences = setup
  stats = activations.corpus_stats(params, config, saes, tok, sentences, show_progress=False)
  top = disparity.top_features(stats, k=5, neuronpedia="gemmascope-res-16k")
  assert top["en"][0]["overlap_with_ref"] == 1.0
  rates = disparity.firing_rates(stats, "hi")
  first = top["hi"][2]
  assert first["rates"][0] == pytest.approx(rates[2].max())
  assert first["neuronpedia"][0] == f"gemma-2-2b/2-gemmascope-res-16k/{first['features'][0]}"
