"""The Gemma architecture, ground floor: the config as data (`config`, `presets`), the parameter
table (`layout`), the forward pass over stacked layers (`transformer`), analytic FLOPs (`flops`).

May import: `xling_jax.kernels` only.
"""
