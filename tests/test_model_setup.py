"""model_setup.load_saes: SAEs from a tree, a hub id or random, for the layers asked, checked."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from sae import jumprelu, releases, trees
from xling_jax import model_setup
from xling_jax.model import presets
from xling_jax.runtime.errors import NonFiniteError


@pytest.fixture(scope="module")
def toy_setup():
  return model_setup.load_model()


def test_saes_from_a_gemma_scope2_tree_are_those_of_the_layers_asked(tmp_path, toy_setup):
  d = toy_setup.config.d_model
  stacked = jumprelu.random_params(jax.random.PRNGKey(5), d, 32, n_layers=2)
  trees.save_gemma_scope2_layers(tmp_path, stacked, layers=(1, 3), l0s=20)
  saes = model_setup.load_saes(toy_setup, tmp_path, (3, 1), width=32, l0=20)
  assert saes.layers == (3, 1) and str(tmp_path) in saes.description
  for name in jumprelu.PARAM_NAMES:
    np.testing.assert_array_equal(np.asarray(getattr(saes.params, name)),
                                  np.asarray(getattr(stacked, name))[::-1])


def test_saes_of_a_release_carry_its_neuronpedia_set(tmp_path, toy_setup, monkeypatch):
  """The rule bin.analyze had: Gemma Scope SAEs (any tree or hub id) of the gemma2_2b model
  at width 16k get Neuronpedia ids; other models, widths and random SAEs do not."""
  gemma2_2b = dataclasses.replace(toy_setup, config=presets.gemma2_2b(), is_toy=False)
  # Real 16k SAEs of a 2304-wide model are 300 MB: the tree's reader is not the point here.
  small = jumprelu.random_params(jax.random.PRNGKey(0), 8, 16, n_layers=1)
  with monkeypatch.context() as patch:
    patch.setattr(trees, "load_layers", lambda *args, **kwargs: small)
    assert model_setup.load_saes(gemma2_2b, tmp_path, (0,)).neuronpedia == (
        releases.NeuronpediaSet("gemma-2-2b", "gemmascope-res-16k"))
    assert model_setup.load_saes(gemma2_2b, tmp_path, (0,), width="65k").neuronpedia is None
  d = toy_setup.config.d_model
  trees.save_layers_tree(tmp_path / "toy", jumprelu.random_params(jax.random.PRNGKey(1), d, 16,
                                                                  n_layers=1), width=16, l0s=7)
  assert model_setup.load_saes(toy_setup, tmp_path / "toy", (0,), width=16,
                               l0=7).neuronpedia is None
  assert model_setup.load_saes(toy_setup, "random", (0,), width=16).neuronpedia is None


def test_random_saes_of_a_layer_subset_are_those_layers_of_the_whole_stack(toy_setup):
  every = model_setup.load_saes(toy_setup)
  assert every.layers == tuple(range(toy_setup.config.n_layers))
  assert every.params.d_sae == 256 and every.description == "random SAEs (width 256, seed 0)"
  some = model_setup.load_saes(toy_setup, "random", (2,), width=64)
  assert some.params.d_sae == 64 and some.params.W_enc.shape[0] == 1
  wide = model_setup.load_saes(toy_setup, "random", width=64)
  np.testing.assert_array_equal(np.asarray(some.params.W_enc[0]), np.asarray(wide.params.W_enc[2]))


def test_bad_sae_sources_and_layers_are_clear_errors(tmp_path, toy_setup):
  real = dataclasses.replace(toy_setup, is_toy=False)
  with pytest.raises(ValueError, match="--sae_dir: a checkpoint needs SAEs for its layers"):
    model_setup.load_saes(real, None, what="--sae_dir")
  with pytest.raises(ValueError, match=r"SAE layers \[1, 4\]: expected layers of the model, 0..3"):
    model_setup.load_saes(toy_setup, "random", (1, 4))
  with pytest.raises(FileNotFoundError, match="saes=./no-such-saes: no such file or directory"):
    model_setup.load_saes(toy_setup, "./no-such-saes")


def test_non_finite_sae_weights_are_an_error():
  saes = jumprelu.random_params(jax.random.PRNGKey(0), 8, 16, n_layers=3)
  model_setup.check_finite_saes(saes, (4, 5, 6), "--sae_dir=x")
  broken = dataclasses.replace(saes, W_enc=saes.W_enc.at[1, 2, 3].set(np.nan))
  with pytest.raises(NonFiniteError, match=r"--sae_dir=x: the SAEs of layer\(s\) \[5\] hold NaN"):
    model_setup.check_finite_saes(broken, (4, 5, 6), "--sae_dir=x")


def test_select_stacks_the_asked_layers_in_the_asked_order(toy_setup):
  saes = model_setup.load_saes(toy_setup, "random", (1, 2, 3), width=32)
  picked = saes.select((3, 1))
  np.testing.assert_array_equal(np.asarray(picked.W_enc),
                                np.asarray(saes.params.W_enc)[[2, 0]])
  with pytest.raises(ValueError, match=r"the SAEs cover layers \[1, 2, 3\], not \[0\]"):
    saes.select((0, 1))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["toy_gemma4", "toy_gemma4_moe"])
def test_notebook_api_on_a_toy_gemma4(preset, tmp_path):
  """xj.load_model(config=...) -> load_saes -> analyze -> forward -> finetune, as a notebook
  runs them, on the dense toy Gemma 4 (per-layer embeddings, KV sharing) and the MoE toy."""
  import xling_jax as xj
  model = xj.load_model(config=preset)
  assert model.is_toy and model.config == presets.preset(preset)
  corpus = xj.load_corpus("embedded", ["en", "hi"], max_sentences=6)
  saes = xj.load_saes(model)
  result = xj.analyze(model, saes, corpus, xj.AnalysisConfig(bootstrap=0), show_progress=False)
  assert result.gaps["hi"].shape == (model.config.n_layers,)
  enc = model.tokenizer.encode_batch(corpus.sentences["hi"][:2], add_bos=True)
  out = xj.forward(model.params, model.config, enc.tokens, enc.mask)
  assert out.residuals.shape[:2] == (model.config.n_layers, 2)
  run = xj.finetune(model, saes, corpus, "hi", out=tmp_path, echo=lambda _: None,
                    train=xj.TrainConfig(steps=2, batch_size=2, warmup_steps=0, eval_fraction=0.5))
  adapted = xj.forward(model.params, model.config, enc.tokens, enc.mask, hook=run.hook())
  assert np.isfinite(np.asarray(adapted.logits)).all()
  assert any("routed experts" in n for n in run.report["notes"]) == (preset == "toy_gemma4_moe")
