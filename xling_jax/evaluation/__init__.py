"""Benchmark scoring as lm-evaluation-harness does it: items (`benchmark_items`), prompt
templates (`prompts`), log-likelihood scoring (`scoring`), and `run.evaluate`, the call behind
`bin.evaluate` and `xj.evaluate` (an adapter enters as a `ProjectHook`).

May import: `xling_jax.data`, `runtime`, `model`, `kernels`; never `sae` or `lora`.
"""
