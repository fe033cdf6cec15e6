"""The disparity analysis: SAE statistics on the device (`sae_stats`), their corpus sums
(`corpus_stats`), gaps, bands and bootstrap intervals (`disparity`), the report files
(`report`), tokenisation cost and bits per character (`intrinsic`), and `run.analyze`, the call
behind `bin.analyze` and `xj.analyze`.

May import: `sae`, `xling_jax.evaluation` (scoring, for bits per character), and everything
below them (`data`, `checkpoints`, `runtime`, `model`, `kernels`).
"""
