"""Training JumpReLU SAEs (the Gemma Scope recipe) in JAX, for one or several layers at once.

    config     SAETrainConfig: every setting, each default with its source
    ste        the threshold's straight-through estimators (jax.custom_vjp)
    params     the trained tree, its init, and its map to sae.jumprelu.JumpReLUParams
    objective  the loss of one SAE on one batch (SAELens's, term for term)
    normalize  the fixed input scalar (E||x||^2 = 1) and its folding into saved weights
    optim      Adam, gradient clipping, LR and sparsity-coefficient schedules
    features   dead / dense feature tracking
    step       the training state and the update, mapped over layers
    sources    where activations come from (interface, .npy files, the size check)
    harvest    model residuals over a corpus through a shuffling buffer
    loop       checkpoints, resume, NaN stop, logging, final evaluation and outputs
    report     per-layer JSON and PNG reports
"""
