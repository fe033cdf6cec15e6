"""PEFT interop, checked with PEFT itself on the HF toy model: our export loads in
`peft.PeftModel.from_pretrained` and gives our logits; a PEFT-made adapter imports and gives
PEFT's logits; unsupported PEFT options fail with a clear error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy

from lora import lora as lora_lib, peft_io
from tests.helpers import (assert_peft_matches_ours, hf_base, hf_logits, our_logits, peft_batch,
                           random_adapter, rel_err)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.mark.parametrize("modules,layers", [
    (lora_lib.LoraConfig().modules, None),
    (("q", "v", "down"), (0, 2)),
])
def test_export_loads_in_peft_with_our_logits(tmp_path, toy_hf_dir, toy_params, toy_config,
                                              modules, layers):
  cfg = lora_lib.LoraConfig(rank=4, alpha=12, modules=modules, layers=layers)
  adapter = random_adapter(toy_config, cfg)
  out = peft_io.save_peft(tmp_path / "peft", adapter, cfg, toy_config,
                          base_model_name_or_path=str(toy_hf_dir))
  written = json.loads((out / peft_io.CONFIG_NAME).read_text())
  assert written["target_modules"] == [peft_io.hf_module(m) for m in cfg.modules]
  assert written["layers_to_transform"] == (None if layers is None else list(layers))
  keys = safetensors.numpy.load_file(out / peft_io.WEIGHTS_NAME)
  assert keys["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
  assert keys["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (64, 4)
  assert_peft_matches_ours(toy_hf_dir, out, toy_params, toy_config, adapter)
  back, back_cfg = peft_io.load_peft_with_config(out, toy_config)
  assert back_cfg == cfg.__class__(rank=4, alpha=12, modules=modules, layers=layers)
  for module, ab in adapter["layers"].items():
    for part in ("a", "b"):
      np.testing.assert_array_equal(back["layers"][module][part], ab[part])


def test_adapter_made_by_peft_imports_with_peft_logits(tmp_path, toy_hf_dir, toy_params,
                                                       toy_config):
  torch.manual_seed(0)
  peft_config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,  # random A and B
                                target_modules=["q_proj", "k_proj", "o_proj", "up_proj",
                                                "down_proj"], layers_to_transform=[1, 3],
                                task_type="CAUSAL_LM")
  model = peft.get_peft_model(hf_base(toy_hf_dir), peft_config).eval()
  model.save_pretrained(tmp_path / "made_by_peft")
  tokens, mask = peft_batch(toy_config.vocab_size, seed=7)
  theirs = hf_logits(model, tokens, mask)
  adapter, cfg = peft_io.load_peft_with_config(tmp_path / "made_by_peft", toy_config)
  assert cfg.modules == ("q", "k", "o", "up", "down") and cfg.layers == (1, 3)
  assert cfg.scale == 2.0
  ours = our_logits(toy_params, toy_config, tokens, mask, adapter)
  base = our_logits(toy_params, toy_config, tokens, mask, None)
  real = mask.astype(bool)
  assert rel_err(base[real], theirs[real]) > 1e-3
  assert rel_err(ours[real], theirs[real]) < 1e-4


@pytest.fixture()
def exported(tmp_path, toy_config):
  cfg = lora_lib.LoraConfig(rank=2, alpha=4, modules=("q", "down"))
  return peft_io.save_peft(tmp_path / "peft", lora_lib.init_adapter(toy_config, cfg), cfg,
                           toy_config, "xling-jax-toy")


@pytest.mark.parametrize("change,message", [
    ({"use_rslora": True}, "use_rslora=True"),
    ({"use_dora": True}, "use_dora=True"),
    ({"bias": "all"}, "bias='all'"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True"),
    ({"peft_type": "IA3"}, "only 'LORA'"),
    ({"target_modules": ".*proj"}, "regex strings are not supported"),
    ({"target_modules": ["q_proj", "lm_head"]}, r"\['lm_head'\] are not Gemma linear layers"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_unsupported_options_are_named(exported, toy_config, change, message):
  path = exported / peft_io.CONFIG_NAME
  path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
  with pytest.raises(ValueError, match=message):
    peft_io.load_peft(exported, toy_config)


def test_missing_unexpected_and_misshapen_tensors_are_named(exported, toy_config):
  path = exported / peft_io.WEIGHTS_NAME
  tensors = safetensors.numpy.load_file(path)
  del tensors[peft_io.peft_key(3, "down", "B")]
  tensors[peft_io.peft_key(1, "q", "A")] = np.zeros((3, 64), np.float32)
  tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = (
      np.ones(64, np.float32))
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(ValueError) as info:
    peft_io.load_peft(exported, toy_config)
  text = str(info.value)
  assert "missing base_model.model.model.layers.3.mlp.down_proj.lora_B.weight" in text
  assert "layers.1.self_attn.q_proj.lora_A.weight: shape [3, 64], expected [2, 64]" in text
  assert "lora_magnitude_vector" in text


def test_missing_files_are_named(tmp_path, toy_config):
  with pytest.raises(FileNotFoundError, match="adapter_config.json"):
    peft_io.load_peft(tmp_path, toy_config)


def test_bfloat16_adapter_file_loads(exported, toy_config):
  torch = pytest.importorskip("torch")
  import safetensors.torch
  weights = exported / peft_io.WEIGHTS_NAME
  f32 = peft_io.load_peft(exported, toy_config)
  tensors = {k: v.to(torch.bfloat16) for k, v in safetensors.torch.load_file(weights).items()}
  safetensors.torch.save_file(tensors, weights)  # PEFT models saved in bf16 write this
  bf16 = peft_io.load_peft(exported, toy_config)
  for module in f32["layers"]:
    for part in ("a", "b"):
      np.testing.assert_allclose(bf16["layers"][module][part], f32["layers"][module][part],
                                 rtol=1e-2, atol=1e-6)
