"""Helpers that several test modules use (test modules never import each other)."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from lora import lora as lora_lib
from sae import jumprelu
from xling_jax.analysis.corpus_stats import CorpusStats, LanguageSums
from xling_jax.analysis.sae_stats import ROW_SUMS
from xling_jax.model import presets, transformer as model_lib


def toy_model(seed: int = 0, **overrides):
  """(params, config) of the toy Gemma 2 with weights from `seed`."""
  config = presets.toy(**overrides)
  return model_lib.init_params(config, jax.random.PRNGKey(seed)), config


def assert_sae_equal(a: jumprelu.JumpReLUParams, b: jumprelu.JumpReLUParams) -> None:
  """Every leaf of two JumpReLU SAEs (single or stacked) equal, compared as float32."""
  for name in jumprelu.PARAM_NAMES:
    np.testing.assert_array_equal(np.asarray(getattr(a, name), np.float32),
                                  np.asarray(getattr(b, name), np.float32), err_msg=name)


def random_adapter(config, lora_config, seed=3, b_std=0.05):
  """An adapter with nonzero B on its active layers (a trained one, in effect)."""
  adapter = lora_lib.init_adapter(config, lora_config, jax.random.PRNGKey(seed))
  mask = jnp.asarray(lora_lib.layer_mask(config, lora_config))[:, None, None]
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(adapter["layers"]))
  for key, ab in zip(keys, adapter["layers"].values()):
    ab["b"] = jax.random.normal(key, ab["b"].shape) * b_std * mask
  return adapter


def synthetic_stats(n_sentences: int, langs=("en", "hi", "ml"), n_layers=4, width=8,
                    seed=0) -> CorpusStats:
  """Corpus statistics with random sums and no model: for what only reads the sums."""
  rng = np.random.default_rng(seed)
  per_language = {}
  for lang in langs:
    n_tokens = rng.integers(3, 9, n_sentences).astype(np.float64)
    rows = {key: rng.uniform(1, 5, (n_sentences, n_layers)) * n_tokens[:, None]
            for key in (*ROW_SUMS, "direction_activation")}
    per_language[lang] = LanguageSums(rows, n_tokens,
                                      rng.integers(0, 5, (n_layers, width)).astype(np.float64))
  return CorpusStats(tuple(langs), tuple(range(n_layers)), per_language)


def write_arc_items(directory, langs=("en", "hi"), n=3) -> None:
  """`n` three-choice ARC-style items per language, as bin.evaluate --data_dir reads them
  (`directory/arc_challenge/{lang}.jsonl`)."""
  arc = directory / "arc_challenge"
  arc.mkdir(parents=True)
  for lang in langs:
    arc.joinpath(f"{lang}.jsonl").write_text("".join(json.dumps(
        {"id": f"q{i}", "question": f"Question {i} ({lang})?", "choices": ["one", "two", "three"],
         "answer": i % 3}) + "\n" for i in range(n)))


# ---- PEFT parity (the callers skip without torch, transformers and peft) ----------------------

def peft_batch(vocab, seq=20, seed=5):
  """Rows: full length (longer than the toy window), right padded, left padded."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, size=(3, seq))
  mask = np.ones((3, seq), np.int32)
  mask[1, 12:] = 0
  mask[2, :5] = 0
  tokens = np.where(mask == 1, tokens, 0)
  for row in range(3):
    tokens[row, np.argmax(mask[row])] = 2
  return tokens, mask


def hf_base(hf_dir):
  import torch
  import transformers
  return transformers.Gemma2ForCausalLM.from_pretrained(
      hf_dir, attn_implementation="eager", torch_dtype=torch.float32).eval()


def hf_logits(model, tokens, mask):
  import torch
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions))
  return out.logits.numpy()


def our_logits(params, config, tokens, mask, adapter):
  return np.asarray(model_lib.jit_forward(params, config, jnp.asarray(tokens), jnp.asarray(mask),
                                          return_residuals=False,
                                          hook=lora_lib.project_hook(adapter)).logits)


def rel_err(a, b):
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def assert_peft_matches_ours(hf_dir, peft_dir, params, config, adapter):
  """PEFT's logits with `peft_dir` loaded equal ours with `adapter` to 1e-4 (real tokens)."""
  import peft
  tokens, mask = peft_batch(config.vocab_size)
  model = peft.PeftModel.from_pretrained(hf_base(hf_dir), peft_dir).eval()
  theirs = hf_logits(model, tokens, mask)
  ours = our_logits(params, config, tokens, mask, adapter)
  base = our_logits(params, config, tokens, mask, None)
  real = mask.astype(bool)
  assert rel_err(base[real], ours[real]) > 1e-3, "the adapter should change the logits"
  assert rel_err(ours[real], theirs[real]) < 1e-4
