"""What `bin.bench --dry_run` reports: the device memory the analysis row and the LoRA-step row
need, without weights, a device or a timed call. No flags here (as `bench_stacks`).

Three parts per row, each named in the result:
- resident arrays, exact, from `jax.eval_shape`: the weights, the SAEs, the adapter with its
  optimiser state (in and out: the step does not donate them) and its gradients;
- what autodiff keeps for the backward pass, exact, from `jax.eval_shape` of `jax.vjp` of the
  row's loss: every residual JAX saves under the `--lora_remat` policy, the frozen inputs left
  out (they are resident). XLA can reuse none of these buffers before the backward pass reads
  them;
- the working set of one block, analytic (XLA fuses some of it away and keeps copies of other
  parts, so this is an estimate): that layer's weights (the scan slices its stacked weights),
  the scan's carry (the residual, the input embeddings, the K/V that KV-shared layers read), and
  the largest of the attention phase (q, k, v, float32 scores and probabilities over the whole
  [T, T] square, as the reference kernel computes them), the MLP phase (gate, up, their product;
  the routed experts' gathered rows and hidden units, and, as JAX 0.10 lowers `ragged_dot`,
  their inputs expanded over every expert: `total_grouped_experts` is the total without that)
  and the SAE phase (float32 pre-activations and codes); doubled in
  the backward pass (each recomputed activation meets its cotangent), plus one vocabulary chunk
  of float32 logits and its cotangent for the lm term.
A row's total is the resident arrays plus its largest phase: for the LoRA step the English
reference pass (holding the residual stack [L, B, T, D] its forward returns) or the
differentiated pass (what autodiff keeps, twice a block's working set, and with several
vocabulary chunks one chunk's recomputed logits and their cotangent).

Checked against XLA's own buffer assignment on the CPU (`jax.jit(...).lower(...).compile()
.memory_analysis()`, float32, SAE width 16384), planned phase peak against XLA's temporaries:
Gemma-2-2B at 8 x 128, analysis 0.47 / 0.49 GB, LoRA step 10.2 / 9.4 (dots) and 4.4 / 3.6
(full); at 16 x 256, 0.92 / 0.66 and 30.7 / 31.3 (dots); E2B at 8 x 128, 0.46 / 0.45 and
18.7 / 17.8 (dots); 26B-A4B at 8 x 128 (dense experts), 15.4 / 18.3 and 41.3 / 26.8 (dots).
(The CPU is no guide in bfloat16: it runs the dots on float32 copies of the weights.)
"""
from __future__ import annotations

from bin.bench_stacks import LORA_ALPHA, LORA_RANK, lora_objective

GB = 1e9
PLANNED_ROWS = ("analysis", "lora_step")


def _bytes(tree) -> int:
  import jax
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def block_working_bytes(config, rows: int, seq: int, sae_width: int = 0, *,
                        dense_experts: bool = True) -> int:
  """One block's working set in the forward pass (see the module docstring), the largest over
  the layers, for `rows` sequences of `seq` tokens in the config's compute dtype.
  `dense_experts`: the routed experts' `lax.ragged_dot` lowered as this JAX (0.10) lowers it,
  to a product over every expert, with the routed rows' inputs expanded to [E, rows, D] (seen
  in XLA:CPU's buffers; a public report finds XLA:GPU doing the same); else a grouped matmul
  over the routed rows only."""
  import jax.numpy as jnp
  c, T = config, seq
  item = jnp.dtype(c.compute_dtype).itemsize
  tokens = rows * T
  carry = 2 * tokens * c.d_model * item + sum(
      2 * tokens * c.kind_kv_heads(c.layer_kinds[s]) * c.kind_head_dim(c.layer_kinds[s]) * item
      for s in c.kv_slots)
  sae = 2 * tokens * sae_width * 4
  best = 0
  for layer in range(c.n_layers):
    kind = c.layer_kinds[layer]
    H, K, F = c.kind_head_dim(kind), c.kind_kv_heads(kind), c.layer_mlp_hidden(layer)
    weights = (2 * c.n_heads * H + 2 * K * H) * c.d_model + 3 * c.d_model * F
    weights += c.n_experts * 3 * c.d_model * c.moe_hidden + 2 * c.d_model * c.ple_dim
    attention = tokens * (2 * c.n_heads * H + 2 * K * H) * item + 2 * rows * c.n_heads * T * T * 4
    mlp = 3 * tokens * F * item
    if c.n_experts:
      routed = tokens * c.top_k_experts
      mlp += routed * (c.d_model + 3 * c.moe_hidden) * item + routed * c.d_model * 4
      mlp += tokens * c.n_experts * 4  # router probabilities
      if dense_experts:
        mlp += c.n_experts * routed * c.d_model * item
    best = max(best, weights * item + max(attention, mlp, sae))
  return carry + best


