"""Kernel seams: operations with a plain-JAX reference and fused Pallas implementations.

    attention   flash attention with Gemma 2's logit softcap and arbitrary boolean masks
    sae_stats   JumpReLU encode + per-row sums, without writing the [tokens, W] pre-activations

Each takes `impl=None` (the process-wide choice in `select`: environment XLING_ATTENTION /
XLING_SAE_STATS, or `select.set_impl`; "auto" = the reference until a backend's fused kernels
are validated on hardware, `select.VALIDATED`). The model and the statistics call these seams, never a kernel directly.
"""
