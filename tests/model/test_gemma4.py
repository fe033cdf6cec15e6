"""Gemma 4 against transformers' `Gemma4ForCausalLM` (random weights, float32): the output of
every decoder layer (what a forward hook on `model.layers[i]` sees: resid_post, with the
per-layer-embedding injection and the layer scalar) and the logits, at real tokens of left- and
right-padded rows longer than the sliding window. Every learned scale (norms, layer scalars,
router and expert scales) is drawn from [0.4, 1.6], so a `1 + w` offset or a dropped scale fails.

Two directions: our random params through our HF writer into transformers (the round trip), and
transformers' own random models (its config spelling, a multimodal checkpoint, the 12B's
`gemma4_unified`, a released file's unused K/V weights) through our reader."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xling_jax import checkpoints
from xling_jax.checkpoints import hf_config
from xling_jax.model import layout, presets, transformer as model_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("transformers.models.gemma4")

S, F = "sliding_attention", "full_attention"
LAYER_TOL, LOGIT_TOL = 5e-5, 1e-4  # relative L2 error; measured 5e-7 .. 2e-5


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _batch(vocab, seq=20, seed=1):
  """Rows: full length (2.5 windows of the toys), left padded, right padded, both."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, size=(4, seq))
  mask = np.ones((4, seq), np.int64)
  mask[1, :7] = 0
  mask[2, 13:] = 0
  mask[3, :3] = 0
  mask[3, 15:] = 0
  return np.where(mask == 1, tokens, 0), mask


def _scales_away_from_one(params, config, seed=0):
  rng = np.random.default_rng(seed)
  norms = layout.norm_paths(config)
  return jax.tree_util.tree_map_with_path(
      lambda path, a: (jnp.asarray(rng.uniform(0.4, 1.6, a.shape), a.dtype)
                       if tuple(k.key for k in path) in norms else a), params)


def _hf_run(model, layers, tokens, mask):
  """HF logits and every decoder layer's output (forward hooks), generate-style positions."""
  outputs = []
  hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().numpy()))
           for layer in layers]
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  try:
    with torch.no_grad():
      res = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(positions), use_cache=False)
  finally:
    for h in hooks:
      h.remove()
  return res.logits.numpy(), np.stack(outputs)


def _assert_matches(params, config, hf_model, hf_layers, vocab, seed=1):
  tokens, mask = _batch(vocab, seed=seed)
  assert tokens.shape[1] > 2 * config.sliding_window
  hf_logits, hf_resid = _hf_run(hf_model, hf_layers, tokens, mask)
  out = model_lib.jit_forward(params, config, jnp.asarray(tokens), jnp.asarray(mask))
  real = mask.astype(bool)
  ours = np.asarray(out.residuals)
  assert ours.shape == hf_resid.shape
  for layer in range(config.n_layers):
    err = _rel_err(ours[layer][real], hf_resid[layer][real])
    assert err < LAYER_TOL, f"layer {layer}: relative error {err}"
  assert _rel_err(np.asarray(out.logits)[real], hf_logits[real]) < LOGIT_TOL


def _vocab(config):
  return min(config.vocab_size, config.ple_vocab_size or config.vocab_size)


# ---- our writer -> transformers ------------------------------------------------------------

@pytest.fixture(scope="module", params=["toy_gemma4", "toy_gemma4_moe"])
def written(request, tmp_path_factory):
  """(params, config, HF directory from save_hf, Gemma4ForCausalLM loaded from it)."""
  config = presets.preset(request.param)
  params = model_lib.init_params(config, jax.random.PRNGKey(3), scale=0.1)
  params = _scales_away_from_one(params, config)
  path = tmp_path_factory.mktemp(request.param)
  checkpoints.save_hf(path, params, config, max_shard_bytes=256 * 1024)
  hf = transformers.Gemma4ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  return params, config, path, hf


def test_written_checkpoint_loads_back_exactly(written):
  params, config, path, _ = written
  back, back_config = checkpoints.load_params(path)
  assert back_config == config
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, params))


def test_every_layer_and_the_logits_match_transformers(written):
  params, config, _, hf = written
  _assert_matches(params, config, hf, hf.model.layers, _vocab(config))


