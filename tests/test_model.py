"""Model behaviour beyond HF parity: compilation per shape bucket, config presets, shape checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xling_jax import config as config_lib, model as model_lib


def _tokens(seed, shape, vocab=512):
  return jnp.asarray(np.random.default_rng(seed).integers(4, vocab, shape))


def test_jit_compiles_once_per_shape_bucket(toy_params, toy_config):
  # A fresh function object: jit caches are per function, and other tests jit `forward` too.
  fwd = jax.jit(lambda p, c, t, m: model_lib.forward(p, c, t, m), static_argnums=1)
  mask_a = np.ones((2, 64), np.int32); mask_a[0, 40:] = 0
  mask_b = np.ones((2, 64), np.int32); mask_b[1, :10] = 0
  fwd(toy_params, toy_config, _tokens(0, (2, 64)), jnp.asarray(mask_a))
  assert fwd._cache_size() == 1
  fwd(toy_params, toy_config, _tokens(1, (2, 64)), jnp.asarray(mask_b))
  assert fwd._cache_size() == 1  # another batch, same bucket: no recompilation
  fwd(toy_params, toy_config, _tokens(2, (2, 128)), jnp.ones((2, 128), jnp.int32))
  assert fwd._cache_size() == 2


def test_sliding_window_changes_long_sequences_only(toy_params, toy_config):
  wide = toy_config.replace(sliding_window=10_000)
  short, long = _tokens(3, (1, toy_config.sliding_window)), _tokens(4, (1, 24))
  same = [np.asarray(model_lib.jit_forward(toy_params, c, short).residuals) for c in (toy_config, wide)]
  np.testing.assert_array_equal(*same)
  diff = [np.asarray(model_lib.jit_forward(toy_params, c, long).residuals) for c in (toy_config, wide)]
  assert not np.allclose(diff[0][0], diff[1][0])  # layer 0 is local: window must bite
  np.testing.assert_array_equal(diff[0][0, :, :toy_config.sliding_window],
                                diff[1][0, :, :toy_config.sliding_window])


def test_gemma2_2b_preset_matches_design_table():
  c = config_lib.gemma2_2b()
  assert (c.n_layers, c.d_model, c.mlp_hidden, c.n_heads, c.n_kv_heads, c.head_dim) == (
      26, 2304, 9216, 8, 4, 256)
  assert (c.vocab_size, c.sliding_window, c.attn_logit_softcap, c.final_logit_softcap) == (
      256000, 4096, 50.0, 30.0)
  assert c.query_pre_attn_scalar ** -0.5 == 1 / 16 and c.embed_scale == 48.0
  assert [c.is_local_layer(i) for i in range(4)] == [True, False, True, False]
  assert config_lib.Gemma2Config.from_hf_dict(c.to_hf_dict()) == c


def test_check_params_lists_every_mismatch(toy_params, toy_config):
  bad = dict(toy_params, layers=dict(toy_params["layers"]))
  bad["layers"]["q"] = bad["layers"]["q"][:, :2]
  del bad["layers"]["down"]
  with pytest.raises(ValueError) as err:
    model_lib.check_params(bad, toy_config)
  assert "layers/q" in str(err.value) and "layers/down: missing" in str(err.value)


def test_bfloat16_compute_stays_close_to_float32(toy_params, toy_config):
  tokens = _tokens(5, (2, 16))
  f32 = model_lib.jit_forward(toy_params, toy_config, tokens)
  bf16 = model_lib.jit_forward(toy_params, toy_config.replace(compute_dtype="bfloat16"), tokens)
  assert bf16.residuals.dtype == jnp.bfloat16 and bf16.logits.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(bf16.residuals, np.float32) - np.asarray(f32.residuals)) / \
      np.linalg.norm(np.asarray(f32.residuals))
  assert rel < 2e-2


@pytest.mark.parametrize("on_device", [False, True])
def test_init_params_shapes_scales_and_determinism(on_device):
  config = config_lib.preset("toy", param_dtype="bfloat16")
  params = model_lib.init_params(config, jax.random.PRNGKey(3), on_device=on_device)
  model_lib.check_params(params, config)  # raises on any shape mismatch
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(params))
  std = lambda a: float(np.std(np.asarray(a, np.float32)))
  assert std(params["layers"]["gate"]) == pytest.approx(0.02, rel=0.05)
  assert std(params["layers"]["pre_attn_norm"]) == pytest.approx(0.1, rel=0.2)
  again = model_lib.init_params(config, jax.random.PRNGKey(3), on_device=on_device)
  other = model_lib.init_params(config, jax.random.PRNGKey(4), on_device=on_device)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params, again))
  assert not bool((params["embed"] == other["embed"]).all())
