"""Settings of a JumpReLU SAE training run: one frozen dataclass, every default with its source.

Sources (none of the Gemma Scope papers' own text could be read; these are the implementations
and threads that quote them):
  * DL: dictionary_learning's `trainers/jumprelu.py` ("parameters from the paper");
  * SL: SAELens 6.54 `JumpReLUTrainingSAE`, `SAETrainer`, `TrainingSAEConfig`;
  * SL#494: SAELens issue 494 (the bandwidth is tuned for inputs with E||x||^2 = 1);
  * GS1: the `hparams.json` files of HF `google/gemma-scope-9b-pt-res` (sparsity_lambda range).
Settings marked "ours" have no source we could verify; the value is what the tests train with.
"""
from __future__ import annotations

import dataclasses

SPARSITY_MODES = ("step", "quadratic", "tanh")
THRESHOLD_PARAMS = ("direct", "log")
# Per-mode l0_coefficient when none is given. step: GS1's sparsity_lambda range is 1e-4..1e-3
# in normalised units; tanh counts like step (tanh(.) ~ 1 per active feature); quadratic: SL's
# default (its penalty 2/t * (l0 - t)^2 is O(t) already, and it only ever reaches the threshold).
DEFAULT_L0_COEFFICIENT = {"step": 1e-3, "tanh": 1e-3, "quadratic": 1.0}


