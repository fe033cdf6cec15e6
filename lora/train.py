"""Training the adapter: optax optimiser, jitted step, parallel-corpus batches, orbax checkpoints.

Only the adapter is differentiated: the train step takes the frozen params as an ordinary
argument and `jax.value_and_grad` is taken with respect to the adapter's A/B tree alone, so the
frozen tree never enters autodiff (tests/test_lora_train.py checks the jaxpr).

Resume is exact: the batch at data position p is a pure function of (corpus split, RNG key, p),
and a checkpoint holds the adapter, the optimiser state, the step, the data position and the RNG
key. Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
kill mid-save leaves the previous checkpoint as the latest. A non-finite loss, gradient or
update stops training before anything from that step is saved.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from lora import DEFAULT_REMAT, objectives
from lora.data import BatchStream
from lora.lora import Adapter, LoraConfig, init_adapter, layer_mask
from xling_jax.model.config import ModelConfig
from xling_jax.runtime import io, train_checkpoints, validate

LOG_NAME = "train_log.jsonl"
# TrainConfig fields that may change between a run and its resume without changing the result.
_RESUMABLE_CHANGES = tuple(f"train.{k}" for k in ("save_every", "max_to_keep", "log_every"))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimiser, schedule, data and checkpoint settings.

  The learning rate warms up linearly from 0 over `warmup_steps`, then follows a cosine to
  `lr * final_lr_fraction` at `steps`. AdamW (decoupled `weight_decay`), gradients clipped to
  global norm `clip_norm`. `eval_fraction` of the parallel lines (at least one) are held out
  for evaluation. Sentences are tokenised with BOS, padded to a multiple of `bucket`, cut at
  `max_len` tokens.
  """
  steps: int = 300
  batch_size: int = 8
  lr: float = 1e-3
  warmup_steps: int = 20
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  eval_fraction: float = 0.2
  max_len: int = 128
  bucket: int = 64
  seed: int = 0
  save_every: int = 100
  max_to_keep: int = 3
  log_every: int = 10

  def __post_init__(self):
    validate.fields(self)
    positive = ("steps", "batch_size", "lr", "clip_norm", "max_len", "bucket", "save_every",
                "max_to_keep", "log_every")
    bad = [f"{k}={getattr(self, k)}" for k in positive if not getattr(self, k) > 0]
    if not 0 <= self.warmup_steps < self.steps:
      bad.append(f"warmup_steps={self.warmup_steps} (needs 0 <= warmup_steps < steps)")
    if not 0 < self.eval_fraction < 1:
      bad.append(f"eval_fraction={self.eval_fraction} (needs 0 < eval_fraction < 1)")
    if bad:
      raise ValueError(f"invalid TrainConfig: {', '.join(bad)}")


# ---- optimiser ------------------------------------------------------------------------------

def freeze_inactive_layers(mask: np.ndarray) -> optax.GradientTransformation:
  """Multiply every [L, ...] update by the [L] layer mask: blocks outside the adapter's layers
  never move, whatever the optimiser (weight decay, restored moments) would do."""
  mask = jnp.asarray(mask)

  def apply(updates, params=None):
    del params
    return jax.tree.map(lambda u: u * mask.reshape((-1,) + (1,) * (u.ndim - 1)), updates)

  return optax.stateless(apply)


def make_schedule(train_config: TrainConfig) -> optax.Schedule:
  tc = train_config
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.lr, warmup_steps=tc.warmup_steps, decay_steps=tc.steps,
      end_value=tc.lr * tc.final_lr_fraction)


def make_optimizer(train_config: TrainConfig, mask: np.ndarray) -> optax.GradientTransformation:
  """clip -> AdamW(warmup/cosine) -> zero the updates of blocks outside `mask` [L]."""
  return optax.chain(
      optax.clip_by_global_norm(train_config.clip_norm),
      optax.adamw(make_schedule(train_config), weight_decay=train_config.weight_decay),
      freeze_inactive_layers(mask))


