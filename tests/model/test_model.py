"""Model behaviour beyond HF parity: compilation per shape bucket, config presets at full size,
shape checks, the projection hook."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xling_jax.checkpoints import hf_config
from xling_jax.model import presets, transformer as model_lib


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
  wide = toy_config.replace(attention_kinds=tuple(
      dataclasses.replace(k, window=10_000) if k.window else k
      for k in toy_config.attention_kinds))
  short, long = _tokens(3, (1, toy_config.sliding_window)), _tokens(4, (1, 24))
  same = [np.asarray(model_lib.jit_forward(toy_params, c, short).residuals) for c in (toy_config, wide)]
  np.testing.assert_array_equal(*same)
  diff = [np.asarray(model_lib.jit_forward(toy_params, c, long).residuals) for c in (toy_config, wide)]
  assert not np.allclose(diff[0][0], diff[1][0])  # layer 0 is local: window must bite
  np.testing.assert_array_equal(diff[0][0, :, :toy_config.sliding_window],
                                diff[1][0, :, :toy_config.sliding_window])


def test_gemma2_2b_preset_matches_the_released_model():
  c = presets.gemma2_2b()
  assert (c.n_layers, c.d_model, c.mlp_hidden, c.n_heads, c.n_kv_heads, c.head_dim) == (
      26, 2304, 9216, 8, 4, 256)
  assert (c.vocab_size, c.sliding_window, c.attn_logit_softcap, c.final_logit_softcap) == (
      256000, 4096, 50.0, 30.0)
  assert c.query_pre_attn_scalar ** -0.5 == 1 / 16 and not c.qk_norm
  assert [c.is_local_layer(i) for i in range(4)] == [True, False, True, False]
  assert {k.rope_base for k in c.attention_kinds} == {10000.0}
  assert hf_config.config_from_hf(hf_config.config_to_hf(c)) == c


def test_gemma3_presets_match_the_released_models():
  c = presets.gemma3_270m()
  assert (c.n_layers, c.d_model, c.mlp_hidden, c.n_heads, c.n_kv_heads, c.head_dim) == (
      18, 640, 2048, 4, 1, 256)
  assert [i for i in range(18) if not c.is_local_layer(i)] == [5, 11, 17]
  assert (c.vocab_size, c.sliding_window, c.attn_logit_softcap, c.final_logit_softcap) == (
      262144, 512, None, None)
  assert c.qk_norm and c.layer_kind(5).rope_base == 1e6 and c.layer_kind(0).rope_base == 1e4
  big = presets.gemma3_4b()
  assert big.layer_kind(5).rope_scale == 8.0 and big.layer_kind(0).rope_scale == 1.0
  assert (big.vocab_size, big.sliding_window) == (262208, 1024)
  assert presets.gemma3_27b().query_pre_attn_scalar == 168
  assert presets.gemma2_27b().query_pre_attn_scalar == 144
  assert presets.gemma2_9b().kaggle_gating_transposed
  assert not presets.gemma2_2b().kaggle_gating_transposed
  for c in (presets.gemma3_270m(), big):
    assert hf_config.config_from_hf(hf_config.config_to_hf(c)) == c


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_runs_at_full_size_under_eval_shape(name):
  """Shapes of the whole forward pass at the released size, without allocating a weight."""
  config = presets.preset(name, param_dtype="bfloat16", compute_dtype="bfloat16")
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16),
                        model_lib.param_shapes(config), is_leaf=lambda s: isinstance(s, tuple))
  tokens = jax.ShapeDtypeStruct((2, 32), jnp.int32)
  out = jax.eval_shape(lambda p, t: model_lib.forward(p, config, t), params, tokens)
  assert out.logits.shape == (2, 32, config.vocab_size)
  assert out.residuals.shape == (config.n_layers, 2, 32, config.d_model)


def test_hf_config_of_a_multimodal_gemma3_is_its_text_model():
  text = hf_config.config_to_hf(presets.gemma3_4b())
  multimodal = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                "text_config": {k: v for k, v in text.items() if k != "model_type"},
                "vision_config": {"hidden_size": 1152}}
  assert hf_config.config_from_hf(multimodal) == presets.gemma3_4b()
  with pytest.raises(ValueError, match="text_config"):
    hf_config.config_from_hf({"model_type": "gemma3", "vision_config": {}})


def test_legacy_gemma3_rope_keys_give_the_same_config():
  """Older config.json files name rope_theta / rope_local_base_freq / rope_scaling and a
  sliding_window_pattern instead of rope_parameters and layer_types."""
  c = presets.gemma3_4b()
  hf = {k: v for k, v in hf_config.config_to_hf(c).items() if k not in ("rope_parameters", "layer_types")}
  hf.update(sliding_window_pattern=6, rope_scaling={"rope_type": "linear", "factor": 8.0})
  assert hf_config.config_from_hf(hf) == c


def test_projection_hook_sees_every_linear_module_and_changes_the_output(toy_params, toy_config):
  seen = []

  def apply(module, x, y, xs_l, consts):
    seen.append((module, x.shape[-1], y.shape[-1]))
    return y + consts * xs_l if module == "down" else y

  tokens = _tokens(6, (1, 8))
  hook = model_lib.ProjectHook(apply=apply, xs=jnp.ones((toy_config.n_layers,)), consts=0.5)
  out = model_lib.forward(toy_params, toy_config, tokens, hook=hook)
  assert sorted({m for m, _, _ in seen}) == sorted(["q", "k", "v", "o", "gate", "up", "down"])
  base = model_lib.forward(toy_params, toy_config, tokens)
  assert not np.allclose(np.asarray(out.residuals[0]), np.asarray(base.residuals[0]))


@pytest.mark.parametrize("vocab_chunk", [512, 128, 100])  # one chunk, four, six overlapping
def test_target_logprobs_are_the_log_softmax_of_the_logits(toy_params, toy_config, vocab_chunk):
  assert toy_config.vocab_size == 512 and toy_config.final_logit_softcap  # the softcap counts too
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 7, toy_config.d_model)) * 3
  targets = _tokens(6, (2, 7))
  expected = jnp.take_along_axis(jax.nn.log_softmax(model_lib.unembed(toy_params, toy_config, x)),
                                 targets[..., None], axis=-1)[..., 0]
  got = jax.jit(model_lib.target_logprobs, static_argnums=(1, 4))(toy_params, toy_config, x,
                                                                   targets, vocab_chunk)
  assert got.shape == targets.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


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
  config = presets.preset("toy", param_dtype="bfloat16")
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