@dataclasses.dataclass(frozen=True)
class SAETrainConfig:
  """One run; all layers trained together share it.

  Model (`sae.jumprelu`): width W features; threshold init `init_threshold` [DL 0.001];
  decoder rows drawn in random directions with norm `decoder_init_norm` [SL 0.1], encoder =
  decoder transposed [SL], biases 0 [SL, DL]. `threshold_param`: "direct" trains θ itself and
  clips it at 0 after each update [SL; Adam moves a parameter ~lr per step, so "log" (DeepMind's
  log θ, quoted in SL PR 718) barely moves a small init within lr * steps, SL#494]; "log" trains
  log θ.

  Loss: ||x - x_hat||^2 summed over d, batch mean, plus the sparsity term, on inputs scaled to
  E||x||^2 = 1 (`norm_batches` batches estimate the scalar [DL get_norm_factor]). `sparsity`:
    "step"      l0_coefficient * mean_b L0_b (DeepMind's L0 penalty; [SL "step"]);
    "quadratic" l0_coefficient * mean_b 2/target_l0 * (L0_b - target_l0)^2 (Gemma Scope 2's
                penalty around a target, SL's form; the GS2 report's exact form is unverified);
    "tanh"      l0_coefficient * mean_b sum_j tanh(tanh_scale * f_bj * ||W_dec_j||) [SL 4.0].
  L0_b counts features through the Step STE, so that term's gradient reaches only θ (unless
  `ste_to_input`). `bandwidth` ε [DL 0.001, tuned for E||x||^2 = 1, SL#494]. `pre_act_coefficient`
  > 0 adds SL's pre-activation loss on dead features (Anthropic suggests 3e-6; 0 = off [SL None]).

  Optimiser: Adam(b1 `adam_b1` = 0, b2 0.999, eps 1e-8) [DL], lr `lr` 7e-5 [DL; the GS 9b
  commit message], global-norm clipping per layer at `clip_norm` [SL 1.0, hard-coded there].
  The LR warms up linearly over `lr_warmup_steps` (None: min(1000 [DL], steps // 10)) and decays
  linearly to 0 over the last `lr_decay_fraction` of the steps [ours, 0.2]. The sparsity
  coefficient warms up linearly from 0 over `sparsity_warmup_steps` (None: min(2000 [DL],
  steps // 5)), SL's schedule: c * min((step + 1) / warmup, 1). `batch_size` tokens per step
  [SL 4096; GS's is unverified].

  Feature statistics (see `features`): a feature is dead once it has not fired on any token of
  the last `dead_window` steps [SL dead_feature_window 1000]; dense when it fired on more than
  `dense_threshold` of the tokens of the last completed `feature_window`-step window [ours:
  0.1, the JumpReLU paper's "high-frequency" cut-off as we recall it, unverified].

  Bookkeeping: checkpoint every `save_every` steps (and at the end), keep `max_to_keep`; log
  the means over each `log_every` steps; `eval_batches` batches after the training data give
  the final report's metrics; `seed` draws the init and the data order.
  """
  width: int = 4096
  steps: int = 10_000
  batch_size: int = 4096
  sparsity: str = "step"
  l0_coefficient: float | None = None
  target_l0: float | None = None
  bandwidth: float = 0.001
  init_threshold: float = 0.001
  threshold_param: str = "direct"
  decoder_init_norm: float = 0.1
  ste_to_input: bool = False
  tanh_scale: float = 4.0
  pre_act_coefficient: float = 0.0
  lr: float = 7e-5
  adam_b1: float = 0.0
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  clip_norm: float = 1.0
  lr_warmup_steps: int | None = None
  lr_decay_fraction: float = 0.2
  sparsity_warmup_steps: int | None = None
  norm_batches: int = 16
  dead_window: int = 1000
  dense_threshold: float = 0.1
  feature_window: int = 1000
  eval_batches: int = 4
  save_every: int = 1000
  max_to_keep: int = 2
  log_every: int = 100
  seed: int = 0

  def __post_init__(self):
    bad = []
    positive = ("width", "steps", "batch_size", "bandwidth", "decoder_init_norm", "tanh_scale",
                "lr", "adam_eps", "clip_norm", "norm_batches", "dead_window", "feature_window",
                "save_every", "max_to_keep", "log_every")
    bad += [f"{k}={getattr(self, k)} (must be > 0)" for k in positive if not getattr(self, k) > 0]
    non_negative = ("init_threshold", "pre_act_coefficient", "eval_batches")
    bad += [f"{k}={getattr(self, k)} (must be >= 0)" for k in non_negative
            if not getattr(self, k) >= 0]
    if self.sparsity not in SPARSITY_MODES:
      bad.append(f"sparsity={self.sparsity!r} (choose one of {', '.join(SPARSITY_MODES)})")
    if self.threshold_param not in THRESHOLD_PARAMS:
      bad.append(f"threshold_param={self.threshold_param!r} (choose direct or log)")
    if self.threshold_param == "log" and not self.init_threshold > 0:
      bad.append("init_threshold must be > 0 with threshold_param='log'")
    if self.sparsity == "quadratic":
      if self.target_l0 is None:
        bad.append("sparsity='quadratic' needs target_l0")
      elif not 0 < self.target_l0 <= self.width:
        bad.append(f"target_l0={self.target_l0} (needs 0 < target_l0 <= width={self.width})")
    elif self.target_l0 is not None:
      bad.append(f"target_l0 is only used by sparsity='quadratic' (sparsity={self.sparsity!r})")
    if self.l0_coefficient is not None and not self.l0_coefficient >= 0:
      bad.append(f"l0_coefficient={self.l0_coefficient} (must be >= 0)")
    for name in ("adam_b1", "adam_b2"):
      if not 0 <= getattr(self, name) < 1:
        bad.append(f"{name}={getattr(self, name)} (needs 0 <= {name} < 1)")
    if not 0 <= self.lr_decay_fraction <= 1:
      bad.append(f"lr_decay_fraction={self.lr_decay_fraction} (needs 0 <= fraction <= 1)")
    if not 0 < self.dense_threshold <= 1:
      bad.append(f"dense_threshold={self.dense_threshold} (needs 0 < threshold <= 1)")
    for name in ("lr_warmup_steps", "sparsity_warmup_steps"):
      value = getattr(self, name)
      if value is not None and not 0 <= value <= self.steps:
        bad.append(f"{name}={value} (needs 0 <= {name} <= steps={self.steps})")
    if bad:
      raise ValueError(f"invalid SAETrainConfig: {'; '.join(bad)}")

  @property
  def l0_coef(self) -> float:
    """The sparsity coefficient after warm-up (the per-mode default when none was given)."""
    if self.l0_coefficient is not None:
      return self.l0_coefficient
    return DEFAULT_L0_COEFFICIENT[self.sparsity]

  @property
  def lr_warmup(self) -> int:
    return min(1000, self.steps // 10) if self.lr_warmup_steps is None else self.lr_warmup_steps

  @property
  def sparsity_warmup(self) -> int:
    if self.sparsity_warmup_steps is None:
      return min(2000, self.steps // 5)
    return self.sparsity_warmup_steps

  @property
  def lr_decay_steps(self) -> int:
    return int(round(self.lr_decay_fraction * self.steps))

  @property
  def eval_tokens(self) -> int:
    return self.eval_batches * self.batch_size
