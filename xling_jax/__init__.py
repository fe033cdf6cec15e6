"""xling-jax: measure and repair cross-lingual disparities inside Gemma 2, 3 and 4, in JAX.

The names below are the API a notebook needs; each is the function or class of the module it
comes from (imported on first use, so `import xling_jax` stays cheap):

    import xling_jax as xj
    model = xj.load_model("gemma3-270m")            # ModelSetup: params, config, tokenizer, mesh
                                                    # (or config="toy_gemma4": random weights)
    corpus = xj.load_corpus("flores200/", ["en", "hi", "ml"], max_sentences=200)
    saes = xj.load_saes(model, "random", width=4096)   # or Gemma Scope (2) / our trained SAEs
    result = xj.analyze(model, saes, corpus)        # .gaps, .band_summary, .record, .write(dir)
    out = xj.forward(model.params, model.config, tokens, mask)   # every layer's residual, logits
    scores = xj.evaluate(model, xj.EvalConfig(tasks=("arc",), langs=("en", "hi"), data_dir=...))
    run = xj.finetune(model, saes, corpus, "ml", out="lora_ml")   # activation-aware LoRA

`load_model()` and `load_saes(model)` without arguments give the toy model with random SAEs
(no download). SAE training (`sae.train`) and the study (`python -m bin.study`) keep their own
modules.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_model": "xling_jax.model_setup",
    "ModelSetup": "xling_jax.model_setup",
    "load_saes": "xling_jax.model_setup",
    "SAESetup": "xling_jax.model_setup",
    "load_corpus": "xling_jax.data.corpora",
    "ParallelCorpus": "xling_jax.data.corpora",
    "analyze": "xling_jax.analysis.run",
    "AnalysisConfig": "xling_jax.analysis.run",
    "Analysis": "xling_jax.analysis.run",
    "forward": "xling_jax.model_setup",
    "ModelConfig": "xling_jax.model.config",
    "preset": "xling_jax.model.presets",
    "evaluate": "xling_jax.evaluation.run",
    "EvalConfig": "xling_jax.evaluation.run",
    "finetune": "lora.finetune",
    "LoraConfig": "lora.lora",
    "ObjectiveConfig": "lora.objectives",
    "TrainConfig": "lora.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'xling_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))