def test_the_toys_cover_what_gemma4_changes(written):
  _, config, _, hf = written
  hf_config_ = hf.config
  assert hf_config_.layer_types[-1] == F and S in hf_config_.layer_types
  if config.ple_dim:  # the dense toy: PLE, KV sharing with a double-wide MLP, wider global head
    modes = hf_config_.kv_sharing_modes
    assert "reuse" in modes and hf_config_.use_double_wide_mlp
    assert {hf_config_.layer_types[i] for i, m in enumerate(modes) if m == "reuse"} == {S, F}
    assert hf_config_.vocab_size_per_layer_input < hf_config_.vocab_size
  else:
    assert hf_config_.enable_moe_block and hf_config_.num_experts > hf_config_.top_k_experts
  local, glob = (hf_config_.per_layer_config[hf_config_.layer_types.index(t)] for t in (S, F))
  assert glob.head_dim == 2 * local.head_dim
  assert glob.num_key_value_heads < local.num_key_value_heads
  assert hf_config_.attention_k_eq_v


def test_layer_scalar_is_inside_the_residual(written):
  """resid_post is the decoder layer's output after its layer scalar."""
  params, config, _, _ = written
  tokens, mask = _batch(_vocab(config), seq=12)
  out = model_lib.jit_forward(params, config, jnp.asarray(tokens), jnp.asarray(mask))
  doubled = jax.tree.map(lambda a: a, params)
  doubled["layers"]["layer_scalar"] = params["layers"]["layer_scalar"] * 2
  twice = model_lib.jit_forward(doubled, config, jnp.asarray(tokens), jnp.asarray(mask))
  np.testing.assert_allclose(twice.residuals[0], 2 * out.residuals[0], rtol=1e-6, atol=1e-6)


def test_padding_does_not_change_real_tokens(written):
  params, config, _, _ = written
  rng = np.random.default_rng(4)
  seq = rng.integers(4, _vocab(config), size=13)
  rows = np.zeros((3, 20), np.int64)
  mask = np.zeros((3, 20), np.int64)
  for row, start in enumerate((0, 7, 3)):
    rows[row, start:start + 13], mask[row, start:start + 13] = seq, 1
  out = model_lib.jit_forward(params, config, jnp.asarray(rows), jnp.asarray(mask))
  alone = model_lib.jit_forward(params, config, jnp.asarray(seq[None]))
  for row, start in enumerate((0, 7, 3)):
    got = np.asarray(out.residuals)[:, row, start:start + 13]
    assert _rel_err(got, np.asarray(alone.residuals)[:, 0]) < LAYER_TOL


# ---- transformers' models -> our reader ----------------------------------------------------

COMMON = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, head_dim=8, rms_norm_eps=1e-6,
              pad_token_id=0, bos_token_id=2, eos_token_id=1)
# Everything at once, in HF's own terms: PLE with a smaller table, KV sharing reaching a K = V
# global layer, MoE, double-wide MLP, a layer_types list whose last entry HF forces to full.
EVERYTHING = dict(
    COMMON, intermediate_size=16, num_hidden_layers=8, num_key_value_heads=2, global_head_dim=16,
    num_global_key_value_heads=1, attention_k_eq_v=True, layer_types=[S, F, S, S, F, S, F, S],
    sliding_window=4, hidden_size_per_layer_input=4, vocab_size_per_layer_input=48,
    num_kv_shared_layers=3, use_double_wide_mlp=True, enable_moe_block=True, num_experts=4,
    top_k_experts=2, moe_intermediate_size=8, final_logit_softcapping=3.0,
    rope_parameters={S: {"rope_type": "default", "rope_theta": 100.0},
                     F: {"rope_type": "proportional", "partial_rotary_factor": 0.5,
                         "rope_theta": 1000.0}})


