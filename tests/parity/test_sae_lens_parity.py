"""Parity with SAELens (the reference implementation): its own saved files load here and encode /
decode the same; directories we write load in SAELens and give the same codes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig  # noqa: E402
from sae_lens.evals import ExplainedVarianceCalculator  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

from sae import formats, jumprelu as jr  # noqa: E402

D, W, LAYER = 64, 256, 3
TOL = dict(rtol=1e-5, atol=1e-5)


def _saelens_sae(params: jr.JumpReLUParams, apply_b_dec_to_input: bool) -> JumpReLUSAE:
  cfg = JumpReLUSAEConfig(
      d_in=D, d_sae=W, apply_b_dec_to_input=apply_b_dec_to_input,
      metadata=SAEMetadata(hook_name=f"blocks.{LAYER}.hook_resid_post", model_name="gemma-2-2b"))
  sae = JumpReLUSAE(cfg)
  sae.load_state_dict({k: torch.from_numpy(np.array(getattr(params, k))) for k in jr.PARAM_NAMES})
  return sae


def _saelens_codes(sae: SAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  with torch.no_grad():
    f = sae.encode(torch.from_numpy(x))
    return f.numpy(), sae.decode(f).numpy()


@pytest.fixture(scope="module")
def params():
  return jr.random_params(jax.random.PRNGKey(11), D, W)


@pytest.fixture(scope="module")
def x():
  return np.array(jax.random.normal(jax.random.PRNGKey(12), (4, 16, D)))  # writable for torch


@pytest.fixture(scope="module")
def saelens_dir(tmp_path_factory, params):
  """Written by SAELens's own save, Gemma Scope's settings (no b_dec subtraction)."""
  path = tmp_path_factory.mktemp("saelens")
  _saelens_sae(params, apply_b_dec_to_input=False).save_model(path)
  return path


def test_saelens_files_and_npz_encode_like_saelens(tmp_path, saelens_dir, params, x):
  reference = SAE.load_from_disk(saelens_dir)
  want_f, want_x_hat = _saelens_codes(reference, x)
  assert 0.05 < (want_f > 0).mean() < 0.2
  assert formats.read_saelens_cfg(saelens_dir).layer == LAYER
  npz = formats.save_params_npz(tmp_path / "params.npz", params)
  for source in (saelens_dir, npz):
    ours = formats.load(source, d_in=D)
    f = jax.jit(jr.encode)(ours, x)
    np.testing.assert_allclose(f, want_f, **TOL)
    np.testing.assert_array_equal(np.asarray(f) > 0, want_f > 0)
    np.testing.assert_allclose(jax.jit(jr.decode)(ours, f), want_x_hat, **TOL)


def test_directories_we_save_load_in_saelens(tmp_path, params, x):
  directory = formats.save_saelens(tmp_path / "ours", params, LAYER, d_in=D)
  theirs = SAE.load_from_disk(directory)
  assert isinstance(theirs, JumpReLUSAE)
  assert theirs.cfg.metadata.hook_name == f"blocks.{LAYER}.hook_resid_post"
  f, x_hat = _saelens_codes(theirs, x)
  np.testing.assert_allclose(jr.encode(params, x), f, **TOL)
  np.testing.assert_allclose(jr.decode(params, jnp.asarray(f)), x_hat, **TOL)
  # bf16 weights keep their dtype through the file, and SAELens reads it as such.
  half = SAE.load_from_disk(formats.save_saelens(tmp_path / "bf16", jr.astype(params, jnp.bfloat16),
                                            LAYER))
  assert half.W_enc.dtype == torch.bfloat16
  np.testing.assert_array_equal(half.W_enc.detach().float().numpy(),
                                np.asarray(params.W_enc.astype(jnp.bfloat16), np.float32))


def test_b_dec_subtraction_is_folded_on_load(tmp_path, params, x):
  """An SAELens SAE with its default apply_b_dec_to_input=True encodes (x - b_dec); loading
  folds that into b_enc, so our encode (which never subtracts) gives SAELens's codes."""
  path = tmp_path / "b_dec"
  _saelens_sae(params, apply_b_dec_to_input=True).save_model(path)
  assert formats.read_saelens_cfg(path).apply_b_dec_to_input
  want_f, _ = _saelens_codes(SAE.load_from_disk(path), x)
  ours = formats.load(path)
  f = np.asarray(jr.encode(ours, x))
  # Folding reassociates float32 sums; codes within rounding of the threshold may flip.
  clear = np.abs(np.asarray(jr.pre_activations(ours, x)) - np.asarray(ours.threshold)) > 1e-4
  np.testing.assert_allclose(f[clear], want_f[clear], **TOL)
  assert not np.allclose(jr.encode(params, x), want_f, **TOL)  # unfolded weights would differ


def test_metrics_follow_saelens_conventions(params, x):
  theirs = _saelens_sae(params, apply_b_dec_to_input=False)
  f, x_hat = _saelens_codes(theirs, x)
  flat_x, flat_hat = x.reshape(-1, D), x_hat.reshape(-1, D)
  calc = ExplainedVarianceCalculator()
  calc.add_batch(sae_output=torch.from_numpy(flat_hat), hidden_acts=torch.from_numpy(flat_x))
  m = jr.reconstruction_metrics(params, x)
  np.testing.assert_allclose(m.explained_variance, calc.compute(), rtol=1e-4)
  np.testing.assert_allclose(m.mse, ((flat_x - flat_hat) ** 2).sum(-1).mean(), rtol=1e-5)
  np.testing.assert_allclose(m.l0, (f != 0).sum(-1).mean(), rtol=1e-6)
