"""JumpReLU encode/decode, metrics, dtypes, and the stacked form inside the model's layer scan."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae import jumprelu as jr
from tests.helpers import assert_sae_equal
from xling_jax.model import transformer as model_lib

D, W = 64, 256


@pytest.fixture(scope="module")
def sae():
  return jr.random_params(jax.random.PRNGKey(1), D, W)


@pytest.fixture(scope="module")
def stacked():
  return jr.random_params(jax.random.PRNGKey(2), D, W, n_layers=3)


@pytest.fixture(scope="module")
def x():
  return jax.random.normal(jax.random.PRNGKey(3), (2, 5, D))


def test_encode_decode_match_numpy(sae, x):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), sae)
  pre = np.asarray(x, np.float64) @ p.W_enc + p.b_enc
  want = np.maximum(pre, 0) * (pre > p.threshold)
  f = jax.jit(jr.encode)(sae, x)
  assert f.shape == (2, 5, W)
  np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-5)
  assert 0.05 < float((f > 0).mean()) < 0.2  # realistic sparsity from random_params
  np.testing.assert_allclose(jax.jit(jr.decode)(sae, f), np.asarray(f, np.float64) @ p.W_dec +
                             p.b_dec, rtol=1e-5, atol=1e-5)


def test_threshold_is_strict_and_no_b_dec_subtraction():
  eye = jnp.eye(2, 3)
  params = jr.JumpReLUParams(W_enc=eye, b_enc=jnp.zeros(3), threshold=jnp.array([1.0, 0.5, 0.0]),
                             W_dec=eye.T, b_dec=jnp.full(2, 7.0))
  f = jr.encode(params, jnp.array([[1.0, 0.5], [1.5, 0.25]]))
  # pre == threshold stays off; b_dec (7) would switch every feature off if it were subtracted.
  np.testing.assert_array_equal(f, [[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])


def test_reconstruction_metrics_and_mask(sae, x):
  m = jax.jit(jr.reconstruction_metrics)(sae, x)
  xs = np.asarray(x, np.float64).reshape(-1, D)
  f = np.asarray(jr.encode(sae, x)).reshape(-1, W)
  x_hat = np.asarray(jr.decode(sae, jr.encode(sae, x)), np.float64).reshape(-1, D)
  mse = ((xs - x_hat) ** 2).sum(-1).mean()
  np.testing.assert_allclose(m.mse, mse, rtol=1e-5)
  np.testing.assert_allclose(m.explained_variance,
                             1 - mse / ((xs - xs.mean(0)) ** 2).sum(-1).mean(), rtol=1e-5)
  np.testing.assert_allclose(m.l0, (f != 0).sum(-1).mean(), rtol=1e-6)
  mask = jnp.array([[1, 1, 0, 1, 0], [0, 1, 1, 0, 0]])
  masked = jr.reconstruction_metrics(sae, x, mask)
  kept = jr.reconstruction_metrics(sae, x[np.asarray(mask, bool)])
  for name in ("mse", "explained_variance", "l0"):
    np.testing.assert_allclose(getattr(masked, name), getattr(kept, name), rtol=1e-5,
                               err_msg=name)


def test_astype_and_bf16_encode(sae, x):
  half = jr.astype(sae, jnp.bfloat16)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half))
  f = jr.encode(half, x)
  assert f.dtype == jnp.bfloat16
  # bf16 weights still give nearly the same active set as float32 ones.
  agree = float(((f > 0) == (jr.encode(sae, x) > 0)).mean())
  assert agree > 0.97


def test_stack_unstack_and_stacked_encode(stacked, x):
  singles = jr.unstack(stacked)
  assert len(singles) == 3 and singles[0].W_enc.shape == (D, W)
  assert_sae_equal(jr.stack(singles), stacked)
  xs = jnp.stack([x, 2 * x, -x])
  codes = jax.jit(jr.encode_stacked)(stacked, xs)
  recons = jax.jit(jr.decode_stacked)(stacked, codes)
  for layer, params in enumerate(singles):
    np.testing.assert_allclose(codes[layer], jr.encode(params, xs[layer]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(recons[layer], jr.decode(params, codes[layer]), rtol=1e-6,
                               atol=1e-6)
  with pytest.raises(ValueError, match="different shapes"):
    jr.stack([singles[0], jr.random_params(jax.random.PRNGKey(0), D, 2 * W)])


def test_encode_inside_the_layer_scan(toy_config, toy_params):
  """observe encodes each layer's residual with its own SAE slice and returns per-layer sums;
  they equal encoding the residuals of the same scan afterwards."""
  c = toy_config
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 7), 3, c.vocab_size)
  mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])

  @jax.jit
  def fused(params, sae_stack):
    def observe(resid, sae_l):
      f = jr.encode(sae_l, resid)
      return {"l0": jnp.sum((f > 0) * mask[..., None]), "act": jnp.sum(f * mask[..., None]),
              "resid": resid}
    x = model_lib.embed(params, c, tokens)
    return model_lib.scan_blocks(params, c, x, mask, observe=observe, observe_xs=sae_stack)[1]

  sae_stack = jr.random_params(jax.random.PRNGKey(5), c.d_model, W, n_layers=c.n_layers)
  residuals = fused(toy_params, sae_stack)["resid"]
  # Thresholds at each layer's 85th percentile of pre-activations: ~15% fire on every layer.
  pre = jax.vmap(jr.pre_activations)(sae_stack, residuals)
  sae_stack = sae_stack.replace(threshold=jnp.quantile(pre, 0.85, axis=(1, 2)))

  got = fused(toy_params, sae_stack)
  codes = jr.encode_stacked(sae_stack, got["resid"])  # [L, B, T, W]
  want_l0 = jnp.sum((codes > 0) * mask[None, ..., None], axis=(1, 2, 3))
  assert got["l0"].shape == (c.n_layers,)
  assert np.all(np.asarray(want_l0) > 0)
  np.testing.assert_array_equal(got["l0"], want_l0)
  np.testing.assert_allclose(got["act"], jnp.sum(codes * mask[None, ..., None], axis=(1, 2, 3)),
                             rtol=1e-5)
