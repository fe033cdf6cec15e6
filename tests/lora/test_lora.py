"""LoRA adapters: a fresh adapter is an exact no-op, merging equals applying, configs validate."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lora import lora as lora_lib
from tests.helpers import random_adapter
from xling_jax.model import transformer as model_lib


def _batch(vocab, seq=20, seed=1):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, size=(3, seq)).astype(np.int32)
  tokens[:, 0] = 2
  mask = np.ones((3, seq), np.int32)
  mask[1, 13:] = 0  # right padding
  tokens = np.where(mask == 1, tokens, 0)
  return jnp.asarray(tokens), jnp.asarray(mask)


def test_fresh_adapter_is_bit_identical(toy_params, toy_config):
  tokens, mask = _batch(toy_config.vocab_size)
  adapter = lora_lib.init_adapter(toy_config, lora_lib.LoraConfig(rank=4, alpha=8))
  assert all(float(jnp.abs(ab["a"]).max()) > 0 for ab in adapter["layers"].values())
  base = model_lib.jit_forward(toy_params, toy_config, tokens, mask)
  with_lora = model_lib.jit_forward(toy_params, toy_config, tokens, mask,
                                       hook=lora_lib.project_hook(adapter))
  np.testing.assert_array_equal(np.asarray(with_lora.logits), np.asarray(base.logits))
  np.testing.assert_array_equal(np.asarray(with_lora.residuals), np.asarray(base.residuals))


@pytest.mark.parametrize("modules,layers", [
    (("q", "k", "v", "o", "gate", "up", "down"), None),
    (("q", "o", "down"), (1, 3)),
])
def test_merge_equals_applying_the_adapter(toy_params, toy_config, modules, layers):
  tokens, mask = _batch(toy_config.vocab_size)
  cfg = lora_lib.LoraConfig(rank=4, alpha=8, modules=modules, layers=layers)
  adapter = random_adapter(toy_config, cfg)
  applied = model_lib.jit_forward(toy_params, toy_config, tokens, mask,
                                       hook=lora_lib.project_hook(adapter))
  merged = model_lib.jit_forward(lora_lib.merge(toy_params, adapter, toy_config), toy_config, tokens, mask)
  base = model_lib.jit_forward(toy_params, toy_config, tokens, mask)
  real = np.asarray(mask, bool)
  err = np.abs(np.asarray(merged.logits) - np.asarray(applied.logits))[real].max()
  change = np.abs(np.asarray(base.logits) - np.asarray(applied.logits))[real].max()
  assert change > 1e-2, "the random adapter should change the output"
  assert err < 1e-4 * change + 1e-6, (err, change)
  merged_params = lora_lib.merge(toy_params, adapter, toy_config)
  for name in lora_lib.LORA_MODULES:  # untouched weights stay bit-identical
    if name not in modules:
      np.testing.assert_array_equal(merged_params["layers"][name], toy_params["layers"][name])


def test_inactive_layers_are_zero_in_a_and_b(toy_config):
  cfg = lora_lib.LoraConfig(rank=2, alpha=4, modules=("q", "down"), layers=(2,))
  adapter = lora_lib.init_adapter(toy_config, cfg)
  np.testing.assert_array_equal(lora_lib.layer_mask(toy_config, cfg), [0, 0, 1, 0])
  assert set(adapter["layers"]) == {"q", "down"}
  assert adapter["scale"] == 2.0
  for module, ab in adapter["layers"].items():
    d_in, d_out = lora_lib.module_dims(toy_config, module)
    assert ab["a"].shape == (4, d_in, 2) and ab["b"].shape == (4, 2, d_out)
    assert float(jnp.abs(ab["a"][np.array([0, 1, 3])]).max()) == 0.0
    assert float(jnp.abs(ab["b"]).max()) == 0.0
    bound = 1 / np.sqrt(d_in)  # PEFT's kaiming_uniform_(a=sqrt(5)) bound for nn.Linear(in, r)
    assert 0.5 * bound < float(jnp.abs(ab["a"][2]).max()) <= bound


def test_config_validation(toy_config):
  with pytest.raises(ValueError, match="subset"):
    lora_lib.LoraConfig(modules=("q", "lm_head"))
  with pytest.raises(ValueError, match="rank"):
    lora_lib.LoraConfig(rank=0)
  with pytest.raises(ValueError, match="out of range"):
    lora_lib.init_adapter(toy_config, lora_lib.LoraConfig(layers=(0, 4)))
  assert lora_lib.LoraConfig(modules=("v", "q")).modules == ("q", "v")


def test_check_adapter_names_the_bad_module(toy_config):
  adapter = lora_lib.init_adapter(toy_config, lora_lib.LoraConfig(rank=2, modules=("q", "up")))
  adapter["layers"]["up"]["b"] = jnp.zeros((4, 2, 99))
  with pytest.raises(ValueError, match=r"up: a \(4, 64, 2\), b \(4, 2, 99\)"):
    lora_lib.check_adapter(adapter, toy_config)


def test_default_objective_layer_follows_the_model_it_trains():
  from lora import objectives
  from xling_jax.model import presets
  default = objectives.ObjectiveConfig()
  assert default.for_model(presets.gemma2_2b()).layers == (20,)  # the paper's layer
  assert default.for_model(presets.gemma3_270m()).layers == (14,)  # same depth, 18 layers
  assert default.for_model(presets.toy()).layers == (2,)
  with pytest.raises(ValueError, match="objective layers \\[20\\] out of range for a 18-layer"):
    objectives.ObjectiveConfig(layers=(20,)).for_model(presets.gemma3_270m())
