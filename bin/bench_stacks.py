"""The workloads `bin.bench` times (its rows), as two stacks on the same weights and shapes: ours
(JAX, jitted) and HF transformers + PEFT (torch). Each row is a method of both stacks that runs
one blocking call. No flags here: `bin.trace_summary` reads ROWS without loading bench's."""
from __future__ import annotations

ROWS = ("residuals", "analysis", "scoring", "mc_scoring", "lora_step")
# mc_scoring: each row is one item, its choices slices of the row's last 2 * MC_CHOICE_LEN tokens.
MC_CHOICES, MC_CHOICE_LEN = 4, 8
# lora_step: rank 16 on all 7 projections, align + lm at the objective layer (both stacks).
LORA_RANK, LORA_ALPHA = 16, 32.0


def lora_objective(obj_layer: int):
  """The lora_step row's objective (our stack; `bench_memory` plans the same)."""
  from lora import objectives
  return objectives.ObjectiveConfig(layers=(obj_layer,), w_align=1.0, w_retain=0.0, w_lm=1.0)


class OurStack:
  """The rows in JAX, jitted."""

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
      hidden, _ = model_lib.scan_blocks(p, config, x, m, tokens=t)
      return model_lib.target_logprobs(p, config, hidden[:, :-1], t[:, 1:]) * m[:, 1:]

    self.scoring = lambda: token_logprobs(params, tokens, mask).block_until_ready()

    from xling_jax.evaluation import scoring
    ctx_len = tokens.shape[1] - 2 * MC_CHOICE_LEN
    ids = np.asarray(tokens)
    items = [scoring.EncodedItem(tuple(int(t) for t in row[:ctx_len]), tuple(
        tuple(int(t) for t in row[ctx_len + c: ctx_len + c + MC_CHOICE_LEN]) for c in range(MC_CHOICES)))
        for row in ids]
    self.mc_scoring = lambda: scoring.score(params, config, items, batch_size=len(items))

    lora_config = lora_lib.LoraConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
    adapter = lora_lib.init_adapter(config, lora_config)
    objective = lora_objective(obj_layer)
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
  """The same rows with HF transformers / PEFT / torch."""

  def __init__(self, hf_dir, config, saes, tokens, mask, obj_layer, dtype, attn):
    import numpy as np
    import torch
    import transformers

    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    cls = {"gemma2": transformers.Gemma2ForCausalLM,
           "gemma3": transformers.Gemma3ForCausalLM,
           "gemma4": transformers.Gemma4ForCausalLM}[config.family]
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
    config = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=[
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
