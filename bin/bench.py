"""python -m bin.bench: our JAX stack against HF transformers (+ PEFT) on the same weights and
shapes, in one process on one machine.

Rows (tokens/s, median of --repeats timed calls after warm-up; on CPU the two stacks' calls take
turns, see --order):
  residuals  every block's output (HF: forward hooks on every decoder layer)
  analysis   residuals + every layer's JumpReLU encode + the per-layer statistics
  scoring    full-vocabulary next-token log-likelihoods of every position
  mc_scoring multiple-choice items (context of seq - 16 tokens, 4 choices of 8 tokens): ours runs
             the shared context once per item (packed), HF the lm-eval way, once per choice.
             Its tokens are lm-eval-equivalent: every choice row counted in full, both stacks.
  lora_step  one LoRA training step (rank 16 on all 7 projections; align + lm loss). Ours
             recomputes in the backward pass what --lora_remat says (bin.finetune's --remat,
             default dots: the weight matmuls' outputs are kept); HF keeps every intermediate
             unless --lora_remat=full, which turns on its gradient checkpointing (Gemma-2-2B at
             batch 32 x 256 needs full recomputation to fit an 80 GB card)
`peak_bytes` (accelerators only) is JAX's process high-water mark after the row, so it never
decreases down the table; `hf_peak_bytes` is torch's peak for that row alone. The HF column uses
torch with the same float weights; its SAE step is SAELens's JumpReLU math
(`relu(pre) * (pre > threshold)`) per layer. `flop_limit_fraction` divides achieved FLOP/s
(analytic FLOPs per token, `xling_jax.model.flops`) by the peak a large matmul reaches in this run.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import resource
import sys
import time

from absl import app, flags

from bin import cli, shared_flags, timing
from bin.bench_stacks import MC_CHOICE_LEN, MC_CHOICES, ROWS, HFStack, OurStack
from lora import DEFAULT_REMAT

FLAGS = flags.FLAGS
shared_flags.define_platform_flags()
flags.adopt_module_key_flags(shared_flags)  # --help lists the shared flags too
flags.DEFINE_string("config", "toy",
                    "Model shape with random weights: a preset (toy, toy_gemma3, toy_gemma4, "
                    "toy_gemma4_moe, small, gemma2_2b, gemma3_270m, gemma3_1b, gemma4_e2b, ...). "
                    "small ~ a minute per stack on a 2-core CPU. Ignored with --checkpoint.")
flags.DEFINE_string("checkpoint", None,
                    "Real weights instead of random ones: any path load_params reads, or "
                    "gemma3-270m. Both stacks get the same float weights (HF loads them from a "
                    "safetensors copy we write).")
flags.DEFINE_integer("batch", None, "Batch size (default per config: toy, toy_gemma4(_moe) 8, "
                     "small 4, gemma2_2b 32, otherwise 8).")
flags.DEFINE_integer("seq", None, "Sequence length (default: toy, toy_gemma4(_moe) 64, small 128, "
                     "gemma2_2b 256, otherwise 128).")
flags.DEFINE_integer("sae_width", None, "SAE width (default: toy, toy_gemma4(_moe) 256, small "
                     "4096, gemma2_2b 16384, otherwise 4096).")
flags.DEFINE_integer("repeats", 5, "Timed repeats per row (median reported).")
flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                  "Weights/activations dtype for both stacks. auto: float32 on cpu, bfloat16 else.")
flags.DEFINE_list("rows", list(ROWS), "Which rows to run.")
flags.DEFINE_bool("hf", True, "Also time HF transformers (+PEFT) when torch is installed.")
flags.DEFINE_string("hf_attn", "eager", "HF attn_implementation (eager keeps Gemma-2's softcap).")
flags.DEFINE_enum("lora_remat", DEFAULT_REMAT, ["none", "full", "dots"],
                  "lora_step recomputation, as bin.finetune's --remat. full: each block "
                  "recomputed in the backward pass, in both stacks (HF: gradient checkpointing; "
                  "gemma2_2b at batch 32 x 256 needs it on an 80 GB card); dots (ours keeps the "
                  "weight matmul outputs) and none: HF keeps every intermediate, its fastest.")
flags.DEFINE_enum("order", "auto", ["auto", "turns", "stacks"],
                  "How the two stacks' timed calls are ordered. turns: row by row, HF and ours "
                  "take turns call by call, so both see the same machine (a shared VM's speed "
                  "drifts by a third within minutes). stacks: every HF row, then every row of "
                  "ours, so torch hands back its device memory before JAX's allocator (which "
                  "never shrinks) grows. auto: turns on CPU, stacks on accelerators.")
flags.DEFINE_string("json", None, "Write the results here as JSON.")
flags.DEFINE_bool("dry_run", False,
                  "Run nothing: for the analysis and lora_step rows, the device memory they need "
                  "at --batch x --seq (weights, SAEs, adapter and what autodiff keeps exactly "
                  "from jax.eval_shape, one block's working set estimated; bin/bench_memory.py) "
                  "and their analytic FLOPs. No weights are made or read (--checkpoint: its "
                  "config only), so full-size presets plan on any machine.")
flags.DEFINE_string("profile_dir", None,
                    "After timing, trace one call of each of our rows with jax.profiler into this "
                    "directory (TensorBoard/XProf, plus perfetto_trace.json.gz).")

DEFAULTS = {"toy": (8, 64, 256), "toy_gemma4": (8, 64, 256), "toy_gemma4_moe": (8, 64, 256),
            "small": (4, 128, 4096), "gemma2_2b": (32, 256, 16384)}
OTHER_DEFAULTS = (8, 128, 4096)


@dataclasses.dataclass(frozen=True)
class Shape:
  """What both stacks run: `name` (the preset, or "checkpoint") and the sizes it defaults."""
  name: str
  batch: int
  seq: int
  sae_width: int
  dtype: str


def _shape(backend: str) -> Shape:
  name = "checkpoint" if FLAGS.checkpoint else FLAGS.config
  batch, seq, width = DEFAULTS.get(name, OTHER_DEFAULTS)
  dtype = FLAGS.dtype if FLAGS.dtype != "auto" else (
      "float32" if backend == "cpu" else "bfloat16")
  return Shape(name, FLAGS.batch or batch, FLAGS.seq or seq, FLAGS.sae_width or width, dtype)


def _weights(shape: Shape, accelerator: bool):
  """(config, params, saes, load timings), params and SAEs on the host: both stacks start from
  these copies."""
  import jax

  from sae import jumprelu
  from xling_jax import checkpoints
  from xling_jax.model import presets, transformer as model_lib

  dtype, load = shape.dtype, {}
  if FLAGS.checkpoint:
    start = time.perf_counter()
    params, config = checkpoints.load_params(FLAGS.checkpoint, dtype=dtype)
    params = jax.block_until_ready(params)
    load = {"load_s": time.perf_counter() - start,
            "load_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    config = config.replace(param_dtype=dtype, compute_dtype=dtype)
    print(f"loaded {FLAGS.checkpoint} in {load['load_s']:.1f}s", file=sys.stderr)
  else:
    config = presets.preset(FLAGS.config, param_dtype=dtype, compute_dtype=dtype)
    # On an accelerator, drawing Gemma-2-2B's weights with numpy would take a minute.
    params = model_lib.init_params(config, jax.random.PRNGKey(0), on_device=accelerator)
  params, saes = jax.device_get((params, jumprelu.random_params(
      jax.random.PRNGKey(1), config.d_model, shape.sae_width, n_layers=config.n_layers,
      dtype=dtype)))
  return config, params, saes, load


def _inputs(config, shape: Shape):
  """Random tokens after BOS, no padding: tokens, mask [batch, seq] int32. Ids stay inside a
  smaller per-layer-embedding table (the Gemma 4 toy's), which HF's lookup cannot pass."""
  import numpy as np
  rng = np.random.default_rng(0)
  high = min(config.vocab_size, config.ple_vocab_size or config.vocab_size)
  tokens = rng.integers(4, high, (shape.batch, shape.seq)).astype(np.int32)
  tokens[:, 0] = config.bos_id
  return tokens, np.ones((shape.batch, shape.seq), np.int32)


def _work(config, shape: Shape) -> tuple[dict, dict]:
  """Per row: analytic FLOPs per token (None where the stacks do different work), and the
  tokens one call processes."""
  from xling_jax.model import flops
  seq = shape.seq
  per_token = {
      "residuals": flops.forward_flops_per_token(config, seq, logits=False),
      "analysis": flops.forward_flops_per_token(config, seq, logits=False,
                                                sae_width=shape.sae_width),
      "scoring": flops.forward_flops_per_token(config, seq, logits=True),
      # English reference forward + forward + backward to activations (weights frozen).
      "lora_step": 3 * flops.forward_flops_per_token(config, seq, logits=True),
  }
  # mc_scoring counts what lm-eval processes: every choice row (context + choice) in full.
  work_tokens = {w: shape.batch * seq for w in ROWS}
  work_tokens["mc_scoring"] = shape.batch * MC_CHOICES * (seq - 2 * MC_CHOICE_LEN + MC_CHOICE_LEN)
  per_token["mc_scoring"] = None  # the stacks do different work here: no common FLOP count
  return per_token, work_tokens


def _hf_stack(config, params, saes, tokens, mask, obj_layer: int, dtype: str):
  """(the HF stack, None, its out-of-memory exceptions), or (None, why not, ()) without torch."""
  try:
    import torch
    import transformers  # noqa: F401
  except ImportError:
    return None, "torch/transformers not installed: HF column skipped", ()
  import tempfile

  from xling_jax import checkpoints
  with tempfile.TemporaryDirectory() as hf_dir:
    checkpoints.save_hf(hf_dir, params, config)
    hf = HFStack(hf_dir, config, saes, tokens, mask, obj_layer, dtype, FLAGS.hf_attn)
  hf.peak_bytes()
  return hf, None, (torch.OutOfMemoryError,)


def _free_torch_memory() -> None:
  import torch
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def _jax_peak_bytes():
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _matmul_peak_flops(dtype: str) -> float:
  import jax
  n = 2048 if jax.default_backend() == "cpu" else 8192
  # Random operands: constant ones draw less power, and a GPU clocks higher on them.
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  t = timing.median_seconds({"matmul": lambda: f(a).block_until_ready()}, 5)["matmul"]
  return 2 * n ** 3 / t


def _time_row(row: dict, stacks, n_tokens: int) -> None:
  """Time `row` on each (column, stack, out-of-memory exceptions), in turns; fills the row."""
  work = row["work"]
  for column, stack, _ in stacks:
    if column == "hf" and work == "lora_step":
      stack.setup_lora(FLAGS.lora_remat == "full")
  results = timing.rates_or_notes([getattr(stack, work) for _, stack, _ in stacks], FLAGS.repeats,
                                  n_tokens, [oom for _, _, oom in stacks])
  for (column, stack, _), (rate, note) in zip(stacks, results):
    row[f"{column}_tok_s"], row[f"{column}_note"] = rate, note
    if column == "hf":
      row["hf_peak_bytes"] = stack.peak_bytes()
    else:
      row["peak_bytes"] = _jax_peak_bytes()
    print(f"  {column:4s} {work:10s} {rate or 0:12.1f} tok/s {note or ''}", file=sys.stderr)
  if row["hf_tok_s"] and row["ours_tok_s"]:
    row["ratio"] = row["ours_tok_s"] / row["hf_tok_s"]


def _profile(ours: OurStack, rows: list[dict]) -> None:
  """One call of each of our rows under jax.profiler, annotated with the row's name (what
  `bin.trace_summary` splits the trace by)."""
  import jax
  with jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True):
    for row in rows:
      with jax.profiler.TraceAnnotation(row["work"]):
        getattr(ours, row["work"])()
  print(f"profile written under {FLAGS.profile_dir}", file=sys.stderr)


def _result(devices: str, config, shape: Shape, load: dict, rows: list[dict], peak: float,
            per_token: dict, hf_note: str | None, turns: bool) -> dict:
  """The JSON record (the schema BENCHMARKS.md relies on)."""
  from xling_jax.runtime.platform import describe_host
  return {
      "device": devices,
      "machine": describe_host(),
      "config": None if FLAGS.checkpoint else FLAGS.config, "checkpoint": FLAGS.checkpoint,
      "family": config.family,
      "batch": shape.batch, "seq": shape.seq, "sae_width": shape.sae_width, "dtype": shape.dtype,
      **load,
      "rows": rows,
      "peak_matmul_flop_s": peak,
      "flops_per_token": per_token,
      "flop_limit_fraction": {r["work"]: r["ours_tok_s"] * per_token[r["work"]] / peak
                              for r in rows if r["ours_tok_s"] and per_token[r["work"]]},
      "hf_flop_limit_fraction": {r["work"]: r["hf_tok_s"] * per_token[r["work"]] / peak
                                 for r in rows if r["hf_tok_s"] and per_token[r["work"]]},
      "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "note": hf_note,
      "order": "turns" if turns else "stacks",
  }


def _print_table(result: dict) -> None:
  print("\n| work | ours tok/s | HF tok/s | ratio | ours % of peak |\n|---|---|---|---|---|")
  rate = lambda v, note: f"{v:.1f}" if v else ("out of memory" if note else "n/a")
  for r in result["rows"]:
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "n/a"
    frac = result["flop_limit_fraction"].get(r["work"])
    print(f"| {r['work']} | {rate(r['ours_tok_s'], r['ours_note'])} | "
          f"{rate(r['hf_tok_s'], r['hf_note'])} | {ratio} | "
          + (f"{100 * frac:.1f}% |" if frac is not None else "n/a |"))
  print(f"\npeak matmul: {result['peak_matmul_flop_s'] / 1e9:.1f} GFLOP/s ({result['dtype']})")


def _config_only(shape: Shape):
  """The model config in the run's dtype, without weights (for --dry_run)."""
  from xling_jax import checkpoints
  from xling_jax.model import presets
  config = checkpoints.read_config(FLAGS.checkpoint) if FLAGS.checkpoint else presets.preset(
      FLAGS.config)
  return config.replace(param_dtype=shape.dtype, compute_dtype=shape.dtype)


