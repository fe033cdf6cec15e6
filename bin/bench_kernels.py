"""python -m bin.bench_kernels: each kernel seam's reference against its fused implementation.

Rows (median of --repeats timed calls after --warmup, calls interleaved round by round, each
ended by `block_until_ready`), for every --presets shape:
  attention  one layer's attention, for each attention kind of the model (its sliding window,
             global) and each --attention_shapes BxT, on full causal rows (`lm`), and at the
             first shape also on packed scoring rows (`packed`: a context of 3/4 of the row,
             then 4 choices that see the context and themselves); with --grad, `lm` rows also
             forward + backward (the fused forward differentiates through the reference: this
             row says what that costs in training)
  sae_stats  one layer's JumpReLU encode + row sums at (d_model, --sae_width), --sae_tokens
             tokens
Fused rows run once per tile configuration (--attention_blocks, --sae_blocks) and report the
largest difference from the reference (attention: max |fused - reference| over the outputs;
sae_stats: max relative mass difference and the number of (row, feature) firing counts that
differ). Inputs are random in --dtype; only shapes matter for speed.
"""
from __future__ import annotations

from absl import flags

from bin import cli, shared_flags, timing

FLAGS = flags.FLAGS
shared_flags.define_platform_flags()
flags.DEFINE_list("presets", ["gemma2_2b", "gemma3_1b", "gemma3_4b"], "Model shapes (presets).")
flags.DEFINE_list("attention_shapes", ["32x256", "4x4096"], "Attention batch x sequence.")
flags.DEFINE_list("attention_blocks", None,
                  "Fused attention tiles block_q x block_k (default: the kernel's own, plus "
                  "64x32 on GPU).")
flags.DEFINE_list("sae_blocks", None,
                  "Fused sae_stats tiles: block_t x block_w x block_d on GPU, block_t x block_w "
                  "on TPU (default: the kernel's own, plus 128x128x64 and 64x256x32 on GPU).")
flags.DEFINE_integer("sae_width", 16384, "SAE width W.", lower_bound=128)
flags.DEFINE_integer("sae_tokens", 32 * 256, "Tokens per sae_stats call (one batch row each "
                     "256 tokens).", lower_bound=256)
flags.DEFINE_enum("fused", "auto", ["auto", "pallas_triton", "pallas_mosaic"],
                  "Fused implementation to time (auto: the one written for the platform, validated "
                  "or not; on CPU a named one runs "
                  "in Pallas's interpreter, a smoke test of this program, not a benchmark).")
flags.DEFINE_bool("grad", True, "Also time attention forward + backward.")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Inputs and weights dtype.")
flags.DEFINE_integer("warmup", 2, "Untimed calls (the first compiles).", lower_bound=1)
flags.DEFINE_integer("repeats", 10, "Timed calls; the median is reported.", lower_bound=1)
flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")

_EXTRA_BLOCKS = {"pallas_triton": (["64x32"], ["128x128x64", "64x256x32"]),
                 "pallas_mosaic": ([], [])}


def _median_ms(calls: dict, warmup: int, repeats: int) -> dict[str, float]:
  """{name: (jitted fn, args)} -> {name: median milliseconds} (`timing.median_seconds`)."""
  import jax
  blocking = {name: (lambda fn=fn, args=args: jax.block_until_ready(fn(*args)))
              for name, (fn, args) in calls.items()}
  seconds = timing.median_seconds(blocking, repeats=repeats, warmup=warmup)
  return {name: 1e3 * s for name, s in seconds.items()}


def _blocks(spec: list[str] | None, extra: list[str], names: tuple[str, ...]) -> list[dict]:
  """'64x32' strings -> [{}, {block_q: 64, block_k: 32}, ...] ({}: the kernel's defaults)."""
  specs = extra if spec is None else spec
  return ([{}] if spec is None else []) + [
      dict(zip(names, map(int, s.split("x")), strict=True)) for s in specs]


