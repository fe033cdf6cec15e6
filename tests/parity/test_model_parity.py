"""Parity with HF transformers' Gemma2ForCausalLM and Gemma3ForCausalLM (random weights, float32):
the raw output of every layer and the logits, through our HF writer and reader."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xling_jax import checkpoints
from xling_jax.model import config as config_lib, presets, transformer as model_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _batch(vocab, seq=20, seed=1):
  """Rows: full length (longer than the toy window), left padded, right padded, short."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, size=(4, seq))
  tokens[:, 0] = 2
  mask = np.ones((4, seq), np.int32)
  mask[1, :7] = 0  # left padding
  mask[2, 13:] = 0  # right padding
  mask[3, :3] = 0
  mask[3, 15:] = 0
  tokens = np.where(mask == 1, tokens, 0)
  for row in range(4):  # BOS at each row's first real token
    tokens[row, np.argmax(mask[row])] = 2
  return tokens, mask


# Gemma 3 variants: the toy's GQA (4 heads over 2 kv heads, linear RoPE x8 on the global
# layer, query scalar 24 != head_dim 16) and an MQA one with unscaled RoPE and 2 global layers.
FAMILIES = {
    "gemma2": presets.toy(),
    "gemma3_gqa": presets.toy_gemma3(),
    "gemma3_mqa": presets.toy_gemma3(
        n_heads=2, n_kv_heads=1, n_layers=13, query_pre_attn_scalar=16,
        attention_kinds=(config_lib.AttentionKind(8, 10000.0),
                         config_lib.AttentionKind(None, 1e6))),
}
HF_CLASSES = {"gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_case(request, tmp_path_factory):
  """(params, config, HF directory written by save_hf, HF model loaded from it)."""
  config = FAMILIES[request.param]
  params = model_lib.init_params(config, jax.random.PRNGKey(7))
  path = tmp_path_factory.mktemp(f"hf_{request.param}")
  checkpoints.save_hf(path, params, config, max_shard_bytes=64 * 1024)
  cls = getattr(transformers, HF_CLASSES[config.family])
  hf = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
  return params, config, path, hf


def _hf_run(hf_model, tokens, mask):
  """HF logits and the raw output of every decoder layer (forward hooks, incl. the last)."""
  outputs = []
  hooks = [layer.register_forward_hook(
      lambda _m, _i, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach()))
      for layer in hf_model.model.layers]
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    res = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                   position_ids=torch.tensor(positions))
  for h in hooks:
    h.remove()
  return res.logits.numpy(), np.stack([o.numpy() for o in outputs])


def test_sharded_hf_checkpoint_is_really_sharded(family_case):
  _, _, path, _ = family_case
  assert (path / "model.safetensors.index.json").exists()
  assert len(list(path.glob("model-*-of-*.safetensors"))) > 1


def test_residuals_and_logits_match_hf_every_layer(family_case):
  saved, saved_config, path, hf_model = family_case
  params, config = checkpoints.load_params(path)
  assert config == saved_config
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params, saved))
  tokens, mask = _batch(config.vocab_size, seq=20)
  assert tokens.shape[1] > 2 * config.sliding_window  # local attention really drops keys
  hf_logits, hf_resid = _hf_run(hf_model, tokens, mask)
  out = model_lib.jit_forward(params, config, jnp.asarray(tokens), jnp.asarray(mask))
  ours_resid, ours_logits = np.asarray(out.residuals), np.asarray(out.logits)
  assert ours_resid.shape == (config.n_layers,) + tokens.shape + (config.d_model,)
  real = mask.astype(bool)
  for layer in range(config.n_layers):
    err = _rel_err(ours_resid[layer][real], hf_resid[layer][real])
    assert err < 1e-5, f"layer {layer}: relative error {err}"
  assert _rel_err(ours_logits[real], hf_logits[real]) < 1e-4


def test_last_layer_residual_is_raw_not_final_normed(family_case):
  _, _, path, hf_model = family_case
  params, config = checkpoints.load_params(path)
  tokens, mask = _batch(config.vocab_size, seq=12)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    hs = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(positions), output_hidden_states=True).hidden_states
  out = model_lib.jit_forward(params, config, jnp.asarray(tokens), jnp.asarray(mask))
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out.embeddings)[real], hs[0].numpy()[real], rtol=1e-6)
  # hidden_states[L] is post-final-norm; our last residual must not be.
  assert _rel_err(np.asarray(out.residuals[-1])[real], hs[-1].numpy()[real]) > 1e-2
  assert _rel_err(np.asarray(out.residuals[-2])[real], hs[-2].numpy()[real]) < 1e-5


def test_left_and_right_padding_agree_at_real_tokens(toy_params, toy_config):
  rng = np.random.default_rng(3)
  real = rng.integers(4, toy_config.vocab_size, size=11)
  real[0] = 2
  left = np.zeros((1, 16), np.int32); left[0, 5:] = real
  right = np.zeros((1, 16), np.int32); right[0, :11] = real
  lm = (left != 0).astype(np.int32); rm = (right != 0).astype(np.int32)
  a = model_lib.jit_forward(toy_params, toy_config, jnp.asarray(left), jnp.asarray(lm))
  b = model_lib.jit_forward(toy_params, toy_config, jnp.asarray(right), jnp.asarray(rm))
  np.testing.assert_allclose(np.asarray(a.residuals)[:, 0, 5:], np.asarray(b.residuals)[:, 0, :11],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(a.logits)[0, 5:], np.asarray(b.logits)[0, :11],
                             rtol=1e-5, atol=1e-5)
