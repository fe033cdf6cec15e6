"""Random JumpReLU SAEs calibrated to a model's residual scale: the toy set-up's SAEs, and any
model's with `--sae_dir=random`. Numbers from them describe no trained dictionary."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sae import jumprelu
from xling_jax.model import transformer as model_lib

TOY_SAE_WIDTH = 256


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
