"""The analysis controls and the SAE quality per language against an independent computation:
transformers' Gemma 2 on the same weights (each decoder layer's output through forward hooks,
one unpadded sentence at a time) and numpy. Ours runs batched and padded, so padding, BOS and
the reference norm must all be handled right for the numbers to agree; each test also shows
that the wrong tokens or the wrong scale would give numbers the tolerance does not admit."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from sae import random_saes
from xling_jax.analysis import corpus_stats, sae_quality
from xling_jax.data import corpora
from xling_jax.data.toy_tokenizer import toy_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LAYERS = (1, 3)
LANGS = ("en", "hi", "ml")
N_SENTENCES = 6


@pytest.fixture(scope="module")
def model(toy_params, toy_config, tmp_path_factory):
  """The toy with a BOS embedding 30x the others, as in trained Gemmas (whose BOS residual
  dwarfs every other token's), so that counting BOS would show; and its HF twin."""
  from xling_jax import checkpoints
  params = dict(toy_params, embed=toy_params["embed"].at[toy_config.bos_id].multiply(30.0))
  path = tmp_path_factory.mktemp("bos_heavy_hf")
  checkpoints.save_hf(path, params, toy_config)
  hf = transformers.Gemma2ForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager").eval()
  return params, hf


@pytest.fixture(scope="module")
def case(model, toy_config):
  """(texts, tokenizer, SAEs stacked over LAYERS, numpy SAEs, HF model)."""
  params, hf = model
  tokenizer = toy_tokenizer(toy_config.vocab_size)
  corpus = corpora.load_corpus("embedded", LANGS)
  texts = {lang: corpus.sentences[lang][:N_SENTENCES] for lang in LANGS}
  every = random_saes.calibrated_random_saes(params, toy_config, tokenizer,
                                             corpus.sentences["en"][:16], seed=0)
  saes = jax.tree.map(lambda p: p[np.asarray(LAYERS)], every)
  return texts, tokenizer, saes, jax.tree.map(lambda p: np.asarray(p, np.float64), saes), hf


def _hf_layers(hf, ids, edit=None):
  """(logits [T, V], decoder layer outputs [L, T, D]) of one sentence; `edit(layer, output)`
  may replace a layer's output."""
  outputs = []

  def hook(index):
    def fn(_module, _inputs, out):
      hidden = out[0] if isinstance(out, tuple) else out
      if edit is not None:
        hidden = edit(index, hidden)
      outputs.append(hidden.detach())
      return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
    return fn

  handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(hf.model.layers)]
  with torch.no_grad():
    logits = hf(input_ids=torch.tensor([ids])).logits[0]
  for h in handles:
    h.remove()
  return logits.numpy().astype(np.float64), np.stack([o[0].numpy() for o in outputs]).astype(np.float64)


def _codes(sae, i, x):
  pre = x @ sae.W_enc[i] + sae.b_enc[i]
  return np.where(pre > sae.threshold[i], np.maximum(pre, 0.0), 0.0)


def _reference_residuals(case, skip_bos=True):
  """{lang: [per sentence: [n layers, tokens, D]]} from transformers."""
  texts, tokenizer, _, _, hf = case
  out = {}
  for lang, lines in texts.items():
    out[lang] = []
    for line in lines:
      ids = tokenizer.encode_batch([line], add_bos=True).tokens[0].tolist()
      ids = [t for t in ids if t != tokenizer.pad_id]
      _, layers = _hf_layers(hf, ids)
      out[lang].append(layers[np.asarray(LAYERS), 1 if skip_bos else 0:])
  return out


def _numpy_controls(residuals, np_saes, ref="en"):
  """Per-token resid_norm, activation, direction_activation and sentence_mass [n] per language,
  straight from the definitions."""
  tokens = {lang: np.concatenate(sents, axis=1) for lang, sents in residuals.items()}
  norms = {lang: np.linalg.norm(x, axis=-1) for lang, x in tokens.items()}  # [n, tokens]
  R = norms[ref].mean(-1)  # [n]
  out = {}
  for lang, x in tokens.items():
    n = x.shape[1]
    mass = np.array([_codes(np_saes, i, x[i]).sum() for i in range(len(LAYERS))]) / n
    scaled = x * (R[:, None] / norms[lang])[..., None]
    direction = np.array([_codes(np_saes, i, scaled[i]).sum() for i in range(len(LAYERS))]) / n
    per_sentence = np.mean([[_codes(np_saes, i, s[i]).sum() for i in range(len(LAYERS))]
                            for s in residuals[lang]], axis=0)
    out[lang] = {"resid_norm": norms[lang].mean(-1), "activation": mass,
                 "direction_activation": direction, "sentence_mass": per_sentence}
  return out, R


@pytest.fixture(scope="module")
def ours(case, model, toy_config):
  texts, tokenizer, saes, _, _ = case
  # Batched, padded to a bucket of 16 and shorter than the corpus: padding and filler rows.
  return corpus_stats.corpus_stats(model[0], toy_config, saes, tokenizer, texts, batch_size=4,
                                   bucket=16, layers=LAYERS, direction_ref="en",
                                   show_progress=False)


