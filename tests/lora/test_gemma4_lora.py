"""LoRA on Gemma 4, checked with PEFT itself on transformers' Gemma4ForCausalLM: our export
loads in `peft.PeftModel` with our logits, a PEFT-made adapter imports with PEFT's logits, on
the toy whose layers differ in width (wider global heads, double-wide MLP on KV-shared layers,
no k/v there) and with the per-layer-embedding maps adapted; merging equals the hook."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora import lora as lora_lib, peft_io
from tests.helpers import hf_logits, our_logits, peft_batch, random_adapter, rel_err
from xling_jax import checkpoints
from xling_jax.model import presets, transformer as model_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers.models.gemma4")

ALL = ("q", "k", "v", "o", "gate", "up", "down", "ple_gate", "ple_proj")


@pytest.fixture(scope="module")
def toy4(tmp_path_factory):
  """(params, config, HF directory) of the dense toy Gemma 4."""
  config = presets.toy_gemma4()
  params = model_lib.init_params(config, jax.random.PRNGKey(2), scale=0.1)
  path = tmp_path_factory.mktemp("toy4")
  checkpoints.save_hf(path, params, config)
  return params, config, path


def _base(path):
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _batch(config):
  return peft_batch(config.ple_vocab_size)  # HF indexes the smaller PLE table with the ids


@pytest.mark.parametrize("modules,layers", [(ALL, None), (("k", "o", "up", "ple_proj"), (2, 5, 6))])
def test_export_loads_in_peft_with_our_logits(tmp_path, toy4, modules, layers):
  params, config, hf_dir = toy4
  cfg = lora_lib.LoraConfig(rank=4, alpha=12, modules=modules, layers=layers)
  adapter = random_adapter(config, cfg)
  out = peft_io.save_peft(tmp_path / "peft", adapter, cfg, config,
                          base_model_name_or_path=str(hf_dir))
  model = peft.PeftModel.from_pretrained(_base(hf_dir), out).eval()
  tokens, mask = _batch(config)
  theirs = hf_logits(model, tokens, mask)
  ours = our_logits(params, config, tokens, mask, adapter)
  base = our_logits(params, config, tokens, mask, None)
  real = mask.astype(bool)
  assert rel_err(base[real], ours[real]) > 1e-3
  assert rel_err(ours[real], theirs[real]) < 1e-4
  back, back_cfg = peft_io.load_peft_with_config(out, config)
  assert back_cfg == cfg
  for module, ab in adapter["layers"].items():
    for part in ("a", "b"):  # the rows a layer does not use stay zero both ways
      used = np.asarray(back["layers"][module][part]) != 0
      np.testing.assert_array_equal(np.asarray(back["layers"][module][part]),
                                    np.where(used, np.asarray(ab[part]), 0))


def test_adapter_made_by_peft_imports_with_peft_logits(tmp_path, toy4):
  params, config, hf_dir = toy4
  torch.manual_seed(0)
  peft_config = peft.LoraConfig(
      r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj",
                      "per_layer_input_gate", "per_layer_projection"])
  model = peft.get_peft_model(_base(hf_dir), peft_config).eval()
  model.save_pretrained(tmp_path / "made_by_peft")
  tokens, mask = _batch(config)
  theirs = hf_logits(model, tokens, mask)
  adapter, cfg = peft_io.load_peft_with_config(tmp_path / "made_by_peft", config)
  assert cfg.modules == ("q", "k", "v", "o", "gate", "down", "ple_gate", "ple_proj")
  ours = our_logits(params, config, tokens, mask, adapter)
  real = mask.astype(bool)
  assert rel_err(ours[real], theirs[real]) < 1e-4


def test_merge_equals_the_hook_on_every_layer_group(toy4):
  params, config, _ = toy4
  cfg = lora_lib.LoraConfig(rank=2, alpha=4, modules=ALL)
  adapter = random_adapter(config, cfg, b_std=0.2)
  tokens, mask = _batch(config)
  merged = lora_lib.merge(params, adapter, config)
  applied = our_logits(params, config, tokens, mask, adapter)
  folded = our_logits(merged, config, tokens, mask, None)
  base = our_logits(params, config, tokens, mask, None)
  real = mask.astype(bool)
  assert rel_err(base[real], applied[real]) > 1e-2
  assert rel_err(folded[real], applied[real]) < 1e-4
  assert set(merged["groups"]) == set(params["groups"])


def test_shared_layers_keep_k_and_v_at_zero(toy4):
  _, config, _ = toy4
  adapter = lora_lib.init_adapter(config, lora_lib.LoraConfig(rank=2, modules=("k", "v", "o")))
  shared = [l for l in range(config.n_layers) if config.is_kv_shared(l)]
  for module in ("k", "v"):
    assert not np.asarray(adapter["layers"][module]["a"])[shared].any()
  # K = V global layers have no v either; o of a local layer uses half of A's rows
  glob = [l for l in range(config.n_layers) if not config.is_local_layer(l)]
  assert not np.asarray(adapter["layers"]["v"]["a"])[glob].any()
  a_o = np.asarray(adapter["layers"]["o"]["a"])
  assert a_o[0, :64].all() and not a_o[0, 64:].any() and a_o[2].all()


def test_lora_gradient_reaches_adapted_modules_on_the_moe_toy():
  """The MoE toy trains LoRA on its dense modules through the routed experts (ragged_dot)."""
  config = presets.toy_gemma4_moe()
  params = model_lib.init_params(config, jax.random.PRNGKey(0), scale=0.1)
  adapter = random_adapter(config, lora_lib.LoraConfig(rank=2, modules=("q", "down")))
  tokens, mask = peft_batch(config.vocab_size)

  def loss(layers):
    hook = lora_lib.project_hook({**adapter, "layers": layers})
    out = model_lib.forward(params, config, jnp.asarray(tokens), jnp.asarray(mask), hook=hook)
    return jnp.mean(out.logits ** 2)

  grads = jax.grad(loss)(adapter["layers"])
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_expert_adapters_are_refused_with_a_clear_error(tmp_path):
  config = presets.toy_gemma4_moe()
  cfg = lora_lib.LoraConfig(rank=2, modules=("q",))
  out = peft_io.save_peft(tmp_path / "p", lora_lib.init_adapter(config, cfg), cfg, config,
                          "xling-jax-toy")
  raw = (out / peft_io.CONFIG_NAME).read_text().replace(
      '"target_parameters": null', '"target_parameters": ["experts.gate_up_proj"]')
  if "target_parameters" not in raw:
    raw = raw.replace('"peft_type": "LORA",',
                      '"peft_type": "LORA", "target_parameters": ["experts.gate_up_proj"],')
  (out / peft_io.CONFIG_NAME).write_text(raw)
  with pytest.raises(ValueError, match="target_parameters"):
    peft_io.load_peft_with_config(out, config)
  with pytest.raises(ValueError, match="unknown LoRA module 'ple_gate'"):
    lora_lib.init_adapter(config, lora_lib.LoraConfig(modules=("ple_gate",)))


def test_experts_are_skipped_with_a_note_not_an_error():
  """The default modules on the MoE toy adapt its dense MLP and say the experts take none; a
  model without experts has nothing to say."""
  default = lora_lib.LoraConfig()
  (note,) = lora_lib.unadapted_notes(presets.toy_gemma4_moe(), default)
  assert "6 routed experts" in note and "gate, up, down adapt the dense MLP" in note
  (note,) = lora_lib.unadapted_notes(presets.toy_gemma4_moe(), lora_lib.LoraConfig(modules=("q",)))
  assert "dense MLP" not in note
  assert lora_lib.unadapted_notes(presets.toy_gemma4(), default) == []
  assert lora_lib.unadapted_notes(presets.toy(), default) == []