# ---- the step -------------------------------------------------------------------------------

def make_train_step(config: ModelConfig, objective: objectives.ObjectiveConfig,
                    tx: optax.GradientTransformation, scale: float,
                    loss_fn: Callable = objectives.total_loss,
                    remat: bool | str = DEFAULT_REMAT):
  """step(adapter_layers, opt_state, params, saes, batch) -> (adapter_layers, opt_state, metrics).

  `adapter_layers` is the adapter's {"module": {"a", "b"}} tree, the only differentiated input;
  `params` (frozen model) and `saes` (stacked over the objective layers) are plain arguments.
  The English reference is computed first, outside autodiff. metrics: loss, each term,
  grad_norm, and `finite` (loss, gradients and the updated adapter are all finite).
  """

  def step(layers, opt_state, params, saes, batch):
    ref = objectives.reference(params, config, saes, batch, objective)

    def loss(layers):
      return loss_fn({"scale": scale, "layers": layers}, params, config, saes, batch, ref,
                     objective, remat=remat)

    (total, terms), grads = jax.value_and_grad(loss, has_aux=True)(layers)
    updates, new_opt_state = tx.update(grads, opt_state, layers)
    new_layers = optax.apply_updates(layers, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_layers)]))
    metrics = {"loss": total, **terms, "grad_norm": grad_norm, "finite": finite}
    return new_layers, new_opt_state, metrics

  return jax.jit(step)


# ---- checkpoints ----------------------------------------------------------------------------

class TrainState(NamedTuple):
  layers: dict  # the adapter's trainable tree
  opt_state: optax.OptState
  step: int  # completed updates
  position: int  # training lines consumed
  rng: np.ndarray  # uint32 PRNG key data: seeds the epoch permutations


def _to_saved(state: TrainState) -> dict:
  return {"adapter": state.layers, "opt_state": state.opt_state,
          "step": np.asarray(state.step, np.int64),
          "position": np.asarray(state.position, np.int64), "rng": np.asarray(state.rng, np.uint32)}


def run_meta(config: ModelConfig, lora_config: LoraConfig, objective: objectives.ObjectiveConfig,
             train_config: TrainConfig) -> dict:
  """The settings a checkpoint records, as JSON: a resume must match them."""
  return json.loads(json.dumps({
      "model": config.to_dict(), "lora": dataclasses.asdict(lora_config),
      "objective": dataclasses.asdict(objective), "train": dataclasses.asdict(train_config)}))


def checkpoint_manager(directory: str | Path, train_config: TrainConfig) -> ocp.CheckpointManager:
  return train_checkpoints.manager(directory, train_config.max_to_keep)


def restore_latest(manager: ocp.CheckpointManager, template: TrainState,
                   meta: dict) -> TrainState:
  """The state of the latest complete checkpoint, after checking that it was written by a run
  with the same settings (`meta`, from `run_meta`)."""
  _, s = train_checkpoints.restore_latest(manager, _to_saved(template), meta, _RESUMABLE_CHANGES)
  return TrainState(layers=s["adapter"], opt_state=s["opt_state"], step=int(s["step"]),
                    position=int(s["position"]), rng=np.asarray(s["rng"], np.uint32))


# ---- the loop -------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
  adapter: Adapter
  step: int
  last_metrics: dict[str, float]


