"""Gemma weights in and out, one module per format (`hf` + `hf_config`, `kaggle`, `gguf_file`,
`ours`), the format-independent stacked reader (`stacked`), the one safetensors reader
(`safetensors_io`), packaged weights (`weights_package`) and `resolve` (path, package or hub id
-> format -> params). The names below are the loaders' public face.

May import: `xling_jax.model`, `xling_jax.runtime`.
"""
from xling_jax.checkpoints.gguf_file import load_gguf
from xling_jax.checkpoints.hf import load_hf, save_hf
from xling_jax.checkpoints.kaggle import load_kaggle, save_kaggle
from xling_jax.checkpoints.ours import load_ours, save_params
from xling_jax.checkpoints.resolve import (detect_format, load_params, read_config,
                                           resolve_checkpoint)
from xling_jax.checkpoints.safetensors_io import read_safetensors

__all__ = ["detect_format", "load_gguf", "load_hf", "load_kaggle", "load_ours", "load_params",
           "read_config", "read_safetensors", "resolve_checkpoint", "save_hf", "save_kaggle",
           "save_params"]