def _randomize_(model, seed):
  """Every parameter and layer_scalar buffer far from its init (scales in [0.4, 1.6])."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim <= 1 or name.endswith(("norm.weight", ".scale", "per_expert_scale")):
        p.copy_(0.4 + 1.2 * torch.rand(p.shape, generator=g))
      else:
        p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    for name, buf in model.named_buffers():
      if name.endswith("layer_scalar"):
        buf.copy_(0.4 + 1.2 * torch.rand(buf.shape, generator=g))
  return model


def test_transformers_model_with_everything_loads_and_matches(tmp_path):
  hf = _randomize_(transformers.Gemma4ForCausalLM(
      transformers.Gemma4TextConfig(**EVERYTHING)).eval(), seed=5)
  hf.save_pretrained(tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert "per_layer_config" in saved and "global_head_dim" not in saved  # 5.2x's spelling
  params, config = checkpoints.load_params(tmp_path)
  assert config == hf_config.config_from_hf(dict(EVERYTHING, model_type="gemma4_text"))
  assert [config.kv_source(i) for i in range(8)] == [0, 1, 2, 3, 4, 3, 4, 4]
  _assert_matches(params, config, hf, hf.model.layers, 48, seed=2)


def test_released_unused_kv_weights_of_shared_layers_are_ignored(tmp_path):
  """Released E2B/E4B files still hold k_proj, v_proj and k_norm on KV-shared layers, which HF
  drops on load; so do we."""
  from safetensors.numpy import load_file, save_file
  config = presets.toy_gemma4()
  params = model_lib.init_params(config, jax.random.PRNGKey(1))
  checkpoints.save_hf(tmp_path, params, config)
  tensors = load_file(tmp_path / "model.safetensors")
  rng = np.random.default_rng(0)
  for i in range(config.n_layers - config.kv_shared_layers, config.n_layers):
    for name, shape in (("k_proj.weight", (16, 64)), ("v_proj.weight", (16, 64)),
                        ("k_norm.weight", (16,))):
      tensors[f"model.layers.{i}.self_attn.{name}"] = rng.standard_normal(shape, np.float32)
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  back, _ = checkpoints.load_params(tmp_path)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, params))


def test_multimodal_checkpoint_loads_its_language_model(tmp_path):
  text = transformers.Gemma4TextConfig(**{**EVERYTHING, "enable_moe_block": False})
  mm = _randomize_(transformers.Gemma4ForConditionalGeneration(transformers.Gemma4Config(
      text_config=text, vision_config=None, audio_config=None)).eval(), seed=7)
  mm.save_pretrained(tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gemma4"
  params, config = checkpoints.load_params(tmp_path)
  assert config.ple_dim == 4 and not config.n_experts
  _assert_matches(params, config, mm, mm.model.language_model.layers, 48, seed=3)


def test_gemma4_unified_12b_style_loads_and_matches(tmp_path):
  """The 12B's text model (`gemma4_unified_text`): no per-layer embeddings or experts, and a
  config class without their fields (so an absent PLE key means none, not 256)."""
  kw = {k: v for k, v in EVERYTHING.items()
        if k not in ("hidden_size_per_layer_input", "vocab_size_per_layer_input",
                     "enable_moe_block", "num_experts", "top_k_experts", "moe_intermediate_size")}
  hf = _randomize_(transformers.Gemma4UnifiedForCausalLM(
      transformers.Gemma4UnifiedTextConfig(**kw)).eval(), seed=11)
  hf.save_pretrained(tmp_path)
  params, config = checkpoints.load_params(tmp_path)
  assert config.family == "gemma4" and config.ple_dim == 0 and not config.n_experts
  _assert_matches(params, config, hf, hf.model.layers, 64, seed=4)


# ---- config.json ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gemma4_e2b", "gemma4_e4b", "gemma4_26b_a4b", "gemma4_31b",
                                  "toy_gemma4", "toy_gemma4_moe"])
def test_both_config_spellings_give_the_preset(name):
  """The hub's `global_head_dim` / `num_global_key_value_heads` and transformers 5.2x's
  `per_layer_config` (what its to_dict writes) read as the same config, equal to the one
  transformers resolves per layer."""
  config = presets.preset(name)
  hub = hf_config.config_to_hf(config)
  assert hf_config.config_from_hf(hub) == config
  resolved = transformers.Gemma4TextConfig(**{k: v for k, v in hub.items()
                                              if k not in ("model_type", "architectures")})
  plc = resolved.to_dict()
  assert "per_layer_config" in plc and "global_head_dim" not in plc
  assert hf_config.config_from_hf(plc) == config
  for i in range(config.n_layers):
    assert resolved.per_layer_config[i].head_dim == config.kind_head_dim(config.layer_kinds[i])
    assert (resolved.per_layer_config[i].num_key_value_heads
            == config.kind_kv_heads(config.layer_kinds[i]))
  if config.kv_shared_layers:
    modes = resolved.kv_sharing_modes
    assert [i for i in range(config.n_layers) if modes[i] == "reuse"] == [
        i for i in range(config.n_layers) if config.is_kv_shared(i)]
    assert set(config.kv_slots) <= {i for i in range(config.n_layers) if modes[i] == "store"}
  multimodal = {"model_type": "gemma4", "text_config": hub, "vision_config": {}}
  assert hf_config.config_from_hf(multimodal) == config


def test_hf_defaulting_rules():
  base = dict(COMMON, model_type="gemma4_text", num_hidden_layers=2, num_key_value_heads=2,
              intermediate_size=8, layer_types=[S, S])
  config = hf_config.config_from_hf(base)
  assert config.layer_kinds == (0, 1)  # the last layer is forced global
  assert config.kind_head_dim(1) == 512  # global_head_dim defaults to 512 even when absent
  assert config.ple_dim == 256  # an absent hidden_size_per_layer_input means 256 ...
  assert hf_config.config_from_hf({**base, "hidden_size_per_layer_input": 0}).ple_dim == 0
  # ... and num_global_key_value_heads counts only with attention_k_eq_v
  assert hf_config.config_from_hf({**base, "num_global_key_value_heads": 1}).kind_kv_heads(1) == 2
  keqv = hf_config.config_from_hf({**base, "num_global_key_value_heads": 1,
                                   "attention_k_eq_v": True})
  assert keqv.kind_kv_heads(1) == 1 and keqv.attention_kinds[1].k_eq_v
  with pytest.raises(ValueError, match="use_bidirectional_attention='all'"):
    hf_config.config_from_hf({**base, "use_bidirectional_attention": "all"})
  with pytest.raises(ValueError, match="no layer computes"):
    hf_config.config_from_hf({**base, "num_kv_shared_layers": 2})


@pytest.mark.parametrize("name", ["gemma4_e2b", "gemma4_e4b", "gemma4_26b_a4b", "gemma4_31b",
                                  "gemma4_12b"])
def test_full_size_presets_hold_exactly_transformers_parameters(name):
  """Memory at the released sizes: our pytree holds the same number of weights as
  transformers' model (built on the meta device), so stacking per layer group pads nothing;
  and the whole forward pass has the right shapes under jax.eval_shape."""
  import math
  config = presets.preset(name, param_dtype="bfloat16", compute_dtype="bfloat16")
  shapes = model_lib.param_shapes(config)
  ours = sum(math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple)))
  hub = hf_config.config_to_hf(config)
  with torch.device("meta"):
    hf = transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(
        **{k: v for k, v in hub.items() if k not in ("model_type", "architectures")}))
  theirs = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("lm_head"))
  theirs += sum(b.numel() for n, b in hf.named_buffers() if n.endswith("layer_scalar"))
  assert ours == theirs
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))
  out = jax.eval_shape(lambda p, t: model_lib.forward(p, config, t), params,
                       jax.ShapeDtypeStruct((2, 32), jnp.int32))
  assert out.residuals.shape == (config.n_layers, 2, 32, config.d_model)


def test_packed_scoring_equals_independent_sequences():
  """Scoring packs several continuations behind one context (positions restart, a pair mask);
  on the dense toy that goes through the per-layer embeddings and the shared K/V as well."""
  from xling_jax.evaluation import scoring
  config = presets.toy_gemma4()
  params = model_lib.init_params(config, jax.random.PRNGKey(5), scale=0.1)
  items = [scoring.EncodedItem(tuple(range(2, 16)), ((30, 31, 32), (40,), (50,) * 9)),
           scoring.EncodedItem((2, 5, 6), ((7,) * 11, (8, 9)))]
  got = scoring.score(params, config, items, batch_size=2).loglikelihoods
  for item, lls in zip(items, got):
    for cont, ll in zip(item.continuations, lls):
      seq = jnp.asarray([list(item.context) + list(cont)])
      logp = jax.nn.log_softmax(model_lib.jit_forward(params, config, seq).logits[0], axis=-1)
      want = sum(float(logp[len(item.context) - 1 + j, t]) for j, t in enumerate(cont))
      assert abs(ll - want) < 1e-4, (ll, want)


# ---- other formats -------------------------------------------------------------------------

def test_our_own_format_round_trips(tmp_path):
  config = presets.toy_gemma4()
  params = model_lib.init_params(config, jax.random.PRNGKey(6))
  checkpoints.save_params(tmp_path / "ours", params, config)
  back, back_config = checkpoints.load_params(tmp_path / "ours")
  assert back_config == config
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, params))
  stored = json.loads((tmp_path / "ours" / "xling_config.json").read_text())
  assert stored["attention_kinds"][1]["k_eq_v"] and stored["norm_offset"] == 0.0


def test_unsupported_gemma4_formats_are_one_line_errors(tmp_path):
  """GGUF and the gemma library's Kaggle/orbax layout of Gemma 4 are refused by name."""
  from xling_jax.runtime.errors import CheckpointError
  gguf = pytest.importorskip("gguf")
  writer = gguf.GGUFWriter(str(tmp_path / "g4.gguf"), "gemma4")
  writer.add_block_count(2)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(CheckpointError, match="a Gemma 4 GGUF \\(architecture 'gemma4'\\) is not "
                                            "supported") as e:
    checkpoints.load_params(tmp_path / "g4.gguf")
  assert "\n" not in str(e.value)

  import orbax.checkpoint as ocp
  tree = {"transformer/embedder": {"input_embedding": np.zeros((8, 4), np.float32)},
          "transformer/layer_0": {"skip_scale": np.ones((1,), np.float32)}}
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save((tmp_path / "kaggle").absolute(), tree)
  with pytest.raises(CheckpointError, match="a Gemma 4 Kaggle/orbax checkpoint") as e:
    checkpoints.load_params(tmp_path / "kaggle")
  assert "\n" not in str(e.value)

  toy = presets.toy()
  checkpoints.save_kaggle(tmp_path / "gemma2", model_lib.init_params(toy, jax.random.PRNGKey(0)),
                          toy)
  with pytest.raises(CheckpointError, match="kaggle checkpoints of gemma4 are not supported"):
    checkpoints.load_params(tmp_path / "gemma2", presets.toy_gemma4())
  with pytest.raises(ValueError, match="save_kaggle writes Gemma 2 and Gemma 3, not gemma4"):
    config = presets.toy_gemma4()
    checkpoints.save_kaggle(tmp_path / "no", model_lib.init_params(config, jax.random.PRNGKey(0)),
                            config)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_gradients_through_the_layer_groups_do_not_depend_on_remat(remat):
  """Autodiff through the group switch and the carried K/V (LoRA's backward pass), with and
  without rematerialisation."""
  from lora import lora as lora_lib
  config = presets.toy_gemma4()
  params = model_lib.init_params(config, jax.random.PRNGKey(0), scale=0.1)
  adapter = lora_lib.init_adapter(config, lora_lib.LoraConfig(rank=2, modules=("k", "v", "o")))
  adapter["layers"] = jax.tree.map(lambda a: a + 0.01, adapter["layers"])
  tokens, mask = (jnp.asarray(a) for a in _batch(_vocab(config), seq=12))

  def loss(layers, remat):
    hook = lora_lib.project_hook({**adapter, "layers": layers})
    out = model_lib.forward(params, config, tokens, mask, hook=hook, remat=remat)
    return jnp.sum(out.logits ** 2 * mask[..., None])

  want = jax.grad(loss)(adapter["layers"], False)
  got = jax.grad(loss)(adapter["layers"], remat)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert _rel_err(a, b) < 1e-5
  # Layer 4 stores the K/V the shared local layer reads: gradients reach its k and v.
  assert float(jnp.abs(want["k"]["b"][4]).max()) > 0 and float(jnp.abs(want["v"]["b"][4]).max()) > 0


def test_ids_past_the_per_layer_table_read_its_first_row():
  """The gemma library's rule for ids the (smaller) per-layer table lacks; HF fails on them."""
  config = presets.toy_gemma4()
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  assert config.ple_vocab_size < config.vocab_size
  tokens = jnp.asarray([[2, 7, config.ple_vocab_size + 5]])
  got = model_lib.per_layer_input(params, config, tokens, model_lib.embed(params, config, tokens),
                                  jnp.asarray(3), params["ple_model_proj"][3])
  zero = model_lib.per_layer_input(params, config, tokens.at[0, 2].set(0),
                                   model_lib.embed(params, config, tokens), jnp.asarray(3),
                                   params["ple_model_proj"][3])
  np.testing.assert_array_equal(got, zero)
