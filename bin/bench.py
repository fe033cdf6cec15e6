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
(analytic FLOPs per token, `xling_jax.flops`) by the peak a large matmul reaches in this run.
"""
from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time

from absl import app, flags

from bin import common
from lora import DEFAULT_REMAT

FLAGS = flags.FLAGS
common.define_platform_flags()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
flags.DEFINE_string("config", "toy",
                    "Model shape with random weights: a preset (toy, toy_gemma3, small, "
                    "gemma2_2b, gemma3_270m, gemma3_1b, ...). small ~ a minute per stack on a "
                    "2-core CPU. Ignored with --checkpoint.")
flags.DEFINE_string("checkpoint", None,
                    "Real weights instead of random ones: any path load_params reads, or "
                    "gemma3-270m. Both stacks get the same float weights (HF loads them from a "
                    "safetensors copy we write).")
flags.DEFINE_integer("batch", None, "Batch size (default per config: toy 8, small 4, gemma2_2b 32, "
                     "otherwise 8).")
flags.DEFINE_integer("seq", None, "Sequence length (default: toy 64, small 128, gemma2_2b 256, "
                     "otherwise 128).")
flags.DEFINE_integer("sae_width", None, "SAE width (default: toy 256, small 4096, gemma2_2b "
                     "16384, otherwise 4096).")
flags.DEFINE_integer("repeats", 5, "Timed repeats per row (median reported).")
flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                  "Weights/activations dtype for both stacks. auto: float32 on cpu, bfloat16 else.")
flags.DEFINE_list("rows", ["residuals", "analysis", "scoring", "mc_scoring", "lora_step"],
                  "Which rows to run.")
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
flags.DEFINE_string("profile_dir", None,
                    "After timing, trace one call of each of our rows with jax.profiler into this "
                    "directory (TensorBoard/XProf, plus perfetto_trace.json.gz).")

DEFAULTS = {"toy": (8, 64, 256), "small": (4, 128, 4096), "gemma2_2b": (32, 256, 16384)}
OTHER_DEFAULTS = (8, 128, 4096)
ROWS = ("residuals", "analysis", "scoring", "mc_scoring", "lora_step")
MC_CHOICES, MC_CHOICE_LEN = 4, 8


def _median_times(fns, repeats: int) -> list[float]:
  """Median seconds per call of each fn after a warm-up call (compile / allocate). The timed
  calls take turns (a, b, a, b, ...), so a machine whose speed drifts within the run (a shared
  VM) slows every fn alike instead of whichever ran during the slow minutes."""
  for fn in fns:
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, fn_times in zip(fns, times):
      start = time.perf_counter()
      fn()
      fn_times.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def _rates_or_notes(fns, repeats: int, n_tokens: int, out_of_memory):
  """[(tokens/s, None) or (None, why)] for fns timed in turns (`_median_times`); `out_of_memory`
  [i] are the exceptions meaning that fns[i] ran out of device memory: that fn becomes a note,
  the others are still timed (one row that does not fit must not cost the rest of the table)."""
  results, live = [None] * len(fns), []
  for i, (fn, oom) in enumerate(zip(fns, out_of_memory)):
    try:
      fn()  # whether it fits; the timing warms up again
      live.append(i)
    except oom as e:
      if isinstance(e, RuntimeError) and "RESOURCE_EXHAUSTED" not in str(e) \
          and "out of memory" not in str(e).lower():
        raise
      results[i] = (None, f"out of device memory: {str(e).splitlines()[0][:200]}")
  for i, seconds in zip(live, _median_times([fns[i] for i in live], repeats)):
    results[i] = (n_tokens / seconds, None)
  return results


def _rate_or_note(fn, repeats: int, n_tokens: int, out_of_memory: tuple[type, ...]):
  """(tokens/s, None), or (None, why) when the device ran out of memory."""
  return _rates_or_notes([fn], repeats, n_tokens, [out_of_memory])[0]


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
  t = _median_times([lambda: f(a).block_until_ready()], 5)[0]
  return 2 * n ** 3 / t


class OurStack:
  """The four workloads in JAX, jitted, on random weights."""

  def __init__(self, config, params, saes, tokens, mask, obj_layer, lora_remat):
    import jax
    import numpy as np
    import optax

    from lora import lora as lora_lib, objectives, train
    from xling_jax.analysis import sae_stats
    from xling_jax.model import transformer as model_lib

    self.tokens, self.mask = tokens, mask
    @jax.jit
    def residuals(p, t, m):
      return model_lib.forward(p, config, t, m, return_logits=False).residuals

    self.residuals = lambda: residuals(params, tokens, mask).block_until_ready()
    stats = lambda: sae_stats.batch_stats(params, config, saes, tokens, mask)
    self.analysis = lambda: jax.block_until_ready(stats())

    @jax.jit
    def token_logprobs(p, t, m):
      x = model_lib.embed(p, config, t)
      hidden, _ = model_lib.scan_blocks(p, config, x, m)
      return model_lib.target_logprobs(p, config, hidden[:, :-1], t[:, 1:]) * m[:, 1:]

    self.scoring = lambda: token_logprobs(params, tokens, mask).block_until_ready()

    from xling_jax.evaluation import scoring
    ctx_len = tokens.shape[1] - 2 * MC_CHOICE_LEN
    ids = np.asarray(tokens)
    items = [scoring.EncodedItem(tuple(int(t) for t in row[:ctx_len]), tuple(
        tuple(int(t) for t in row[ctx_len + c: ctx_len + c + MC_CHOICE_LEN]) for c in range(MC_CHOICES)))
        for row in ids]
    self.mc_scoring = lambda: scoring.score(params, config, items, batch_size=len(items))

    lora_config = lora_lib.LoraConfig(rank=16, alpha=32.0)
    adapter = lora_lib.init_adapter(config, lora_config)
    objective = objectives.ObjectiveConfig(layers=(obj_layer,), w_align=1.0, w_retain=0.0, w_lm=1.0)
    tx = optax.adamw(1e-4)
    step = train.make_train_step(config, objective, tx, lora_config.scale, remat=lora_remat)
    obj_saes = jax.tree.map(lambda a: a[obj_layer:obj_layer + 1], saes)
    batch = objectives.Batch(tokens, mask, tokens, mask)
    state = {"layers": adapter["layers"], "opt": tx.init(adapter["layers"])}

    def lora_step():
      layers, opt, metrics = step(state["layers"], state["opt"], params, obj_saes, batch)
      state["layers"], state["opt"] = layers, opt
      jax.block_until_ready(metrics["loss"])

    self.lora_step = lora_step


class HFStack:
  """The same four workloads with HF transformers / PEFT / torch."""

  def __init__(self, hf_dir, config, saes, tokens, mask, obj_layer, dtype, attn):
    import numpy as np
    import torch
    import transformers

    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    cls = {"gemma2": transformers.Gemma2ForCausalLM,
           "gemma3": transformers.Gemma3ForCausalLM}[config.family]
    self.model = cls.from_pretrained(
        hf_dir, dtype=tdtype, attn_implementation=attn).to(self.device).eval()
    self.hf_dir, self.tdtype, self.obj_layer = hf_dir, tdtype, obj_layer
    self.bos_id = config.bos_id
    self.tokens = torch.tensor(np.asarray(tokens), device=self.device, dtype=torch.long)
    self.mask = torch.tensor(np.asarray(mask), device=self.device)
    self.saes = {k: torch.tensor(np.asarray(getattr(saes, k), np.float32), device=self.device,
                                 dtype=tdtype) for k in ("W_enc", "b_enc", "threshold")}

  def _sync(self):
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def _layer_outputs(self, model, run):
    """Call `run()` with a forward hook on every decoder layer; returns the layers' raw outputs."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(
        out[0] if isinstance(out, tuple) else out)) for layer in model.model.layers]
    try:
      result = run()
    finally:
      for h in hooks:
        h.remove()
    return outputs, result

  def residuals(self):
    with self.torch.no_grad():
      self._layer_outputs(self.model, lambda: self.model.model(
          input_ids=self.tokens, attention_mask=self.mask))
    self._sync()

  def _encode_stats(self, resid, layer, weights):
    pre = resid @ self.saes["W_enc"][layer] + self.saes["b_enc"][layer]
    f = self.torch.relu(pre) * (pre > self.saes["threshold"][layer])
    active = (f > 0).to(resid.dtype)
    return ((f.sum(-1) * weights).sum(), (active.sum(-1) * weights).sum(),
            (resid.float().norm(dim=-1) * weights).sum(), (active * weights[..., None]).sum((0, 1)))

  def analysis(self):
    with self.torch.no_grad():
      outs, _ = self._layer_outputs(self.model, lambda: self.model.model(
          input_ids=self.tokens, attention_mask=self.mask))
      weights = (self.mask * (self.tokens != self.bos_id)).to(self.tdtype)
      for layer, resid in enumerate(outs):
        self._encode_stats(resid, layer, weights)
    self._sync()

  def scoring(self):
    with self.torch.no_grad():
      logits = self.model(input_ids=self.tokens, attention_mask=self.mask).logits[:, :-1].float()
      logp = self.torch.log_softmax(logits, dim=-1)
      logp.gather(-1, self.tokens[:, 1:, None])[..., 0] * self.mask[:, 1:]
    self._sync()

  def mc_scoring(self):
    """lm-eval's way: one row per (item, choice) = context + choice[:-1], full-vocab log-softmax;
    one batch per choice (batch rows each), as lm-eval batches its requests."""
    torch = self.torch
    ctx_len = self.tokens.shape[1] - 2 * MC_CHOICE_LEN
    with torch.no_grad():
      for c in range(MC_CHOICES):
        rows = torch.cat([self.tokens[:, :ctx_len],
                          self.tokens[:, ctx_len + c: ctx_len + c + MC_CHOICE_LEN]], 1)
        logits = self.model(input_ids=rows[:, :-1]).logits[:, ctx_len - 1:].float()
        torch.log_softmax(logits, dim=-1).gather(-1, rows[:, ctx_len:, None])[..., 0].sum(-1)
    self._sync()

  def setup_lora(self, remat: bool):
    import peft
    config = peft.LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    if remat:
      # HF checkpoints only in training mode (Gemma-2 has no dropout: same math).
      self.model.gradient_checkpointing_enable(
          gradient_checkpointing_kwargs={"use_reentrant": False})
      self.model.train()
    self.peft_model = peft.get_peft_model(self.model, config)
    self.optim = self.torch.optim.AdamW(
        [p for p in self.peft_model.parameters() if p.requires_grad], lr=1e-4)

  def lora_step(self):
    torch, model, layer = self.torch, self.peft_model, self.obj_layer
    weights = (self.mask * (self.tokens != self.bos_id)).to(self.tdtype)
    with torch.no_grad(), model.disable_adapter():  # frozen English reference
      outs, _ = self._layer_outputs(model.base_model.model, lambda: model(
          input_ids=self.tokens, attention_mask=self.mask))
      ref = self._encode_stats(outs[layer], layer, weights)[0] / weights.sum()
    outs, out = self._layer_outputs(model.base_model.model, lambda: model(
        input_ids=self.tokens, attention_mask=self.mask, labels=self.tokens))
    act = self._encode_stats(outs[layer], layer, weights)[0] / weights.sum()
    loss = out.loss + ((act - ref) / ref) ** 2
    loss.backward()
    self.optim.step()
    self.optim.zero_grad()
    self._sync()

  def peak_bytes(self):
    if self.device == "cuda":
      peak = self.torch.cuda.max_memory_allocated()
      self.torch.cuda.reset_peak_memory_stats()
      return peak
    return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # torch shares the accelerator in this process: JAX must not take 75% of it up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  from xling_jax.runtime import io
  from xling_jax.runtime.platform import describe_host
  if FLAGS.json:
    io.check_output_file(FLAGS.json, "--json")
  devices = common.setup_platform()
  import tempfile

  import jax
  import jax.extend.backend
  import numpy as np

  from sae import jumprelu
  from xling_jax import checkpoints
  from xling_jax.model import presets
  from xling_jax.model import flops
  from xling_jax.model import transformer as model_lib

  unknown = set(FLAGS.rows) - set(ROWS)
  if unknown:
    raise app.UsageError(f"unknown --rows {sorted(unknown)}; choose from {ROWS}")
  name = "checkpoint" if FLAGS.checkpoint else FLAGS.config
  batch, seq, width = DEFAULTS.get(name, OTHER_DEFAULTS)
  batch, seq, width = FLAGS.batch or batch, FLAGS.seq or seq, FLAGS.sae_width or width
  dtype = FLAGS.dtype if FLAGS.dtype != "auto" else (
      "float32" if jax.default_backend() == "cpu" else "bfloat16")
  accelerator = jax.default_backend() != "cpu"
  load = {}
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
  # Both stacks start from these host copies.
  params, saes = jax.device_get((params, jumprelu.random_params(
      jax.random.PRNGKey(1), config.d_model, width, n_layers=config.n_layers, dtype=dtype)))
  if accelerator and FLAGS.hf:
    # JAX's allocator never returns memory; closing the backend does, so HF (whose LoRA step
    # needs most of an 80 GB card at batch 32 x 256) gets the whole device. JAX reopens it later.
    jax.extend.backend.clear_backends()
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, config.vocab_size, (batch, seq)).astype(np.int32)
  tokens[:, 0] = config.bos_id
  mask = np.ones((batch, seq), np.int32)
  obj_layer = min(20, config.n_layers - 1)
  n_tokens = batch * seq
  print(f"devices: {devices}; {name} ({config.family}, {config.n_layers} layers, d "
        f"{config.d_model}),"
        f" batch {batch} x seq {seq}, SAE width {width}, dtype {dtype}", file=sys.stderr)

  per_token = {
      "residuals": flops.forward_flops_per_token(config, seq, logits=False),
      "analysis": flops.forward_flops_per_token(config, seq, logits=False, sae_width=width),
      "scoring": flops.forward_flops_per_token(config, seq, logits=True),
      # English reference forward + forward + backward to activations (weights frozen).
      "lora_step": 3 * flops.forward_flops_per_token(config, seq, logits=True),
  }
  # mc_scoring counts what lm-eval processes: every choice row (context + choice) in full.
  work_tokens = {w: n_tokens for w in ROWS}
  work_tokens["mc_scoring"] = batch * MC_CHOICES * (seq - 2 * MC_CHOICE_LEN + MC_CHOICE_LEN)
  per_token["mc_scoring"] = None  # the stacks do different work here: no common FLOP count
  rows = [{"work": w, "ours_tok_s": None, "hf_tok_s": None, "ratio": None, "peak_bytes": None,
           "hf_peak_bytes": None, "ours_note": None, "hf_note": None} for w in FLAGS.rows]

  hf, hf_note, hf_oom = None, None, ()
  if FLAGS.hf:
    try:
      import torch
      import transformers  # noqa: F401
    except ImportError:
      hf_note = "torch/transformers not installed: HF column skipped"
    if hf_note is None:
      hf_oom = (torch.OutOfMemoryError,)
      with tempfile.TemporaryDirectory() as hf_dir:
        checkpoints.save_hf(hf_dir, params, config)
        hf = HFStack(hf_dir, config, saes, tokens, mask, obj_layer, dtype, FLAGS.hf_attn)
      hf.peak_bytes()
  turns = FLAGS.order == "turns" or (FLAGS.order == "auto" and not accelerator)

  def time_row(row, stacks):
    """Time `row` on each (column, stack, out-of-memory exceptions), in turns."""
    work = row["work"]
    if work == "lora_step" and any(stack is hf for _, stack, _ in stacks):
      hf.setup_lora(FLAGS.lora_remat == "full")
    results = _rates_or_notes([getattr(stack, work) for _, stack, _ in stacks], FLAGS.repeats,
                              work_tokens[work], [oom for _, _, oom in stacks])
    for (column, stack, _), (rate, note) in zip(stacks, results):
      row[f"{column}_tok_s"], row[f"{column}_note"] = rate, note
      row["hf_peak_bytes" if stack is hf else "peak_bytes"] = (
          hf.peak_bytes() if stack is hf else _jax_peak_bytes())
      print(f"  {column:4s} {work:10s} {rate or 0:12.1f} tok/s {note or ''}", file=sys.stderr)
    if row["hf_tok_s"] and row["ours_tok_s"]:
      row["ratio"] = row["ours_tok_s"] / row["hf_tok_s"]

  if hf is not None and not turns:
    # Every HF row first, so that on an accelerator torch can hand its cached memory back before
    # JAX's allocator (which never shrinks) grows to its own peak.
    for row in rows:
      time_row(row, [("hf", hf, hf_oom)])
    hf = None
    gc.collect()
    if torch.cuda.is_available():
      torch.cuda.empty_cache()

  params, saes = jax.device_put((params, saes))
  peak = _matmul_peak_flops(dtype)
  ours = OurStack(config, params, saes, jax.numpy.asarray(tokens), jax.numpy.asarray(mask),
                  obj_layer, FLAGS.lora_remat)
  for row in rows:
    time_row(row, ([("hf", hf, hf_oom)] if hf is not None else [])
             + [("ours", ours, (jax.errors.JaxRuntimeError,))])
  if FLAGS.profile_dir:
    with jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True):
      for row in rows:
        with jax.profiler.TraceAnnotation(row["work"]):
          getattr(ours, row["work"])()
    print(f"profile written under {FLAGS.profile_dir}", file=sys.stderr)

  result = {
      "device": devices,
      "machine": describe_host(),
      "config": None if FLAGS.checkpoint else FLAGS.config, "checkpoint": FLAGS.checkpoint,
      "family": config.family,
      "batch": batch, "seq": seq, "sae_width": width, "dtype": dtype, **load,
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
  print(f"\n| work | ours tok/s | HF tok/s | ratio | ours % of peak |\n|---|---|---|---|---|")
  rate = lambda v, note: f"{v:.1f}" if v else ("out of memory" if note else "n/a")
  for r in rows:
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "n/a"
    frac = result["flop_limit_fraction"].get(r["work"])
    print(f"| {r['work']} | {rate(r['ours_tok_s'], r['ours_note'])} | "
          f"{rate(r['hf_tok_s'], r['hf_note'])} | {ratio} | "
          + (f"{100 * frac:.1f}% |" if frac is not None else "n/a |"))
  print(f"\npeak matmul: {peak / 1e9:.1f} GFLOP/s ({dtype})")
  if FLAGS.json:
    io.write_json(FLAGS.json, result)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  common.run(main)
