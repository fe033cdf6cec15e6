"""JumpReLU SAEs: the architecture (`jumprelu`), one SAE's files (`formats`), SAEs of many layers
from trees and hub ids (`trees`), the releases as data (`releases`, `releases.json`), calibrated
random SAEs (`random_saes`) and training (`train/`).

May import: `xling_jax.checkpoints` (the safetensors reader), `xling_jax.data`,
`xling_jax.model`, `xling_jax.runtime`.
"""