def _attention_inputs(config, batch: int, seq: int, window, packed: bool, dtype, seed: int):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from xling_jax.model import transformer as model_lib

  K, G, H = config.n_kv_heads, config.n_heads // config.n_kv_heads, config.head_dim
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(kq, (batch, seq, K, G, H), dtype) * config.query_pre_attn_scalar ** -0.5
  k = jax.random.normal(kk, (batch, seq, K, H), dtype)
  v = jax.random.normal(kv, (batch, seq, K, H), dtype)
  positions, pair_mask = np.arange(seq), None
  if packed:
    context, choice = seq * 3 // 4, seq // 16
    segments = np.concatenate([np.zeros(context, int), np.repeat(np.arange(1, 5), choice)])
    positions = np.concatenate([positions[:context], context + np.tile(np.arange(choice), 4)])
    pair = (segments[None, :] == 0) | (segments[None, :] == segments[:, None])
    pair_mask = jnp.broadcast_to(jnp.asarray(pair), (batch, seq, seq))
  mask = model_lib.attention_mask_for(jnp.ones((batch, seq), jnp.int32),
                                      jnp.broadcast_to(jnp.asarray(positions), (batch, seq)),
                                      window, pair_mask)
  return q, k, v, mask


def attention_rows(preset: str, fused: str, dtype: str, rounds: dict) -> list[dict]:
  import jax
  import jax.numpy as jnp

  from xling_jax.kernels import attention as seam
  from xling_jax.model import presets

  config = presets.preset(preset)
  cap = config.attn_logit_softcap
  blocks = _blocks(FLAGS.attention_blocks, _EXTRA_BLOCKS[fused][0], ("block_q", "block_k"))
  rows = []
  for first, shape in zip([True] + [False] * len(FLAGS.attention_shapes), FLAGS.attention_shapes):
    batch, seq = map(int, shape.split("x"))
    for kind in config.attention_kinds:
      # Packed rows at the first shape only (scoring rows are short), never differentiated.
      for packed in (False, True) if first else (False,):
        q, k, v, mask = _attention_inputs(config, batch, seq, kind.window, packed,
                                          jnp.dtype(dtype), 0)

        def forward(impl, tiles):
          return jax.jit(lambda q, k, v, m: seam.attention(q, k, v, m, cap, impl=impl, **tiles))

        def backward(impl, tiles):
          loss = lambda q, k, v, m: seam.attention(q, k, v, m, cap, impl=impl, **tiles).astype(
              jnp.float32).sum()
          # value_and_grad: the forward's value is used, as in training (a bare grad would
          # let XLA drop the fused forward, whose backward is the reference's).
          return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

        variants = {"reference": ("reference", {})} | {
            f"{fused} {tiles or 'default'}": (fused, tiles) for tiles in blocks}
        passes = {"forward": forward} | (
            {"forward+backward": backward} if FLAGS.grad and not packed else {})
        reference = forward("reference", {})(q, k, v, mask).astype(jnp.float32)
        for pass_name, make in passes.items():
          calls = {name: (make(impl, tiles), (q, k, v, mask))
                   for name, (impl, tiles) in variants.items()}
          ms = _median_ms(calls, **rounds)
          for name, (impl, tiles) in variants.items():
            row = {"kernel": "attention", "preset": preset, "shape": shape,
                   "kind": f"window {kind.window}" if kind.window else "global",
                   "mask": "packed" if packed else "lm", "pass": pass_name, "impl": impl,
                   "blocks": tiles, "ms": ms[name], "speedup": ms["reference"] / ms[name]}
            if impl != "reference" and pass_name == "forward":
              out = calls[name][0](q, k, v, mask).astype(jnp.float32)
              row["max_abs_diff"] = float(jnp.abs(out - reference).max())
            rows.append(row)
  return rows


