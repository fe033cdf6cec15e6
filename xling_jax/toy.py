"""The toy setup the CLIs fall back to with no downloads: random Gemma 2 weights from a seed,
the toy tokenizer, and random JumpReLU SAEs calibrated to the model's residual scale (for any
model: `--sae_dir=random`).

Numbers from this setup describe a randomly initialised toy model, not a released Gemma.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sae import jumprelu
from xling_jax import config as config_lib, model as model_lib

TOY_NOTE = ("TOY RUN: a randomly initialised {family} ({layers} layers, d_model {d_model}), a toy "
            "tokenizer and random SAEs. The numbers exercise the pipeline; they say nothing about "
            "a released Gemma.")


def toy_note(config) -> str:
  family = {"gemma2": "Gemma 2", "gemma3": "Gemma 3"}[config.family]
  return TOY_NOTE.format(family=family, layers=config.n_layers, d_model=config.d_model)


TOY_SAE_WIDTH = 256


def toy_model(seed: int = 0, **overrides):
  """(params, config) of the toy Gemma 2 with weights from `seed`."""
  config = config_lib.toy(**overrides)
  return model_lib.init_params(config, jax.random.PRNGKey(seed)), config


def calibrated_random_saes(params, config, tokenizer, calibration_texts, *,
                           width: int = TOY_SAE_WIDTH, seed: int = 0) -> jumprelu.JumpReLUParams:
  """One random JumpReLU SAE per layer, stacked, each scaled to its layer's residual std on
  `calibration_texts` so that a realistic 5-20% of features fire (as Gemma Scope's do)."""
  enc = tokenizer.encode_batch(list(calibration_texts), add_bos=True, bucket=16)
  resid = model_lib.jit_forward(params, config, jnp.asarray(enc.tokens), jnp.asarray(enc.mask),
                                return_logits=False).residuals
  real = np.asarray(enc.mask, bool) & (np.asarray(enc.tokens) != config.bos_id)
  stds = np.array([np.asarray(resid[l])[real].std() for l in range(config.n_layers)])
  saes = jumprelu.random_params(jax.random.PRNGKey(seed + 1), config.d_model, width,
                                n_layers=config.n_layers)
  scale = jnp.asarray(1.0 / stds, jnp.float32)[:, None, None]
  return saes.replace(W_enc=saes.W_enc * scale)
