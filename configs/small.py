"""`--config=configs/small.py` (or `--config=small`): the small Gemma-2 preset."""
from xling_jax.model import config as config_lib, presets


def get_config(**overrides) -> config_lib.ModelConfig:
  return presets.small(**overrides)