def sae_rows(preset: str, fused: str, dtype: str, rounds: dict) -> list[dict]:
  import jax
  import jax.numpy as jnp

  from sae import jumprelu
  from xling_jax.kernels import sae_stats as seam
  from xling_jax.model import presets

  d = presets.preset(preset).d_model
  names = ("block_t", "block_w", "block_d") if fused == "pallas_triton" else ("block_t", "block_w")
  blocks = _blocks(FLAGS.sae_blocks, _EXTRA_BLOCKS[fused][1], names)
  params = jumprelu.random_params(jax.random.PRNGKey(1), d, FLAGS.sae_width, dtype=dtype)
  x = jax.random.normal(jax.random.PRNGKey(2), (FLAGS.sae_tokens // 256, 256, d), dtype)
  weights = jnp.ones(x.shape[:2], jnp.float32)
  variants = {"reference": ("reference", {})} | {
      f"{fused} {tiles or 'default'}": (fused, tiles) for tiles in blocks}
  calls = {name: (jax.jit(lambda x, p, w, impl=impl, tiles=tiles: seam.sae_stats(
      x, p.W_enc, p.b_enc, p.threshold, w, impl=impl, **tiles)), (x, params, weights))
      for name, (impl, tiles) in variants.items()}
  ms = _median_ms(calls, **rounds)
  mass_ref, fired_ref = calls["reference"][0](x, params, weights)
  rows = []
  for name, (impl, tiles) in variants.items():
    row = {"kernel": "sae_stats", "preset": preset, "shape": f"{x.shape[0]}x256 d={d} "
           f"W={FLAGS.sae_width}", "impl": impl, "blocks": tiles, "ms": ms[name],
           "speedup": ms["reference"] / ms[name]}
    if impl != "reference":
      mass, fired = calls[name][0](x, params, weights)
      row["max_rel_mass_diff"] = float(jnp.abs(mass - mass_ref).max() / jnp.abs(mass_ref).max())
      row["fired_mismatches"] = int((fired != fired_ref).sum())
    rows.append(row)
  return rows


def format_rows(rows: list[dict]) -> str:
  lines = ["| kernel | preset | shape | case | impl (tiles) | ms | ref / this | difference |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    case = (f"{r['kind']}, {r['mask']}, {r['pass']}" if r["kernel"] == "attention" else "")
    diff = ""
    if "max_abs_diff" in r:
      diff = f"max abs {r['max_abs_diff']:.2e}"
    elif "fired_mismatches" in r:
      diff = f"mass rel {r['max_rel_mass_diff']:.1e}, fired mismatches {r['fired_mismatches']}"
    impl = r["impl"] + (f" {r['blocks']}" if r["blocks"] else "")
    lines.append(f"| {r['kernel']} | {r['preset']} | {r['shape']} | {case} | {impl} | "
                 f"{r['ms']:.3f} | {r['speedup']:.2f}x | {diff} |")
  return "\n".join(lines)


def main(argv):
  from xling_jax.runtime import io
  if FLAGS.json:
    io.check_output_file(FLAGS.json, "--json")
  devices = shared_flags.setup_platform()
  import jax

  from xling_jax.kernels import select
  fused = select.fused_for(jax.default_backend()) if FLAGS.fused == "auto" else FLAGS.fused
  if fused is None:
    raise ValueError(f"no fused kernel is written for {devices}: run on a GPU or TPU "
                     "(--platform), or name one with --fused")
  rounds = dict(warmup=FLAGS.warmup, repeats=FLAGS.repeats)
  rows = []
  for preset in FLAGS.presets:
    rows += attention_rows(preset, fused, FLAGS.dtype, rounds)
    rows += sae_rows(preset, fused, FLAGS.dtype, rounds)
    print(format_rows([r for r in rows if r["preset"] == preset]), flush=True)
  if FLAGS.json:
    io.write_json(FLAGS.json, {"devices": devices, "jax": jax.__version__,
                               "dtype": FLAGS.dtype, "rows": rows})


if __name__ == "__main__":
  cli.run(main)
