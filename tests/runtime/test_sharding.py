"""Scoring on 8 fake CPU devices with replicated, FSDP and tensor-parallel params == one device.
(The analysis counterpart lives in test_activations.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_on_fake_devices
from xling_jax.runtime import sharding

_SCRIPT = r"""
import json
import jax
jax.config.update("jax_default_matmul_precision", "highest")
from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.evaluation import scoring
from xling_jax.model import presets, transformer
from xling_jax.runtime import sharding
assert len(jax.devices()) == 8
config = presets.toy()
params = transformer.init_params(config, jax.random.PRNGKey(0))
tok = toy_tokenizer(config.vocab_size)
items = [scoring.encode_item(tok, "Question: Which planet is largest?\nAnswer:",
                             [" Jupiter", " Mars", " a small grey moon"]),
         scoring.encode_item(tok, "प्रश्न: पानी किस तापमान पर उबलता है?\nउत्तर:",
                             [" सौ डिग्री सेल्सियस", " शून्य"])]
out = {"single": scoring.score(params, config, items, batch_size=8).loglikelihoods}
mesh = sharding.make_mesh((2, 4))
for mode in sharding.PARAM_MODES:
  placed = sharding.shard_params(params, mesh, mode)
  # batch 3 rounds up to the data axis (2): rows are split over devices, filler rows ignored.
  out[mode] = scoring.score(placed, config, items, batch_size=3, mesh=mesh).loglikelihoods
  out[mode + "_spec"] = str(placed["layers"]["gate"].sharding.spec)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_scoring_under_every_param_sharding_matches_one_device():
  out = run_on_fake_devices(_SCRIPT)
  assert "model" in out["fsdp_spec"] and "model" in out["tensor_spec"]
  for mode in sharding.PARAM_MODES:
    for got, want in zip(out[mode], out["single"]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=mode)


def test_mesh_shape_must_match_devices():
  with pytest.raises(ValueError, match="needs 8 devices"):
    sharding.make_mesh((2, 4))


_TRAIN_SCRIPT = r"""
import json, tempfile
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
from lora import data, lora as lora_lib, objectives, train
from sae import jumprelu
from xling_jax.data import corpora
from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.model import presets, transformer
from xling_jax.runtime import sharding
assert len(jax.devices()) == 8
config = presets.toy()
params = transformer.init_params(config, jax.random.PRNGKey(0))
corpus = corpora.load_corpus("embedded", ("es", "en"))
split = data.ParallelSplit(corpus.sentences["es"][:12], corpus.sentences["en"][:12])
tc = train.TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, bucket=32, save_every=3)
stream = data.BatchStream(split, toy_tokenizer(config.vocab_size), tc)
saes = jumprelu.random_params(jax.random.PRNGKey(7), config.d_model, 64, n_layers=1, input_std=2.0)
lc = lora_lib.LoraConfig(rank=2, alpha=4, modules=("q", "up"))
obj = objectives.ObjectiveConfig(layers=(1,), w_align=1.0, w_retain=1.0, w_lm=0.5)
out = {}
mesh = sharding.make_mesh((2, 4))
for name, m, p in (("single", None, params), ("mesh", mesh, sharding.shard_params(params, mesh, "fsdp"))):
  with tempfile.TemporaryDirectory() as d:
    res = train.train(p, config, saes, stream, lc, obj, tc, d, echo=lambda _: None, mesh=m)
  out[name] = [np.asarray(res.adapter["layers"][mod][ab]).ravel().tolist()
               for mod in ("q", "up") for ab in ("a", "b")]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_lora_training_split_over_8_devices_matches_one_device():
  out = run_on_fake_devices(_TRAIN_SCRIPT)
  for got, want in zip(out["mesh"], out["single"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert any(np.abs(b).max() > 0 for b in out["single"][1::2])  # B moved: training happened


_GEMMA4_SCRIPT = r"""
import json
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import jax.numpy as jnp
import numpy as np
from xling_jax.model import presets, transformer
from xling_jax.runtime import batching, sharding
assert len(jax.devices()) == 8
out = {}
forward = jax.jit(transformer.forward, static_argnums=1)
for name in ("toy_gemma4_moe", "toy_gemma4"):
  config = presets.preset(name)
  params = transformer.init_params(config, jax.random.PRNGKey(0), scale=0.1)
  tokens = np.random.default_rng(0).integers(3, 384, (8, 12))
  mask = np.ones((8, 12), np.int32); mask[1, :4] = 0; mask[2, 9:] = 0
  single = forward(params, config, jnp.asarray(tokens), jnp.asarray(mask))
  mesh = sharding.make_mesh((2, 2, 2))
  assert batching.batch_rows(3, 10, mesh) == 4  # rows split over data x expert
  place = batching.placer(mesh)
  for mode in sharding.PARAM_MODES:
    placed = sharding.shard_params(params, mesh, mode)
    got = forward(placed, config, place(tokens), place(mask))
    real = mask.astype(bool)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    out[f"{name}/{mode}"] = max(
        rel(np.asarray(got.logits)[real], np.asarray(single.logits)[real]),
        rel(np.asarray(got.residuals)[:, real], np.asarray(single.residuals)[:, real]))
    if "moe" in name:
      out[f"{mode}_expert_spec"] = str(placed["layers"]["expert_gate"].sharding.spec)
    else:
      out[f"{mode}_group_spec"] = str(placed["groups"]["global"]["q"].sharding.spec)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_gemma4_experts_split_over_the_expert_axis_match_one_device():
  """Gemma 4 on a (data 2, model 2, expert 2) mesh of 8 fake CPU devices: the MoE toy's
  experts split over `expert` in every mode (with heads / widths over `model`), the dense toy's
  per-group stacks sharded like the uniform ones; every layer and the logits equal one device."""
  out = run_on_fake_devices(_GEMMA4_SCRIPT)
  for mode in sharding.PARAM_MODES:
    assert "expert" in out[f"{mode}_expert_spec"]
    for name in ("toy_gemma4_moe", "toy_gemma4"):
      assert out[f"{name}/{mode}"] < 1e-5, (name, mode, out[f"{name}/{mode}"])
  assert "model" in out["tensor_expert_spec"] and "model" in out["fsdp_expert_spec"]
  assert "model" in out["tensor_group_spec"] and "model" in out["fsdp_group_spec"]


def test_mesh_with_an_expert_axis():
  import jax
  mesh = sharding.make_mesh((1, 1), devices=jax.devices()[:1])
  assert mesh.axis_names == (sharding.DATA, sharding.MODEL, sharding.EXPERT)
  assert sharding.data_shards(mesh) == 1
  from xling_jax.model import presets
  specs = sharding.config_param_shardings(presets.toy_gemma4_moe(), mesh, "fsdp")
  assert specs["layers"]["expert_up"].spec == sharding.P()  # one device: nothing to split
  with pytest.raises(ValueError, match="expected \\(data, model\\)"):
    sharding.make_mesh((1,), devices=jax.devices()[:1])