def test_controls_equal_numpy_on_transformers_residuals(case, ours):
  expected, R = _numpy_controls(_reference_residuals(case), case[3])
  np.testing.assert_allclose(ours.direction_norms, R, rtol=2e-5)
  for lang in LANGS:
    for name, values in expected[lang].items():
      np.testing.assert_allclose(ours.metric(name, lang), values, rtol=2e-4, err_msg=f"{lang} {name}")


def test_bos_in_the_controls_would_be_caught(case, ours):
  # BOS's residual is many times the others': counting it moves every control far past the
  # tolerance above, so the equality test pins the statistic tokens.
  with_bos, R_bos = _numpy_controls(_reference_residuals(case, skip_bos=False), case[3])
  assert np.all(np.abs(R_bos / np.asarray(ours.direction_norms) - 1) > 1e-2)
  for lang in LANGS:
    for name in ("resid_norm", "direction_activation", "sentence_mass"):
      assert np.all(np.abs(with_bos[lang][name] / ours.metric(name, lang) - 1) > 1e-3), name


def test_direction_control_is_at_the_reference_scale(case, ours):
  # The same codes at another language's norm, or at unit norm, are not the control: it is
  # the SAE's code mass with every token at the reference's mean norm R_l.
  residuals = _reference_residuals(case)
  expected, R = _numpy_controls(residuals, case[3])
  other, _ = _numpy_controls(residuals, case[3], ref="ml")
  for lang in ("hi", "ml"):
    got = ours.metric("direction_activation", lang)
    np.testing.assert_allclose(got, expected[lang]["direction_activation"], rtol=2e-4)
    assert np.all(np.abs(other[lang]["direction_activation"] / got - 1) > 1e-3)
  # The reference itself: rescaling to its own mean norm changes its code mass only slightly.
  np.testing.assert_allclose(ours.metric("direction_activation", "en"),
                             ours.metric("activation", "en"), rtol=0.2)


def test_sae_quality_equals_transformers_with_the_reconstruction_spliced_in(
    case, model, toy_config):
  texts, tokenizer, saes, np_saes, hf = case
  got = sae_quality.corpus_quality(model[0], toy_config, saes, tokenizer, texts, layers=LAYERS,
                                   sentences=4, batch_size=3, bucket=16, show_progress=False)
  assert got["sentences"] == 4

  def reconstruct(i, x):
    return _codes(np_saes, i, x) @ np_saes.W_dec[i] + np_saes.b_dec[i]

  for lang in LANGS:
    ids = [[t for t in tokenizer.encode_batch([s], add_bos=True).tokens[0].tolist()
            if t != tokenizer.pad_id] for s in texts[lang][:4]]

    def nll(edit=None):
      total, count = 0.0, 0
      for seq in ids:
        logits, _ = _hf_layers(hf, seq, edit)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        total -= logp[np.arange(len(seq) - 1), seq[1:]].sum()
        count += len(seq) - 1
      return total / count

    clean = nll()
    np.testing.assert_allclose(got["clean_lm_loss"][lang], clean, rtol=1e-5)
    for i, layer in enumerate(LAYERS):
      def splice(index, hidden, i=i, layer=layer):
        if index != layer:
          return hidden
        x = hidden[0].numpy().astype(np.float64)
        x[1:] = reconstruct(i, x[1:])  # every position but BOS
        return torch.tensor(x[None], dtype=hidden.dtype)
      np.testing.assert_allclose(got["delta_lm_loss"][lang][i], nll(splice) - clean, atol=2e-5,
                                 rtol=1e-3, err_msg=f"{lang} L{layer}")
    x = np.concatenate([_hf_layers(hf, seq)[1][np.asarray(LAYERS), 1:] for seq in ids],
                       axis=1)  # [n layers, statistic tokens, D]
    for i in range(len(LAYERS)):
      err = ((x[i] - reconstruct(i, x[i])) ** 2).sum()
      var = ((x[i] - x[i].mean(0)) ** 2).sum()
      np.testing.assert_allclose(got["fvu"][lang][i], err / var, rtol=1e-4)
      # Around zero instead of the language's mean, the FVU would be another number.
      assert abs(err / (x[i] ** 2).sum() - got["fvu"][lang][i]) > 1e-3 * got["fvu"][lang][i]


def test_quality_sentences_larger_than_the_corpus_fail_before_compute():
  from xling_jax.analysis import run
  with pytest.raises(ValueError, match="quality_sentences=50: the corpus has 42 sentences"):
    run.check(run.AnalysisConfig(quality_sentences=50), 4, ("en", "hi"), n_sentences=42)
  assert run.check(run.AnalysisConfig(), 4, ("en", "hi"), n_sentences=42).quality_sentences == 42
  assert run.check(run.AnalysisConfig(quality_sentences=0), 4, ("en",), 42).quality_sentences == 0
