"""Random JumpReLU SAEs calibrated to a model's residual scale: the toy set-up's SAEs, and any
model's with `--sae_dir=random`. Numbers from them describe no trained dictionary."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sae import jumprelu
from xling_jax.model import transformer as model_lib

TOY_SAE_WIDTH = 256
NOTE = ("RANDOM SAEs: {description} stand in for trained ones. The activations, gaps and "
        "features exercise the pipeline; they say nothing about what the model represents.")


def notes(setup, saes) -> tuple[str, ...]:
  """What the outputs of a run of `setup` (a `model_setup.ModelSetup`) with `saes` (an
  `SAESetup`) must say first: the toy model (whose note covers its random SAEs), or random SAEs
  on a real model."""
  from xling_jax.model import presets
  if setup.is_toy:
    return (presets.toy_note(setup.config),)
  return (NOTE.format(description=saes.description),) if saes.random else ()


def title_prefix(toy: bool, random_saes: bool) -> str:
  """How a report's or figure's title starts, so that the first thing read says what made it:
  'TOY model, random SAEs: ', 'TOY model: ', 'RANDOM SAEs: ' or nothing."""
  return {(True, True): "TOY model, random SAEs: ", (True, False): "TOY model: ",
          (False, True): "RANDOM SAEs: ", (False, False): ""}[bool(toy), bool(random_saes)]


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
