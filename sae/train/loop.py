"""Train JumpReLU SAEs for every layer of a source at once, with checkpoints, and write them out.

Run directory `out`:

    checkpoints/                orbax, every `save_every` steps and at the end (atomic)
    train_log.jsonl             one record per `log_every` steps: means over those steps
    resid_post/layer_{L}_width_{W}_l0_{l0}/params.safetensors + config.json   (Gemma Scope 2)
    reports/layer_{L}.json + layer_{L}.png          (final report, with `report.flags` warnings)
    saelens/blocks.{L}.hook_resid_post/     (optional: SAELens directories)

`l0` in the folder name is the target L0 in quadratic mode, otherwise the measured one (rounded).
The saved SAEs read raw activations: the normalisation scalar is folded in (`normalize`).

Order of work: validate the settings, the data size and `out` (a directory holding another
run's checkpoints, or anything but this run's files, is refused) before any compute; then
estimate the normalisation on the first `norm_batches` batches (a fresh run) or restore the
latest checkpoint (a resume); train; evaluate the folded SAEs on the `eval_batches` batches that
follow the training data; write the SAEs and the reports.

Exact resume: batch i is a pure function of i (`sources`), and a checkpoint holds the SAEs, the
Adam state, the feature statistics, the normalisation scalars, the step and the running log
sums, so a resumed run computes the same numbers and writes the same log as an uninterrupted one.
A non-finite loss, gradient or weight stops training before anything from that step is saved.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sae import jumprelu, trees
from sae.train import normalize, report as report_lib, step as step_lib
from sae.train.config import SAETrainConfig
from sae.train.sources import ActivationSource, check_enough
from xling_jax.runtime import io, train_checkpoints
from xling_jax.runtime.progress import Progress

CHECKPOINTS = "checkpoints"
LOG_NAME = "train_log.jsonl"
REPORTS = "reports"
SAELENS = "saelens"
# Settings that may change between a run and its resume without changing the result.
RESUMABLE = tuple(f"sae.{k}" for k in ("save_every", "max_to_keep", "log_every", "eval_batches"))
# Logged as means over the log window; the feature fractions are logged as they stand.
_MEAN_METRICS = tuple(m for m in step_lib.METRICS if not m.endswith("_fraction"))


def saved_l0(sparsity: str, target_l0: float | None, measured_l0: float | None = None) -> int:
  """The L0 a trained SAE's folder is named by (`layer_{L}_width_{W}_l0_{l0}`, what readers pick
  with `l0`): the target in quadratic mode, otherwise the measured L0; rounded."""
  return int(round(target_l0 if sparsity == "quadratic" else measured_l0))


def report_files(out: str | Path, layer: int) -> dict[str, Path]:
  """The final report of layer `layer` of the run in `out`: {"json": ..., "png": ...}."""
  return report_lib.files(Path(out) / REPORTS, layer)


@dataclasses.dataclass(frozen=True)
class TrainResult:
  saes: jumprelu.JumpReLUParams  # stacked [L], reading raw activations
  layers: tuple[int, ...]
  step: int
  final: list[dict]  # per layer: the report's final metrics
  sae_dirs: list[Path]  # per layer: the Gemma Scope 2 folder
  flags: list[list[str]]  # per layer: the report's warnings (`report.flags`), [] when none


def run_meta(config: SAETrainConfig, source: ActivationSource) -> dict:
  """The settings a checkpoint records (JSON): a resume must match them."""
  return json.loads(json.dumps({"sae": dataclasses.asdict(config), "data": source.describe(),
                                "d_in": source.d_in}))


def prepare_out(out: str | Path, meta: dict, *, resume: bool) -> int | None:
  """Check `out` before any compute; return the step to resume from (None: a fresh start).

  A fresh start needs `out` absent, empty, or holding only this run's bookkeeping from before
  its first checkpoint; a directory with checkpoints needs `resume` and the same settings."""
  out = Path(out)
  ckpt = out / CHECKPOINTS
  mgr = train_checkpoints.manager(ckpt, 1) if ckpt.is_dir() else None
  try:
    step = None if mgr is None else train_checkpoints.check_start(
        mgr, meta, out, resume=resume, resumable=RESUMABLE)
  finally:
    if mgr is not None:
      mgr.close()
  if step is None and out.is_dir():
    others = sorted(p.name for p in out.iterdir() if p.name not in (CHECKPOINTS, LOG_NAME))
    if others:
      raise FileExistsError(f"{out} holds {', '.join(others)} but no checkpoint of a run to "
                            "resume; choose a new output directory (nothing was written)")
  return step


def validate(source: ActivationSource, config: SAETrainConfig, out: str | Path, *,
             resume: bool) -> int | None:
  """Every check `train` makes before computing anything (data size, `out`); returns the step
  a resume starts from (None: a fresh start). Callers may run it first to fail early."""
  check_enough(source, config.steps + config.eval_batches,
               f"{config.steps:,} training steps + {config.eval_batches} evaluation batches")
  return prepare_out(out, run_meta(config, source), resume=resume)


def _saved(state: step_lib.TrainState, step: int, sums: dict, count: int) -> dict:
  return {"state": state, "step": np.asarray(step, np.int64),
          "log_sums": {k: np.asarray(v, np.float64) for k, v in sums.items()},
          "log_count": np.asarray(count, np.int64)}


def _record(step: int, config: SAETrainConfig, sums: dict, count: int, metrics: dict,
            rate: float) -> dict:
  means = {k: (sums[k] / max(count, 1)).tolist() for k in _MEAN_METRICS}
  fractions = {k: np.asarray(metrics[k], np.float64).tolist()
               for k in ("dead_fraction", "dense_fraction")}
  return {"step": step, "tokens": step * config.batch_size, "lr": float(metrics["lr"]),
          "l0_coefficient": float(metrics["l0_coefficient"]), **means, **fractions,
          "tokens_per_s": rate}


def _echo_line(record: dict, layers, steps: int) -> str:
  per_layer = "; ".join(
      f"L{layer} loss={record['loss'][i]:.4g} fvu={record['fvu'][i]:.3f} "
      f"l0={record['l0'][i]:.1f} dead={record['dead_fraction'][i]:.3f}"
      for i, layer in enumerate(layers))
  return f"step {record['step']}/{steps}  {per_layer}  ({record['tokens_per_s']:,.0f} tokens/s)"


# One layer at a time (lax.map): only one layer's [N, W] codes are live.
_stacked_metrics = jax.jit(lambda saes, xs: jax.lax.map(
    lambda layer: jumprelu.reconstruction_metrics(*layer), (saes, xs)))
_fold = jax.jit(normalize.fold)


def evaluate(saes: jumprelu.JumpReLUParams, batches: list[np.ndarray]) -> list[dict]:
  """Per layer: mse (raw units), fvu and l0 of the stacked raw-input `saes` over `batches`
  ([L, B, d] each, concatenated)."""
  xs = jnp.asarray(np.concatenate(batches, axis=1))
  m = jax.device_get(_stacked_metrics(saes, xs))
  return [{"mse": float(m.mse[i]), "fvu": float(1.0 - m.explained_variance[i]),
           "l0": float(m.l0[i])} for i in range(xs.shape[0])]


def train(source: ActivationSource, config: SAETrainConfig, out: str | Path, *,
          resume: bool = False, model_name: str = "unknown", saelens: bool = False,
          echo: Callable[[str], None] = print, progress: bool = True) -> TrainResult:
  """Train one SAE per `source.layers` entry for `config.steps` steps; see the module docstring.

  Raises ValueError / FileExistsError before any compute on bad settings, too little data or an
  `out` holding something else; NonFiniteLossError (the latest checkpoint is then the last good
  state) on a NaN/inf."""
  c, layers, out = config, source.layers, Path(out)
  start = validate(source, c, out, resume=resume)
  meta = run_meta(c, source)

  mgr = train_checkpoints.manager(out / CHECKPOINTS, c.max_to_keep)
  key = jax.random.PRNGKey(c.seed)
  sums = {k: np.zeros(len(layers)) for k in _MEAN_METRICS}
  count, step = 0, 0
  if start is None:
    if resume:
      echo(f"no checkpoint in {out}: starting from step 0")
    scale = normalize.estimate_scale(source.batch(i) for i in range(min(c.norm_batches, c.steps)))
    state = step_lib.init_state(key, source.d_in, layers, scale, c)
  else:
    fresh = step_lib.init_state(key, source.d_in, layers, np.ones(len(layers)), c)
    template = _saved(fresh, 0, sums, 0)
    step, saved = train_checkpoints.restore_latest(mgr, template, meta, RESUMABLE)
    state, count = saved["state"], int(saved["log_count"])
    sums = {k: np.asarray(v) for k, v in saved["log_sums"].items()}
    echo(f"resumed from step {step} ({out})")
  log_path = out / LOG_NAME
  train_checkpoints.start_log(log_path, step)

  step_fn = step_lib.make_train_step(c)
  bar = Progress((c.steps - step) * c.batch_size, f"SAE training from step {step}",
                 unit="tokens", enabled=progress)
  tick, tick_step = time.perf_counter(), step
  try:
    while step < c.steps:
      new_state, metrics = step_fn(state, jnp.asarray(source.batch(step)), jnp.int32(step))
      metrics = jax.device_get(metrics)
      if not np.all(metrics["finite"]):
        values = {f"{k}[layer {layer}]": float(metrics[k][i]) for k in _MEAN_METRICS
                  for i, layer in enumerate(layers)}
        raise train_checkpoints.non_finite_error(mgr, step + 1, values, out / CHECKPOINTS,
                                                 c.save_every)
      state, step, count = new_state, step + 1, count + 1
      for k in _MEAN_METRICS:
        sums[k] += metrics[k]
      if step % c.log_every == 0 or step == c.steps:
        now = time.perf_counter()
        rate = (step - tick_step) * c.batch_size / max(now - tick, 1e-9)
        tick, tick_step = now, step
        record = _record(step, c, sums, count, metrics, rate)
        sums, count = {k: np.zeros(len(layers)) for k in _MEAN_METRICS}, 0
        io.append_line(log_path, json.dumps(record))
        echo(_echo_line(record, layers, c.steps))
      if step % c.save_every == 0 or step == c.steps:
        train_checkpoints.save(mgr, step, _saved(state, step, sums, count), meta)
      bar.update(c.batch_size)
  finally:
    train_checkpoints.finish(mgr)
  return _finish(source, c, out, state, step, model_name=model_name, saelens=saelens)


def _finish(source: ActivationSource, c: SAETrainConfig, out: Path, state: step_lib.TrainState,
            step: int, *, model_name: str, saelens: bool) -> TrainResult:
  """Fold, evaluate, write the SAEs and the reports (one set: a failure leaves the previous
  run's SAEs and reports whole, never some of each)."""
  layers = source.layers
  saes = _fold(step_lib.normalised_params(state, c), state.scale)
  records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
  if c.eval_batches:
    final = evaluate(saes, [source.batch(c.steps + i) for i in range(c.eval_batches)])
  else:  # the last log window's training metrics instead
    final = [{k: records[-1][k][i] for k in ("mse", "fvu", "l0")} for i in range(len(layers))]
  l0s = {layer: saved_l0(c.sparsity, c.target_l0, final[i]["l0"])
         for i, layer in enumerate(layers)}
  files = trees.gemma_scope2_layer_files(saes, layers, l0s, model_name=model_name)
  sae_dirs = list(dict.fromkeys((out / name).parent for name in files))
  if saelens:
    files.update({f"{SAELENS}/{name}": data for name, data in
                  trees.saelens_layer_files(saes, layers, model_name=model_name).items()})
  scale = np.asarray(state.scale)
  warnings = []
  for i, layer in enumerate(layers):
    final[i].update(dead_fraction=records[-1]["dead_fraction"][i],
                    dense_fraction=records[-1]["dense_fraction"][i])
    warnings.append(report_lib.flags(
        final[i], steps=step, lr=c.peak_lr, l0_coefficient=c.l0_coef, target_l0=c.target_l0,
        dead_window=c.dead_window, dense_threshold=c.dense_threshold))
    summary = {"layer": layer, "width": c.width, "d_in": source.d_in, "steps": step,
               "tokens": step * c.batch_size, "sparsity": c.sparsity, "target_l0": c.target_l0,
               "l0_coefficient": c.l0_coef, "lr": c.peak_lr, "lr_warmup_steps": c.lr_warmup,
               "sparsity_warmup_steps": c.sparsity_warmup,
               "normalisation_scale": float(scale[i]), "final": final[i], "flags": warnings[i],
               "eval_tokens": c.eval_tokens, "sae_dir": str(sae_dirs[i]),
               "data": source.describe(), "config": dataclasses.asdict(c)}
    files.update({f"{REPORTS}/{name}": data for name, data in report_lib.rendered(
        layer, summary, report_lib.curves(records, i), c.target_l0).items()})
  io.write_set(out, files)
  return TrainResult(saes=saes, layers=layers, step=step, final=final, sae_dirs=sae_dirs,
                     flags=warnings)
