"""Settings of a JumpReLU SAE training run: one frozen dataclass, every default with its source.

Sources (none of the Gemma Scope papers' own text could be read; these are the implementations
and threads that quote them):
  * DL: dictionary_learning's `trainers/jumprelu.py` ("parameters from the paper");
  * SL: SAELens 6.54 `JumpReLUTrainingSAE`, `SAETrainer`, `TrainingSAEConfig`;
  * SL#494: SAELens issue 494 (the bandwidth is tuned for inputs with E||x||^2 = 1);
  * GS1: the `hparams.json` files of HF `google/gemma-scope-9b-pt-res` (sparsity_lambda range),
    and the Gemma Scope paper's token counts as summarised in shared/reference/gemma3_scope2.md;
  * LW: chanind, "Anthropic's JumpReLU training method is really good", LessWrong, 2025-10-03;
  * OAI: Gao et al., "Scaling and evaluating sparse autoencoders" (arXiv 2406.04093), fig. 3.
Settings marked "ours" have no source we could verify; the value is what the tests train with,
or what the measurement quoted beside it supports.
"""
from __future__ import annotations

import dataclasses
import math

from xling_jax.runtime import validate

SPARSITY_MODES = ("step", "quadratic", "tanh")
THRESHOLD_PARAMS = ("direct", "log")
# Per-mode l0_coefficient when none is given. step: GS1's sparsity_lambda range is 1e-4..1e-3
# in normalised units; tanh counts like step (tanh(.) ~ 1 per active feature); quadratic: SL's
# default (its penalty 2/t * (l0 - t)^2 is O(t) already, and it only ever reaches the threshold).
DEFAULT_L0_COEFFICIENT = {"step": 1e-3, "tanh": 1e-3, "quadratic": 1.0}
# The default learning rate, scaled to the run's length (see "Optimiser" below).
REFERENCE_LR = 7e-5
REFERENCE_STEPS = 1_000_000
MAX_LR = 5e-3


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

  Optimiser: Adam(b1 `adam_b1` = 0, b2 0.999, eps 1e-8) [DL], global-norm clipping per layer
  at `clip_norm` [SL 1.0, hard-coded there]. Peak learning rate `lr`; None (the default) scales
  it to the run's length, `peak_lr` = min(MAX_LR, REFERENCE_LR * sqrt(REFERENCE_STEPS / steps)):
    * REFERENCE_LR 7e-5 at REFERENCE_STEPS 1M is DeepMind's setting [DL "parameters from the
      paper"; the GS 9b commit message] for its run length (GS1: 4B tokens at 16k width, in
      batches of 4096 [SL's default; GS's batch size is unverified] = ~1M steps). Adam moves
      each weight by about lr per step, so 7e-5 leaves a short run near its init: the
      thresholds (init 0.001) do not rise and L0 stays high (GDM-style JumpReLU training "needs
      ~2 billion tokens", its L0 barely moving before ~1B [LW]);
    * the 1/sqrt(steps) scaling is the textbook fixed-horizon step size of (sub)gradient
      descent, eta = R / (L sqrt(T)) for T steps (e.g. Bubeck, "Convex Optimization: Algorithms
      and Complexity", 2015, sec. 3.1); applying it to Adam on SAEs is ours. The sweep below
      backs it: the scaled rate converges from 270 to 10,000 steps and the fixed 7e-5 does
      not; a 1/steps rule fitted at 270 steps would also do at 2000, but not reach DeepMind's
      7e-5 at 1M steps (it gives ~1e-6 there);
    * MAX_LR 5e-3 [ours]: the best rate at 270 steps below (1e-2 already loses FVU).
  Measured on the issue-25 synthetic data (d 48, tokens = 3 of 384 random unit atoms with
  magnitudes U(0.5, 1.5) + noise 0.01; quadratic penalty, target L0 3; "recovered": atoms with
  a decoder row at cosine > 0.9) [ours]:
      width  steps x batch   lr                 L0     FVU    recovered
      4096    270 x 512      7e-5 (old default) 662    0.38   0%
      4096    270 x 512      2e-3               8.6    0.20   92%
      4096    270 x 512      4.3e-3 (scaled)    3.59   0.19   100%
      4096    270 x 512      5e-3               3.05   0.21   100%
      4096    270 x 512      1e-2 / 2e-2        4.3/5.4 0.40/0.66 91%/18%
      1024    270 x 512      4.3e-3 (scaled)    2.49   0.20   99%
      4096   2000 x 512      5e-4 / 1e-3        3.8/3.1 0.17/0.18 100%/100%
      4096   2000 x 512      1.6e-3 (scaled)    2.95   0.20   100%
      4096   2000 x 512      3e-3 / 5e-3        2.9/3.4 0.22/0.42 100%/98%
      4096   6000 x 1024     7e-5 (old default) 11.6   0.20   41%
      4096   6000 x 1024     9.0e-4 (scaled)    2.95   0.19   100%
      1024  10000 x 256      7e-5 (old default) 10.0   0.22   35%
      1024  10000 x 256      7e-4 (scaled)      3.09   0.18   100%
  The width does not enter the rule: DeepMind trains every width (16k to 1M) at 7e-5. (OpenAI's
  TopK rule, lr 2e-4 / sqrt(width / 2^14) [OAI, as in EleutherAI sparsify's and DL's TopK
  trainers], is for a different activation and was not measured here.)
  The LR warms up linearly over `lr_warmup_steps` (None: min(1000 [DL], steps // 10)) and decays
  linearly to 0 over the last `lr_decay_fraction` of the steps [ours, 0.2]. The sparsity
  coefficient warms up linearly from 0 over `sparsity_warmup_steps` (None: min(2000 [DL],
  steps // 5)), SL's schedule: c * min((step + 1) / warmup, 1); both warm-ups thus scale with
  short runs (the tenth and fifth are ours). `batch_size` tokens per step [SL 4096; GS's is
  unverified].

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
  lr: float | None = None
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
    validate.fields(self)  # types, and every number finite
    bad = []
    positive = ("width", "steps", "batch_size", "bandwidth", "decoder_init_norm", "tanh_scale",
                "adam_eps", "clip_norm", "norm_batches", "dead_window", "feature_window",
                "save_every", "max_to_keep", "log_every")
    bad += [f"{k}={getattr(self, k)} (must be > 0)" for k in positive if not getattr(self, k) > 0]
    if self.lr is not None and not self.lr > 0:
      bad.append(f"lr={self.lr} (must be > 0)")
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
  def peak_lr(self) -> float:
    """The learning rate after warm-up: `lr`, or when None the run-length rule above."""
    if self.lr is not None:
      return self.lr
    return min(MAX_LR, REFERENCE_LR * math.sqrt(REFERENCE_STEPS / self.steps))

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
