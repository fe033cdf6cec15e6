"""python -m bin.train_sae: train JumpReLU SAEs (Gemma Scope recipe) for several layers at once.

Activations come from the model's residual stream (`resid_post` of --layers, one forward pass for
all of them, BOS and padding excluded) over a parallel corpus, through a shuffling buffer; or
from --activations=FILE.npy, a [N, d] float array of your own (one layer). With no model flags
it trains on the toy model and says so. For Gemma 3 270M on NTREX:

  python -m bin.train_sae --checkpoint=gemma3-270m --corpus=/data/ntrex --layers=0,3,6,9,12,17 \\
      --width=4096 --steps=20000 --target_l0=60 --epochs=4 --out=out/saes_270m

Writes to --out the Gemma Scope 2 layout, resid_post/layer_{L}_width_{W}_l0_{l0}/
(params.safetensors + config.json; `bin.analyze --sae_dir=OUT` reads it), reports/layer_{L}.json
and .png (FVU, L0, dead/dense fractions, curves, the resolved learning rate and warm-ups, and
warnings: an L0 off its target, a poor or non-finite FVU, many dead or dense features, each
with what to change; they are also the last lines printed), train_log.jsonl, checkpoints/
(orbax) and, with --saelens, SAELens directories under saelens/. --resume continues the latest
checkpoint. Settings, data size (finite values) and --out are all checked before any compute.
"""
from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from bin import cli, shared_flags

FLAGS = flags.FLAGS
shared_flags.define_platform_flags()
shared_flags.define_model_flags()
shared_flags.define_langs_flag()
shared_flags.define_corpus_flags(max_len=128, bucket=16)
flags.adopt_module_key_flags(shared_flags)  # --help lists the shared flags too
flags.DEFINE_list("layers", None, "Model layers to train an SAE for (resid_post), e.g. 0,6,12.")
flags.DEFINE_string("width", "4096", "SAE width: an integer or 16k, 65k, 262k, 1m.")
flags.DEFINE_integer("steps", 10_000,
                     "Training steps. 0: as many as the data allows (--epochs passes over it, "
                     "less the --eval_batches held out for the report).", lower_bound=0)
flags.DEFINE_integer("batch_size", 4096, "Tokens per training step (per layer).", lower_bound=1)
flags.DEFINE_enum("sparsity", None, ["step", "quadratic", "tanh"],
                  "Sparsity penalty: step (L0, Gemma Scope), quadratic (around --target_l0, "
                  "Gemma Scope 2) or tanh. Default: quadratic with --target_l0, else step.")
flags.DEFINE_float("target_l0", None, "Target active features per token (quadratic mode).")
flags.DEFINE_float("l0_coefficient", None,
                   "Sparsity coefficient after warm-up. Default per mode (sae/train/config.py).")
flags.DEFINE_float("lr", None,
                   "Peak learning rate (warm-up, then decay). Default: scaled to --steps, "
                   "7e-5 (DeepMind's) x sqrt(1M / steps), at most 5e-3 (sae/train/config.py).")
flags.DEFINE_string("activations", None,
                    "A .npy [N, d] float array to train on instead of model activations (one "
                    "layer: --layers names it).")
flags.DEFINE_integer("epochs", 1, "Passes over the data allowed (each in a fresh order).",
                     lower_bound=1)
flags.DEFINE_integer("buffer_tokens", 1 << 17,
                     "Shuffling buffer: tokens harvested and shuffled together (host memory: "
                     "buffer_tokens x layers x d x 4 bytes).", lower_bound=1)
flags.DEFINE_integer("sentences_per_forward", 16, "Sentences per harvesting forward pass.",
                     lower_bound=1)
flags.DEFINE_string("out", None, "Output directory (required).")
flags.DEFINE_bool("resume", False,
                  "Continue from the latest checkpoint in --out (same settings required). "
                  "Without it, an --out holding checkpoints is an error.")
flags.DEFINE_integer("save_every", 1000, "Checkpoint every N steps (and at the end).",
                     lower_bound=1)
flags.DEFINE_integer("log_every", 100, "Log and print means every N steps.", lower_bound=1)
flags.DEFINE_integer("eval_batches", 4,
                     "Batches after the training data on which the final report is measured.",
                     lower_bound=0)
flags.DEFINE_integer("sae_seed", None,
                     "Seed of the SAEs' initialisation and data order. Default: --seed (which "
                     "also draws the toy model's weights: retrain SAEs of one model with "
                     "--sae_seed).")
flags.DEFINE_bool("saelens", False, "Also write SAELens directories (saelens/...).")
flags.DEFINE_bool("progress", True, "Show progress (tokens/s, ETA) on stderr.")


def _layers() -> tuple[int, ...]:
  if not FLAGS.layers:
    if FLAGS.activations:
      raise app.UsageError("--layers is required: with --activations it names the file's layer "
                           "(one integer, e.g. --layers=6; it labels the output SAE)")
    raise app.UsageError("--layers is required (e.g. --layers=0,6,12)")
  try:
    return tuple(int(v) for v in FLAGS.layers)
  except ValueError:
    raise app.UsageError(f"--layers={','.join(FLAGS.layers)}: expected integers") from None


