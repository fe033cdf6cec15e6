"""The NNX face (xling_jax/nnx_model.py, lora/nnx_adapter.py) against the functional core: the
same forward outputs, the same loaded params, and LoRA steps through nnx.Optimizer equal to the
functional trainer's."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lora import lora as lora_lib, objectives, peft_io, train
from lora.nnx_adapter import LoraAdapter
from sae import jumprelu
from xling_jax import checkpoints
from xling_jax.model import presets, transformer as model_lib
from xling_jax.nnx_model import Gemma2, Gemma3, Gemma4, GemmaModel

FAMILIES = {"toy": (presets.toy, Gemma2), "toy_gemma3": (presets.toy_gemma3, Gemma3),
            "toy_gemma4": (presets.toy_gemma4, Gemma4),
            "toy_gemma4_moe": (presets.toy_gemma4_moe, Gemma4)}


def _tokens(config, B=2, T=12, seed=0):
  """BOS-first random tokens [B, T] and a mask [B, T] whose second row is right-padded; T
  exceeds the toy window (8), so local layers really drop keys."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, config.ple_vocab_size or config.vocab_size, (B, T)).astype(np.int32)
  tokens[:, 0] = config.bos_id
  mask = np.ones((B, T), np.int32)
  mask[1, T - 3:] = 0
  return jnp.asarray(tokens), jnp.asarray(mask)


def _trained_adapter(config, lora_config, seed=3):
  """An adapter with nonzero B on its active layers (drawn with numpy: jax.random would compile
  for every shape)."""
  adapter = lora_lib.init_adapter(config, lora_config)
  mask = lora_lib.layer_mask(config, lora_config)[:, None, None]
  rng = np.random.default_rng(seed)
  for ab in adapter["layers"].values():
    ab["b"] = jnp.asarray(rng.standard_normal(ab["b"].shape) * 0.05 * mask, jnp.float32)
  return adapter


def _assert_same_output(got, want):
  for name in ("logits", "residuals", "embeddings"):
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@pytest.mark.parametrize("preset", FAMILIES)
def test_module_equals_functional_forward(preset):
  make_config, cls = FAMILIES[preset]
  config = make_config()
  model = GemmaModel.from_config(config, 1)
  assert type(model) is cls and model.config == config
  params = model_lib.init_params(config, jax.random.PRNGKey(1))
  jax.tree.map(np.testing.assert_array_equal, model.params, params)
  assert type(GemmaModel.from_config(config, nnx.Rngs(params=1))) is cls  # a typed key
  tokens, mask = _tokens(config)

  eager = model(tokens, mask)
  _assert_same_output(eager, model_lib.forward(params, config, tokens, mask))
  assert eager.residuals.shape == (config.n_layers, 2, 12, config.d_model)

  jitted = nnx.jit(lambda m, t, a: m(t, a))(model, tokens, mask)
  _assert_same_output(jitted, model_lib.jit_forward(params, config, tokens, mask))

  # A hook reaches the blocks as in the functional call.
  adapter = _trained_adapter(config, lora_lib.LoraConfig(rank=2, alpha=4, layers=(0, 3)))
  hooked = nnx.jit(lambda m, t, lora: m(t, hook=lora.hook()))(model, tokens,
                                                                LoraAdapter(adapter))
  _assert_same_output(hooked, model_lib.jit_forward(params, config, tokens,
                                                    hook=lora_lib.project_hook(adapter)))


@pytest.mark.parametrize("preset", FAMILIES)
def test_from_pretrained_reads_the_saved_params(preset, tmp_path):
  make_config, cls = FAMILIES[preset]
  config = make_config()
  params = model_lib.init_params(config, jax.random.PRNGKey(2))
  checkpoints.save_hf(tmp_path, params, config)

  for loader in (GemmaModel, cls):
    model = loader.from_pretrained(tmp_path)
    assert type(model) is cls and model.config == config
    jax.tree.map(np.testing.assert_array_equal, model.params, params)
  half = cls.from_pretrained(tmp_path, dtype="bfloat16")
  assert {w.dtype for w in jax.tree.leaves(half.params)} == {jnp.dtype("bfloat16")}

  other = Gemma3 if cls is Gemma2 else Gemma2
  with pytest.raises(ValueError, match=f"{other.__name__} is a {other.family} model"):
    other.from_pretrained(tmp_path)
  with pytest.raises(ValueError, match=f"family '{config.family}'"):
    other(params, config)


def test_lora_steps_through_nnx_optimizer_equal_the_functional_trainer(tmp_path):
  """4 steps of clip -> AdamW (weight decay on) -> layer mask with every objective term on,
  through nnx.Optimizer over a LoraAdapter and through train.make_train_step; then the PEFT
  export of the module's adapter."""
  config = presets.toy()
  model = GemmaModel.from_config(config, 0)
  params = model.params
  lora_config = lora_lib.LoraConfig(rank=2, alpha=4, modules=("q", "up", "down"), layers=(1, 2))
  objective = objectives.ObjectiveConfig(layers=(1,), w_align=1.0, w_retain=1.0, w_lm=0.5)
  train_config = train.TrainConfig(steps=10, lr=1e-2, warmup_steps=1, weight_decay=0.01)
  tx = train.make_optimizer(train_config, lora_lib.layer_mask(config, lora_config))
  saes = jumprelu.random_params(jax.random.PRNGKey(7), config.d_model, 64, n_layers=1,
                                input_std=2.0)
  batches = []
  for seed in range(4):
    target, target_mask = _tokens(config, seed=2 * seed)
    ref, ref_mask = _tokens(config, seed=2 * seed + 1)
    batches.append(objectives.Batch(target, target_mask, ref, ref_mask))

  functional_step = train.make_train_step(config, objective, tx, lora_config.scale)
  layers = lora_lib.init_adapter(config, lora_config)["layers"]
  opt_state = tx.init(layers)

  lora = LoraAdapter.init(config, lora_config)
  optimizer = nnx.Optimizer(lora, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, lora, optimizer, saes, batch):
    # The frozen English reference, outside autodiff, as the functional step computes it.
    ref = objectives.reference(model.params, model.config, saes, batch, objective)
    loss = lambda lora: objectives.total_loss(lora.to_adapter(), model.params, model.config,
                                              saes, batch, ref, objective)[0]
    loss_value, grads = nnx.value_and_grad(loss)(lora)
    optimizer.update(lora, grads)
    return loss_value

  for batch in batches:
    layers, opt_state, metrics = functional_step(layers, opt_state, params, saes, batch)
    loss_value = nnx_step(model, lora, optimizer, saes, batch)
    np.testing.assert_allclose(loss_value, metrics["loss"], rtol=1e-6)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6),
                 lora.to_adapter()["layers"], layers)
  assert int(optimizer.step[...]) == len(batches)
  b = np.asarray(lora.layers["q"]["b"][...])
  assert np.abs(b[[1, 2]]).min() > 0 and not b[[0, 3]].any()  # trained, masked layers still

  peft_io.save_peft(tmp_path, lora.to_adapter(), lora_config, config, "xling-jax-toy")
  loaded = peft_io.load_peft(tmp_path, config)
  jax.tree.map(np.testing.assert_array_equal, loaded["layers"], lora.to_adapter()["layers"])