def _dry_run(devices: str, shape: Shape) -> dict:
  """--dry_run's record: per planned row its bytes and FLOPs (bench_memory), printed in GB."""
  from bin import bench_memory
  from lora import objectives
  from xling_jax.runtime.platform import describe_host
  config = _config_only(shape)
  per_token, _ = _work(config, shape)
  rows = bench_memory.plan(config, shape, FLAGS.rows, objectives.default_objective_layer(
      config.n_layers), FLAGS.lora_remat, per_token)
  if not rows:
    raise app.UsageError(f"--dry_run plans the rows {bench_memory.PLANNED_ROWS}; --rows has none")
  print("\n| work | weights | SAEs | adapter + optimiser | phase peak (saved for backward) | "
        "total | TFLOP per call |\n|---|---|---|---|---|---|---|")
  gb = lambda n: f"{n / bench_memory.GB:.3g}"
  for r in rows:
    saved = r.get("saved_for_backward")
    print(f"| {r['work']} | {gb(r['resident']['weights'])} | {gb(r['resident']['saes'])} | "
          f"{gb(r['resident'].get('adapter_and_optimizer', 0))} | {gb(max(r['phases'].values()))}"
          + (f" ({gb(saved)})" if saved is not None else "")
          + f" | **{gb(r['total'])}**"
          + (f" ({gb(r['total_grouped_experts'])} grouped)" if "total_grouped_experts" in r else "")
          + f" | {r['flops_per_call'] / 1e12:.2f} |")
  print(f"\nGB = 1e9 bytes per device; {shape.name}, batch {shape.batch} x seq {shape.seq}, SAE "
        f"width {shape.sae_width}, {shape.dtype}, lora_remat {FLAGS.lora_remat}")
  return {"dry_run": True, "device": devices, "machine": describe_host(),
          "config": None if FLAGS.checkpoint else FLAGS.config, "checkpoint": FLAGS.checkpoint,
          "family": config.family, "batch": shape.batch, "seq": shape.seq,
          "sae_width": shape.sae_width, "dtype": shape.dtype, "lora_remat": FLAGS.lora_remat,
          "rows": rows}


