"""python -m bin.bench_sae_train: JumpReLU SAE training throughput, ours vs SAELens's trainer.

Both train the same SAE (d_in, width, JumpReLU, L0 "step" penalty, bandwidth 0.001, Adam
b1 = 0, lr 7e-5, gradient clipping at 1) on the same batches of `--batch_size` tokens, in one
process, rounds interleaved so that load from other processes hits both alike (with a pause
after each call, so one library's spinning worker threads do not slow the other's step).
Reported: the median wall time of one training step after --warmup untimed ones, as tokens/s.

  * ours: `sae.train.step.make_train_step` (the step `sae.train.loop` runs), the batch copied
    from host memory into the step as in the loop, metrics fetched (the loop's NaN check);
  * SAELens: `SAETrainer.step` (its `fit` loop's body: training_forward_pass, backward,
    clip_grad_norm_, Adam, schedulers, firing statistics), torch on CPU.

With --layers N > 1 one more row times ours training N layers in one step, in layer-tokens/s
(a token counts once per layer). The defaults are the issue's setting: d 640 (Gemma 3 270M),
width 4096, 4096 tokens per batch.
"""
from __future__ import annotations

from absl import flags

from bin import cli, timing

FLAGS = flags.FLAGS
flags.DEFINE_integer("d_in", 640, "Residual width d (Gemma 3 270M: 640).")
flags.DEFINE_integer("width", 4096, "SAE width W.")
flags.DEFINE_integer("batch_size", 4096, "Tokens per training step.")
flags.DEFINE_integer("layers", 1, "Also time ours training this many layers at once (> 1).")
flags.DEFINE_integer("warmup", 2, "Untimed steps before timing (the first compiles).")
flags.DEFINE_integer("repeats", 5, "Timed steps per implementation; the median is reported.")
flags.DEFINE_integer("seed", 0, "Seed for the batches.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")

# Let a finished call's worker threads go idle (OpenMP spins ~200 ms after a parallel region), so
# they do not steal the cores the next implementation is timed on.
_SETTLE_S = 0.5


def _ours(config, batches, n_layers: int):
  """A callable running one of our training steps on the next batch (blocking)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from sae.train import step as step_lib

  step_fn = step_lib.make_train_step(config)
  layers = tuple(range(n_layers))
  state = step_lib.init_state(jax.random.PRNGKey(0), batches[0].shape[-1], layers,
                              np.ones(n_layers, np.float32), config)
  box = {"state": state, "step": 0}

  def run():
    i = box["step"]
    x = np.broadcast_to(batches[i % len(batches)], (n_layers,) + batches[0].shape)
    box["state"], metrics = step_fn(box["state"], jnp.asarray(x), jnp.int32(i))
    jax.device_get(metrics)
    box["step"] = i + 1

  return run


def _saelens(config, batches):
  """A callable running one SAELens `SAETrainer.step` on the next batch."""
  import torch
  from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
  from sae_lens.config import SAETrainerConfig
  from sae_lens.training.sae_trainer import SAETrainer

  d_in = batches[0].shape[-1]
  sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
      d_in=d_in, d_sae=config.width, jumprelu_bandwidth=config.bandwidth,
      jumprelu_init_threshold=config.init_threshold, apply_b_dec_to_input=False,
      l0_coefficient=config.l0_coef, jumprelu_sparsity_loss_mode="step"))
  trainer = SAETrainer(
      cfg=SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=config.batch_size,
                           lr=config.peak_lr, lr_end=config.peak_lr, adam_beta1=config.adam_b1,
                           adam_beta2=config.adam_b2),
      sae=sae, data_provider=iter(()))
  tensors = [torch.from_numpy(b) for b in batches]

  def run():
    trainer.step(tensors[trainer.n_training_steps % len(tensors)])
    trainer.n_training_steps += 1

  return run


def run(d_in: int, width: int, batch_size: int, layers: int, warmup: int, repeats: int,
        seed: int) -> dict:
  import jax
  import numpy as np
  import torch

  from sae.train.config import SAETrainConfig

  config = SAETrainConfig(width=width, batch_size=batch_size, steps=10**6, sparsity="step")
  rng = np.random.default_rng(seed)
  # Unit mean squared norm, the scale both trainers are tuned for.
  batches = [(rng.standard_normal((batch_size, d_in)) / np.sqrt(d_in)).astype(np.float32)
             for _ in range(4)]
  calls = {"ours": _ours(config, batches, 1), "saelens": _saelens(config, batches)}
  if layers > 1:
    calls[f"ours_{layers}_layers"] = _ours(config, batches, layers)
  seconds = timing.median_seconds(calls, repeats=repeats, warmup=warmup, settle_s=_SETTLE_S)
  result = {
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "torch_threads": torch.get_num_threads(), "d_in": d_in, "width": width,
      "batch_size": batch_size, "warmup": warmup, "repeats": repeats,
      "ours_step_s": seconds["ours"], "saelens_step_s": seconds["saelens"],
      "ours_tokens_per_s": batch_size / seconds["ours"],
      "saelens_tokens_per_s": batch_size / seconds["saelens"],
      "speedup": seconds["saelens"] / seconds["ours"],
  }
  if layers > 1:
    result.update(layers=layers, ours_layers_step_s=seconds[f"ours_{layers}_layers"],
                  ours_layer_tokens_per_s=layers * batch_size / seconds[f"ours_{layers}_layers"])
  return result


def format_table(r: dict) -> str:
  rows = [("ours (JAX)", r["ours_step_s"], f"{r['ours_tokens_per_s']:,.0f} tokens/s"),
          (f"SAELens SAETrainer.step (torch, {r['torch_threads']} threads)", r["saelens_step_s"],
           f"{r['saelens_tokens_per_s']:,.0f} tokens/s")]
  if "layers" in r:
    rows.append((f"ours, {r['layers']} layers at once", r["ours_layers_step_s"],
                 f"{r['ours_layer_tokens_per_s']:,.0f} layer-tokens/s"))
  head = (f"JumpReLU SAE training step on {r['backend']} ({r['device']}): d={r['d_in']} "
          f"W={r['width']} batch={r['batch_size']} tokens, median of {r['repeats']}")
  width = max(len(name) for name, _, _ in rows)
  lines = [f"  {name:<{width}}  {1e3 * s:9.1f} ms  {note}" for name, s, note in rows]
  return "\n".join([head, *lines, f"  ours / SAELens: {r['speedup']:.2f}x"])


def main(argv):
  del argv
  measure = lambda: run(FLAGS.d_in, FLAGS.width, FLAGS.batch_size, FLAGS.layers,
                        FLAGS.warmup, FLAGS.repeats, FLAGS.seed)
  timing.report_benchmark(measure, format_table, FLAGS.json)


if __name__ == "__main__":
  cli.run(main)
