"""`--config=configs/toy.py` (or `--config=toy`): the toy Gemma-2 preset."""
from xling_jax.model import config as config_lib, presets


def get_config(**overrides) -> config_lib.ModelConfig:
  return presets.toy(**overrides)
