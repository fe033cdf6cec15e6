"""python -m bin.bench_sae: JumpReLU encode throughput, and its cost over the bare matmul.

Reports (median of --repeats timed calls after --warmup, each ended by `block_until_ready`):
  * one layer: jitted `encode(params, x)` vs the jitted bare `x @ W_enc`, and their ratio (the
    bias, threshold and ReLU should add little: target <= 1.3x);
  * all layers: jitted `encode_stacked` over residuals [layers, tokens, d], in tokens/s (a token
    counts once however many layers encode it).

Weights are random (`jumprelu.random_params`); only shapes matter for speed. Gemma Scope 16k is
--d_in=2304 --d_sae=16384 --layers=26; the defaults keep a 2-core CPU run near 30 s.
"""
from __future__ import annotations

from absl import flags

from bin import cli, timing

FLAGS = flags.FLAGS
flags.DEFINE_integer("d_in", 2304, "Residual width d (Gemma-2-2B: 2304).", lower_bound=1)
flags.DEFINE_integer("d_sae", 16384, "SAE width W (Gemma Scope 16k: 16384).", lower_bound=1)
flags.DEFINE_integer("tokens", 256, "Tokens per call (batch x sequence, flattened).",
                     lower_bound=1)
flags.DEFINE_integer("layers", 2, "Layers in the stacked encode (Gemma-2-2B: 26).", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Weights and inputs dtype.")
flags.DEFINE_integer("warmup", 2, "Untimed calls before timing (the first compiles).",
                     lower_bound=1)
flags.DEFINE_integer("repeats", 7, "Timed calls; the median is reported.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed for the random weights and inputs.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def run(d_in: int, d_sae: int, tokens: int, layers: int, dtype: str, warmup: int, repeats: int,
        seed: int) -> dict:
  import jax
  import jax.numpy as jnp

  from sae import jumprelu

  k_params, k_x = jax.random.split(jax.random.PRNGKey(seed))
  stacked = jumprelu.random_params(k_params, d_in, d_sae, n_layers=layers, dtype=dtype)
  xs = jax.random.normal(k_x, (layers, tokens, d_in), jnp.float32).astype(dtype)
  one, x = jumprelu.unstack(stacked)[0], xs[0]
  rounds = dict(warmup=warmup, repeats=repeats)
  blocking = lambda fn, *args: lambda: fn(*args).block_until_ready()

  matmul, encode = jax.jit(lambda p, x: x @ p.W_enc), jax.jit(jumprelu.encode)
  one_layer = timing.median_seconds({"matmul": blocking(matmul, one, x),
                                     "encode": blocking(encode, one, x)}, **rounds)
  matmul_s, encode_s = one_layer["matmul"], one_layer["encode"]
  stacked_s = timing.median_seconds(
      {"stacked": blocking(jax.jit(jumprelu.encode_stacked), stacked, xs)}, **rounds)["stacked"]
  return {
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "d_in": d_in, "d_sae": d_sae, "tokens": tokens, "layers": layers, "dtype": dtype,
      "matmul_ms": 1e3 * matmul_s, "encode_ms": 1e3 * encode_s,
      "encode_over_matmul": encode_s / matmul_s,
      "encode_tokens_per_s": tokens / encode_s,
      "stacked_ms": 1e3 * stacked_s, "stacked_tokens_per_s": tokens / stacked_s,
      "stacked_gflops": 2 * tokens * layers * d_in * d_sae / stacked_s / 1e9,
  }


def format_table(r: dict) -> str:
  rows = [
      ("bare x @ W_enc, one layer", f"{r['matmul_ms']:.2f} ms", ""),
      ("encode, one layer", f"{r['encode_ms']:.2f} ms",
       f"{r['encode_over_matmul']:.3f}x the matmul"),
      (f"encode_stacked, {r['layers']} layers", f"{r['stacked_ms']:.2f} ms",
       f"{r['stacked_tokens_per_s']:,.0f} tokens/s ({r['stacked_gflops']:.1f} GFLOP/s)"),
  ]
  head = (f"JumpReLU encode on {r['backend']} ({r['device']}): d={r['d_in']} W={r['d_sae']} "
          f"tokens={r['tokens']} dtype={r['dtype']}")
  width = max(len(name) for name, _, _ in rows)
  return "\n".join([head] + [f"  {name:<{width}}  {t:>10}  {note}" for name, t, note in rows])


def main(argv):
  del argv
  measure = lambda: run(FLAGS.d_in, FLAGS.d_sae, FLAGS.tokens, FLAGS.layers, FLAGS.dtype,
                        FLAGS.warmup, FLAGS.repeats, FLAGS.seed)
  timing.report_benchmark(measure, format_table, FLAGS.json)


if __name__ == "__main__":
  cli.run(main)
