"""Flags and set-up shared by the command-line tools: platform, model, tokenizer, mesh."""
from __future__ import annotations

import dataclasses
from typing import Any

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
                      "Model config: a preset (toy, small, gemma2_2b) or a configs/*.py file. "
                      "Default: the checkpoint's own config.json, or toy without --checkpoint.")
  flags.DEFINE_string("checkpoint", None,
                      "Gemma-2 weights: an HF directory (config.json + *.safetensors, sharded or "
                      "not), a Kaggle/orbax Flax checkpoint, or one written by xling-jax. "
                      "Unset: the toy model with random weights from --seed.")
  flags.DEFINE_string("tokenizer", None,
                      "SentencePiece tokenizer.model, an HF tokenizer.json, or a directory with "
                      "one. Default: the checkpoint directory's tokenizer, or the toy tokenizer.")
  flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                    "Compute dtype. auto = float32 on cpu, bfloat16 on gpu/tpu. Statistics "
                    "always accumulate in float32.")
  flags.DEFINE_string("mesh", None,
                      "Device mesh as DATA,MODEL (e.g. 8,1 or 2,4). Default: every device on the "
                      "data axis.")
  flags.DEFINE_enum("param_sharding", "replicated", ["replicated", "fsdp", "tensor"],
                    "How parameters are laid out over the mesh's model axis.")
  flags.DEFINE_integer("seed", 0, "Seed for the toy model/SAE weights and any sampling.")


@dataclasses.dataclass(frozen=True)
class ModelSetup:
  params: Any
  config: Any
  tokenizer: Any
  mesh: Any
  is_toy: bool
  provenance: dict


def setup_platform() -> str:
  from xling_jax.platform import describe_devices, select_platform
  select_platform(FLAGS.platform, distributed=FLAGS.distributed)
  return describe_devices()


def _compute_dtype() -> str:
  if FLAGS.dtype != "auto":
    return FLAGS.dtype
  return "float32" if FLAGS.platform == "cpu" else "bfloat16"


def load_model() -> ModelSetup:
  """Params (placed over the mesh), config, tokenizer, from the flags above."""
  from pathlib import Path

  import jax

  from xling_jax import checkpoints, model as model_lib, sharding as sharding_lib
  from xling_jax.config import load_config
  from xling_jax.tokenizer import Tokenizer
  from xling_jax.toy_tokenizer import toy_tokenizer

  mesh_shape = tuple(int(v) for v in FLAGS.mesh.split(",")) if FLAGS.mesh else None
  mesh = sharding_lib.make_mesh(mesh_shape)
  dtype = _compute_dtype()
  if FLAGS.checkpoint is None:
    config = load_config(FLAGS.config or "toy", compute_dtype=dtype, param_dtype=dtype)
    params = model_lib.init_params(config, jax.random.PRNGKey(FLAGS.seed))
    tokenizer = Tokenizer.load(FLAGS.tokenizer) if FLAGS.tokenizer else toy_tokenizer(
        config.vocab_size)
    provenance = {"model": f"random weights (seed {FLAGS.seed})", "config": config.to_dict()}
  else:
    config = load_config(FLAGS.config) if FLAGS.config else None
    tok_path = FLAGS.tokenizer or FLAGS.checkpoint
    tokenizer = Tokenizer.load(tok_path)
    shardings = lambda cfg: sharding_lib.config_param_shardings(cfg, mesh, FLAGS.param_sharding)
    # Weights are stored in the compute dtype: casting 2B params inside every call would cost
    # a second copy of the model per step.
    params, config = checkpoints.load_params(FLAGS.checkpoint, config, dtype=dtype,
                                             sharding=shardings)
    config = config.replace(compute_dtype=dtype, param_dtype=dtype)
    provenance = {"model": str(Path(FLAGS.checkpoint).resolve()), "config": config.to_dict(),
                  "tokenizer": str(Path(tok_path).resolve())}
  if tokenizer.vocab_size > config.vocab_size:
    raise SystemExit(f"tokenizer has {tokenizer.vocab_size} ids but the model only "
                     f"{config.vocab_size} embedding rows")
  if FLAGS.checkpoint is None:
    params = sharding_lib.shard_params(params, mesh, FLAGS.param_sharding)
  return ModelSetup(params, config, tokenizer, mesh, FLAGS.checkpoint is None, provenance)



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