def train(params, config: ModelConfig, saes, stream: BatchStream, lora_config: LoraConfig,
          objective: objectives.ObjectiveConfig, train_config: TrainConfig,
          checkpoint_dir: str | Path, *, resume: bool = False, log_path: str | Path | None = None,
          loss_fn: Callable = objectives.total_loss, echo: Callable[[str], None] = print,
          remat: bool | str = DEFAULT_REMAT, mesh=None) -> TrainResult:
  """Train the adapter for `train_config.steps` updates; returns the final adapter.

  `saes`: JumpReLU params stacked over `objective.layers`. Checkpoints go to `checkpoint_dir`
  every `save_every` steps and at the end; with `resume` the latest one is restored (a missing
  one means a fresh start), otherwise an existing one is an error. Each logged step appends
  {"step", "loss", terms, "grad_norm", "lr", "steps_per_s"} to `log_path` (JSONL).
  Raises NonFiniteLossError on NaN/inf, after waiting for pending saves; the latest checkpoint
  is then the last good state. With a `mesh`, each batch is split over its `data` axis (the
  batch size must be a multiple of that axis); params keep whatever placement they have.
  """
  tc = train_config
  place = lambda batch: batch
  if mesh is not None:
    from xling_jax.runtime import sharding as sharding_lib
    n_data = sharding_lib.data_shards(mesh)
    if tc.batch_size % n_data:
      raise ValueError(f"batch_size {tc.batch_size} must be a multiple of the mesh's data axis "
                       f"({n_data}) to split batches over devices")
    place = lambda batch: jax.device_put(batch, sharding_lib.batch_sharding(mesh))
  objective = objective.for_model(config)
  checkpoint_dir = Path(checkpoint_dir)
  mask = layer_mask(config, lora_config)
  tx = make_optimizer(tc, mask)
  adapter = init_adapter(config, lora_config)
  rng = np.asarray(jax.random.PRNGKey(tc.seed), np.uint32)
  state = TrainState(adapter["layers"], tx.init(adapter["layers"]), 0, 0, rng)
  meta = run_meta(config, lora_config, objective, tc)
  manager = checkpoint_manager(checkpoint_dir, tc)
  log_path = None if log_path is None else Path(log_path)
  if train_checkpoints.check_start(manager, meta, checkpoint_dir, resume=resume,
                                   resumable=_RESUMABLE_CHANGES) is not None:
    state = restore_latest(manager, state, meta)
    echo(f"resumed from step {state.step} ({checkpoint_dir})")
  elif resume:
    echo(f"no checkpoint in {checkpoint_dir}: starting from step 0")
  if log_path is not None:
    train_checkpoints.start_log(log_path, state.step)

  schedule = make_schedule(tc)
  step_fn = make_train_step(config, objective, tx, lora_config.scale, loss_fn, remat)

  def save(s: TrainState):
    train_checkpoints.save(manager, s.step, _to_saved(s), meta)

  metrics: dict[str, float] = {}
  if state.step < tc.steps:
    echo(f"training steps {state.step + 1}-{tc.steps} (the first compiles the step) ...")
  tick, tick_step = time.perf_counter(), state.step
  try:
    while state.step < tc.steps:
      batch = place(stream.batch(state.rng, state.position))
      layers, opt_state, out = step_fn(state.layers, state.opt_state, params, saes, batch)
      out = {k: float(v) for k, v in jax.device_get(out).items()}
      if not out.pop("finite"):
        raise train_checkpoints.non_finite_error(manager, state.step + 1, out, checkpoint_dir,
                                                 tc.save_every)
      state = TrainState(layers, opt_state, state.step + 1, state.position + tc.batch_size,
                         state.rng)
      metrics = out
      if state.step % tc.log_every == 0 or state.step == tc.steps:
        now = time.perf_counter()
        rate = (state.step - tick_step) / max(now - tick, 1e-9)
        tick, tick_step = now, state.step
        record = {"step": state.step, **out, "lr": float(schedule(state.step - 1)),
                  "steps_per_s": rate}
        echo(f"step {state.step}/{tc.steps}  " + "  ".join(
            f"{k}={v:.4g}" for k, v in record.items() if k != "step")
             + f"  (ETA {(tc.steps - state.step) / max(rate, 1e-9):.0f}s)")
        if log_path is not None:
          io.append_line(log_path, json.dumps(record))
      if state.step % tc.save_every == 0 or state.step == tc.steps:
        save(state)
  finally:
    train_checkpoints.finish(manager)
  return TrainResult({"scale": lora_config.scale, "layers": state.layers}, state.step, metrics)
