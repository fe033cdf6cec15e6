"""`--config=configs/gemma2_2b.py` (or `--config=gemma2_2b`): the gemma2_2b Gemma-2 preset."""
from xling_jax.model import config as config_lib, presets


def get_config(**overrides) -> config_lib.ModelConfig:
  return presets.gemma2_2b(**overrides)
