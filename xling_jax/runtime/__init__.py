"""What every run needs around the model: platform selection and multi-process joins
(`platform`), atomic writes (`io`), progress lines, errors, hub ids, meshes and shardings,
batching, and the orbax checkpoints of the trainers.

May import: `xling_jax.model`, `xling_jax.kernels`.
"""