def main(argv):
  del argv
  # torch shares the accelerator in this process: JAX must not take 75% of it up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  from xling_jax.runtime import io
  if FLAGS.json:
    io.check_output_file(FLAGS.json, "--json")
  devices = shared_flags.setup_platform()
  import jax
  import jax.extend.backend

  from lora import objectives

  unknown = set(FLAGS.rows) - set(ROWS)
  if unknown:
    raise app.UsageError(f"unknown --rows {sorted(unknown)}; choose from {ROWS}")
  accelerator = jax.default_backend() != "cpu"
  shape = _shape(jax.default_backend())
  if FLAGS.dry_run:
    result = _dry_run(devices, shape)
    if FLAGS.json:
      io.write_json(FLAGS.json, result)
      print(f"wrote {FLAGS.json}")
    return
  config, params, saes, load = _weights(shape, accelerator)
  if accelerator and FLAGS.hf:
    # JAX's allocator never returns memory; closing the backend does, so HF (whose LoRA step
    # needs most of an 80 GB card at batch 32 x 256) gets the whole device. JAX reopens it later.
    jax.extend.backend.clear_backends()
  tokens, mask = _inputs(config, shape)
  obj_layer = objectives.default_objective_layer(config.n_layers)
  print(f"devices: {devices}; {shape.name} ({config.family}, {config.n_layers} layers, d "
        f"{config.d_model}), batch {shape.batch} x seq {shape.seq}, SAE width "
        f"{shape.sae_width}, dtype {shape.dtype}", file=sys.stderr)
  per_token, work_tokens = _work(config, shape)
  rows = [{"work": w, "ours_tok_s": None, "hf_tok_s": None, "ratio": None, "peak_bytes": None,
           "hf_peak_bytes": None, "ours_note": None, "hf_note": None} for w in FLAGS.rows]

  hf, hf_note, hf_oom = (_hf_stack(config, params, saes, tokens, mask, obj_layer, shape.dtype)
                         if FLAGS.hf else (None, None, ()))
  turns = FLAGS.order == "turns" or (FLAGS.order == "auto" and not accelerator)
  if hf is not None and not turns:
    # Every HF row first, so that on an accelerator torch can hand its cached memory back before
    # JAX's allocator (which never shrinks) grows to its own peak.
    for row in rows:
      _time_row(row, [("hf", hf, hf_oom)], work_tokens[row["work"]])
    hf = None
    _free_torch_memory()

  params, saes = jax.device_put((params, saes))
  peak = _matmul_peak_flops(shape.dtype)
  ours = OurStack(config, params, saes, jax.numpy.asarray(tokens), jax.numpy.asarray(mask),
                  obj_layer, FLAGS.lora_remat)
  for row in rows:
    _time_row(row, ([("hf", hf, hf_oom)] if hf is not None else [])
              + [("ours", ours, (jax.errors.JaxRuntimeError,))], work_tokens[row["work"]])
  if FLAGS.profile_dir:
    _profile(ours, rows)

  result = _result(devices, config, shape, load, rows, peak, per_token, hf_note, turns)
  _print_table(result)
  if FLAGS.json:
    io.write_json(FLAGS.json, result)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  cli.run(main)
