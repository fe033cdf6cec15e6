# What a LoRA step's backward pass recomputes unless told (model.scan_blocks' `remat`): keeping
# only the weight matmuls' outputs moves less memory than keeping every intermediate, and on the
# 2-core CPU a step takes 0.9x the time (Gemma "small", batch 4 x 128). Defined here, not in
# train.py, so that the CLIs' flags can default to it without importing JAX.
DEFAULT_REMAT = "dots"
