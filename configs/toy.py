"""`--config=configs/toy.py` (or `--config=toy`): the toy Gemma-2 preset."""
from xling_jax import config as config_lib


def get_config(**overrides) -> config_lib.ModelConfig:
  return config_lib.toy(**overrides)