def _shapes(config, shape):
  """(params, SAEs over every layer) as ShapeDtypeStructs, as bench draws them."""
  import jax

  from sae import jumprelu
  from xling_jax.model import transformer as model_lib
  params = jax.eval_shape(
      lambda: model_lib.init_params(config, jax.random.PRNGKey(0), on_device=True))
  saes = jax.eval_shape(lambda: jumprelu.random_params(
      jax.random.PRNGKey(1), config.d_model, shape.sae_width, n_layers=config.n_layers,
      dtype=shape.dtype))
  return params, saes


def _totals(resident: dict, phases) -> dict:
  """The row's record from its resident arrays and `phases(dense_experts)`: the total, and on
  a model with routed experts also the total if they ran as a grouped matmul."""
  dense = phases(True)
  out = {"resident": resident, "phases": dense,
         "total": sum(resident.values()) + max(dense.values())}
  grouped = phases(False)
  if grouped != dense:
    out["total_grouped_experts"] = sum(resident.values()) + max(grouped.values())
  return out


def analysis_plan(config, shape) -> dict:
  params, saes = _shapes(config, shape)
  return _totals({"weights": _bytes(params), "saes": _bytes(saes)}, lambda dense: {
      "forward": block_working_bytes(config, shape.batch, shape.seq, shape.sae_width,
                                     dense_experts=dense)})


def saved_for_backward(config, shape, obj_layer: int, remat: str) -> dict:
  """{"adapter": bytes of the adapter's trainable tree, "saved": bytes autodiff keeps}, from
  `jax.eval_shape` of `jax.vjp` of bench's LoRA loss (frozen inputs left out)."""
  import jax
  import jax.numpy as jnp

  from lora import lora as lora_lib, objectives
  params, saes = _shapes(config, shape)
  obj_saes = jax.eval_shape(lambda s: jax.tree.map(lambda a: a[obj_layer:obj_layer + 1], s), saes)
  lora_config = lora_lib.LoraConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
  layers = jax.eval_shape(
      lambda: lora_lib.init_adapter(config, lora_config, jax.random.PRNGKey(0))["layers"])
  objective = lora_objective(obj_layer)
  tokens = jax.ShapeDtypeStruct((shape.batch, shape.seq), jnp.int32)
  batch = objectives.Batch(tokens, tokens, tokens, tokens)
  saved = {}

  def residuals(layers, params, saes, batch):
    ref = objectives.reference(params, config, saes, batch, objective)
    loss = lambda l: objectives.total_loss({"scale": lora_config.scale, "layers": l}, params,
                                           config, saes, batch, ref, objective, remat=remat)[0]
    _, pullback = jax.vjp(loss, layers)
    inputs = {id(x) for x in jax.tree.leaves((layers, params, saes, batch))}
    for leaf in jax.tree.leaves(pullback):
      if id(leaf) not in inputs:
        saved[id(leaf)] = leaf.size * leaf.dtype.itemsize
    return 0

  jax.eval_shape(residuals, layers, params, obj_saes, batch)
  return {"adapter": _bytes(layers), "saved": int(sum(saved.values()))}


def lora_step_plan(config, shape, obj_layer: int, remat: str) -> dict:
  import jax.numpy as jnp
  params, _ = _shapes(config, shape)
  grads = saved_for_backward(config, shape, obj_layer, remat)
  item = jnp.dtype(config.compute_dtype).itemsize
  B, T = shape.batch, shape.seq
  residual_stack = config.n_layers * B * T * config.d_model * item  # forward's [L, B, T, D]
  # objectives.next_token_nll: one chunk of positions' float32 logits is saved (counted in
  # `saved`); several chunks are each recomputed in the backward pass next to their cotangent.
  positions = B * (T - 1)
  lm_chunks = 0 if positions <= 2048 else 2 * 2048 * config.vocab_size * 4
  resident = {
      "weights": _bytes(params),
      "saes": 3 * config.d_model * shape.sae_width * jnp.dtype(shape.dtype).itemsize,  # 1 layer
      # AdamW: the adapter and its two moments, in and out (not donated), and the gradients.
      "adapter_and_optimizer": 7 * grads["adapter"]}
  working = lambda dense: block_working_bytes(config, B, T, dense_experts=dense)
  return {**_totals(resident, lambda dense: {
      "reference": residual_stack + working(dense),
      "differentiated": grads["saved"] + 2 * working(dense) + lm_chunks}),
          "saved_for_backward": grads["saved"]}


def plan(config, shape, rows, obj_layer: int, remat: str, per_token: dict) -> list[dict]:
  """Per planned row of `rows`: its bytes (resident arrays, phases, total) and its analytic
  FLOPs per call."""
  out = []
  for work in (r for r in rows if r in PLANNED_ROWS):
    parts = (analysis_plan(config, shape) if work == "analysis"
             else lora_step_plan(config, shape, obj_layer, remat))
    out.append({"work": work, **parts, "flops_per_token": per_token[work],
                "flops_per_call": per_token[work] * shape.batch * shape.seq})
  return out