def _train_config():
  from sae import releases
  from sae.train.config import SAETrainConfig
  sparsity = FLAGS.sparsity or ("quadratic" if FLAGS.target_l0 is not None else "step")
  return SAETrainConfig(
      width=releases.width_size(FLAGS.width), steps=FLAGS.steps or 1,
      batch_size=FLAGS.batch_size, sparsity=sparsity, target_l0=FLAGS.target_l0,
      l0_coefficient=FLAGS.l0_coefficient, lr=FLAGS.lr, save_every=FLAGS.save_every,
      log_every=FLAGS.log_every, eval_batches=FLAGS.eval_batches,
      seed=FLAGS.seed if FLAGS.sae_seed is None else FLAGS.sae_seed)


def _source(config, layers):
  """(activation source, model name for config.json, notes to print)."""
  from sae.train import harvest, sources
  if FLAGS.activations:
    if FLAGS.checkpoint:
      raise app.UsageError("--activations trains on the file's activations; drop --checkpoint")
    if len(layers) != 1:
      raise app.UsageError(f"--activations holds one layer's activations; --layers names it "
                           f"(got {len(layers)} layers)")
    source = sources.NpyActivations(FLAGS.activations, config.batch_size, layer=layers[0],
                                    seed=config.seed, epochs=FLAGS.epochs)
    return source, "unknown", []
  from xling_jax.data import corpora
  from xling_jax.model import presets
  corpus = corpora.load_corpus(FLAGS.corpus, FLAGS.langs, FLAGS.max_sentences)
  setup = shared_flags.load_model()
  rows = harvest.tokenize(corpus.sentences, setup.tokenizer, FLAGS.max_len)
  model = str(setup.provenance.get("model", FLAGS.checkpoint))
  source = harvest.HarvestSource(
      setup.params, setup.config, rows, layers, config.batch_size,
      name=f"{corpus.name} ({len(corpus.languages)} languages)", model=model,
      buffer_tokens=FLAGS.buffer_tokens, sentences_per_forward=FLAGS.sentences_per_forward,
      bucket=FLAGS.bucket, seed=config.seed, epochs=FLAGS.epochs, progress=FLAGS.progress)
  notes = [presets.toy_note(setup.config)] if setup.is_toy else []
  return source, FLAGS.checkpoint or model, notes


def main(argv):
  del argv
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  cli.check_out()
  layers = _layers()
  config = _train_config()
  devices = shared_flags.setup_platform()

  from sae.train import loop

  source, model_name, notes = _source(config, layers)
  if not FLAGS.steps:
    steps = source.n_tokens * source.epochs // config.batch_size - config.eval_batches
    if steps < 1:
      raise ValueError(f"--steps=0: the data holds {source.n_tokens:,} tokens x {source.epochs} "
                       f"epoch(s), not one batch of {config.batch_size} beyond the "
                       f"{config.eval_batches} --eval_batches")
    config = dataclasses.replace(config, steps=steps)
  loop.validate(source, config, FLAGS.out, resume=FLAGS.resume)  # before anything is printed
  for note in notes:
    print(note, file=sys.stderr)
  described = source.describe()
  print(f"devices: {devices}; data: {described['name']} ({source.n_tokens:,} tokens"
        f"{f' x {source.epochs} epochs' if source.epochs > 1 else ''}); layers "
        f"{list(layers)}; width {config.width}; {config.sparsity} sparsity"
        + (f" (target L0 {config.target_l0:g})" if config.target_l0 is not None else "")
        + f"; lr {config.peak_lr:.3g}"
        + (f" (scaled to {config.steps:,} steps)" if FLAGS.lr is None else ""),
        file=sys.stderr)
  result = loop.train(source, config, FLAGS.out, resume=FLAGS.resume, model_name=model_name,
                      saelens=FLAGS.saelens, progress=FLAGS.progress)
  print(f"{'layer':>5}  {'FVU':>7}  {'L0':>7}  {'dead':>6}  {'dense':>6}  SAE")
  for layer, final, path in zip(result.layers, result.final, result.sae_dirs):
    print(f"{layer:>5}  {final['fvu']:7.4f}  {final['l0']:7.2f}  {final['dead_fraction']:6.3f}  "
          f"{final['dense_fraction']:6.3f}  {path}")
  for layer, warnings in zip(result.layers, result.flags):
    for warning in warnings:
      print(f"warning: layer {layer}: {warning}", file=sys.stderr)


def interrupted() -> str:
  """The checkpoint an interrupted run saved, and how to continue from it."""
  from pathlib import Path

  from sae.train import loop
  if not FLAGS.out:
    return "nothing written"
  return cli.resume_hint(Path(FLAGS.out) / loop.CHECKPOINTS)


if __name__ == "__main__":
  cli.run(main, on_interrupt=interrupted)
