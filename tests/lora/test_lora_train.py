"""Training the adapter: the optimiser's layer mask, data order, gradients reaching only the
adapter, NaN handling, no gradient without the align term, the report after a resume, and
`bin.finetune` end to end (the alignment effect, SIGKILL + resume bit for bit, the trained export
loading in PEFT, benchmarks before and after).

The CLI runs are subprocesses sharing one JAX compilation cache (and XLA's -O0 backend, which
compiles ~3x faster with the same numerics per run), so the killed and resumed runs reuse the
compiled train step of the uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lora import data, lora as lora_lib, objectives, train
from sae import jumprelu, random_saes
from tests.helpers import assert_peft_matches_ours, random_adapter
from xling_jax.analysis import corpus_stats
from xling_jax.data import corpora
from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.runtime import train_checkpoints

REPO = Path(__file__).resolve().parents[2]


# ---- optimiser and data ----------------------------------------------------------------------

def test_inactive_layers_never_move(toy_config):
  """Even with weight decay and nonzero gradients everywhere, masked blocks get zero updates."""
  cfg = lora_lib.LoraConfig(rank=2, alpha=2, modules=("q", "down"), layers=(1, 2))
  tc = train.TrainConfig(steps=10, warmup_steps=0, weight_decay=0.1)
  tx = train.make_optimizer(tc, lora_lib.layer_mask(toy_config, cfg))
  params = jax.tree.map(lambda x: x + 1.0, lora_lib.init_adapter(toy_config, cfg)["layers"])
  grads = jax.tree.map(jnp.ones_like, params)
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(2):
    updates, state = update(grads, state, params)
    for leaf in jax.tree.leaves(updates):
      assert float(jnp.abs(leaf[np.array([0, 3])]).max()) == 0.0
      assert float(jnp.abs(leaf[np.array([1, 2])]).min()) > 0.0
    params = optax.apply_updates(params, updates)


def test_split_and_batch_order_are_pure_functions():
  corpus = corpora.load_corpus("embedded", ("es", "en"))
  a_train, a_held = data.split_parallel(corpus.sentences["es"], corpus.sentences["en"], 0.25, 3)
  b_train, b_held = data.split_parallel(corpus.sentences["es"], corpus.sentences["en"], 0.25, 3)
  assert (a_train, a_held) == (b_train, b_held)
  assert len(a_held) == round(0.25 * corpus.n_sentences)
  assert set(a_train.ref).isdisjoint(a_held.ref)
  assert set(a_train.ref) | set(a_held.ref) == set(corpus.sentences["en"])
  for i, line in enumerate(a_train.ref):  # alignment survives the split
    j = corpus.sentences["en"].index(line)
    assert a_train.target[i] == corpus.sentences["es"][j]
  tc = train.TrainConfig(batch_size=5)
  stream = data.BatchStream(a_train, toy_tokenizer(512), tc)
  rng = np.asarray(jax.random.PRNGKey(0), np.uint32)
  n = len(a_train)
  order = np.concatenate([stream.indices(rng, p) for p in range(0, 2 * n, 5)])[:2 * n]
  assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))
  assert not np.array_equal(order[:n], order[n:])  # a fresh permutation each epoch
  np.testing.assert_array_equal(stream.indices(rng, 7), data.BatchStream(
      a_train, None, tc).indices(rng, 7))
  other = np.asarray(jax.random.PRNGKey(1), np.uint32)
  assert not np.array_equal(stream.indices(other, 0), stream.indices(rng, 0))
  batch = stream.batch(rng, 0)
  assert batch.target_tokens.shape == batch.ref_tokens.shape  # one common width
  assert (np.asarray(batch.target_tokens)[:, 0] == 2).all()


def test_train_config_validation():
  with pytest.raises(ValueError, match="warmup_steps=10"):
    train.TrainConfig(steps=10, warmup_steps=10)
  with pytest.raises(ValueError, match="eval_fraction"):
    train.TrainConfig(eval_fraction=1.0)
  with pytest.raises(ValueError, match="at least one positive"):
    objectives.ObjectiveConfig(layers=(1,), w_align=0, w_retain=0, w_lm=0)


# ---- the step, in process --------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(toy_params, toy_config):
  """Short English/Spanish lines (one padded width, T=32), LoRA on two modules, one SAE."""
  corpus = corpora.load_corpus("embedded", ("es", "en"))
  split = data.ParallelSplit(corpus.sentences["es"][:12], corpus.sentences["en"][:12])
  tc = train.TrainConfig(steps=10, batch_size=2, lr=1e-2, warmup_steps=1, bucket=32,
                         save_every=2, log_every=1)
  stream = data.BatchStream(split, toy_tokenizer(toy_config.vocab_size), tc)
  saes = jumprelu.random_params(jax.random.PRNGKey(7), toy_config.d_model, 64, n_layers=1,
                                input_std=2.0)
  return dict(params=toy_params, config=toy_config, saes=saes, stream=stream, train_config=tc,
              lora_config=lora_lib.LoraConfig(rank=2, alpha=4, modules=("q", "up")),
              objective=objectives.ObjectiveConfig(layers=(1,), w_align=1.0, w_retain=1.0))


def test_objective_terms_match_their_definitions(small_run):
  """align / retain (kl) / lm / norm recomputed from separate forward passes, `sae_stats`'
  layer_activations and optax's cross-entropy, against the one stacked pass of `loss_terms`."""
  from xling_jax.analysis import sae_stats
  from xling_jax.model import transformer as model_lib
  r = small_run
  cfg, params, saes = r["config"], r["params"], r["saes"]
  objective = objectives.ObjectiveConfig(layers=(1,), w_align=1.0, w_retain=2.0, w_lm=0.5,
                                         retain="kl", w_norm=0.7)
  adapter = random_adapter(cfg, r["lora_config"])
  batch = r["stream"].batch(np.asarray(jax.random.PRNGKey(0), np.uint32), 4)

  @jax.jit
  def ours(adapter, batch):
    ref = objectives.reference(params, cfg, saes, batch, objective)
    return objectives.total_loss(adapter, params, cfg, saes, batch, ref, objective)

  @jax.jit
  def expected(adapter, batch):
    tt, tm, rt, rm = batch
    act = lambda t, m, adapter: sae_stats.layer_activations(
        params, cfg, saes, t, m, hook=lora_lib.project_hook(adapter), layers=(1,))
    a_en = act(rt, rm, None)
    align = jnp.mean(((act(tt, tm, adapter) - a_en) / a_en) ** 2)
    logits = lambda t, m, adapter: model_lib.forward(params, cfg, t, m,
                                                       hook=lora_lib.project_hook(adapter)).logits
    w = sae_stats.stat_mask(rt, rm, cfg.bos_id)
    p_base = jax.nn.softmax(logits(rt, rm, None))
    kl = jnp.sum(p_base * (jnp.log(p_base) - jax.nn.log_softmax(logits(rt, rm, adapter))), -1)
    retain = jnp.sum(kl * w) / jnp.sum(w)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits(tt, tm, adapter)[:, :-1],
                                                          tt[:, 1:])
    lm = jnp.sum(nll * tm[:, 1:]) / jnp.sum(tm[:, 1:])

    def norm(t, m, adapter):  # mean ||x|| at layer 1 over real, non-BOS tokens
      x = model_lib.forward(params, cfg, t, m, hook=lora_lib.project_hook(adapter)).residuals[1]
      w = sae_stats.stat_mask(t, m, cfg.bos_id)
      return jnp.sum(jnp.linalg.norm(x, axis=-1) * w) / jnp.sum(w)

    n_en = norm(rt, rm, None)
    norm_term = ((norm(tt, tm, adapter) - n_en) / n_en) ** 2
    return {"align": align, "retain": retain, "lm": lm, "norm": norm_term}

  total, terms = ours(adapter, batch)
  want = expected(adapter, batch)
  assert set(terms) == set(want)
  for name in want:
    assert float(want[name]) > 0
    np.testing.assert_allclose(terms[name], want[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(
      total, want["align"] + 2 * want["retain"] + 0.5 * want["lm"] + 0.7 * want["norm"],
      rtol=1e-5)


@pytest.mark.parametrize("chunk_tokens", [5, 7, 4096])
def test_chunked_lm_loss_and_its_gradient_equal_the_full_logits_ones(toy_params, toy_config,
                                                                      chunk_tokens):
  """Several chunks with a padded tail (5, 7) and one chunk (4096) against optax's
  cross-entropy on the full [B, T, V] logits, for the loss and for d loss / d hidden."""
  from xling_jax.model import transformer as model_lib
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, toy_config.vocab_size, (3, 9)), jnp.int32)
  mask = jnp.asarray([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5], jnp.int32)
  hidden = jnp.asarray(rng.standard_normal((3, 9, toy_config.d_model)), jnp.float32)

  def full(h):
    logits = model_lib.unembed(toy_params, toy_config, h)[:, :-1]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])

  chunked = lambda h: objectives.next_token_nll(toy_params, toy_config, h, tokens, mask,
                                                chunk_tokens=chunk_tokens)
  np.testing.assert_allclose(chunked(hidden), full(hidden), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(chunked)(hidden), jax.grad(full)(hidden), rtol=1e-5,
                             atol=1e-8)


def _dot_shapes(jaxpr) -> list[tuple[int, ...]]:
  """Output shapes of every dot_general in a jaxpr, sub-jaxprs (scan, jit, ...) included."""
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      shapes.append(tuple(eqn.outvars[0].aval.shape))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      shapes.extend(_dot_shapes(sub))
  return shapes


def _frozen_weight_shapes(params) -> set[tuple[int, ...]]:
  """Sorted dims of every frozen matrix, whole and per layer: a gradient w.r.t. one of them
  is a dot_general with that output shape (up to a transpose)."""
  shapes = {tuple(sorted(params["embed"].shape))}
  for w in params["layers"].values():
    if w.ndim >= 3:
      shapes |= {tuple(sorted(w.shape)), tuple(sorted(w.shape[1:]))}
  return shapes


def test_gradients_reach_only_the_adapter(small_run):
  r = small_run
  cfg, tc, params = r["config"], r["train_config"], r["params"]
  adapter = lora_lib.init_adapter(cfg, r["lora_config"])
  tx = train.make_optimizer(tc, lora_lib.layer_mask(cfg, r["lora_config"]))
  batch = r["stream"].batch(np.asarray(jax.random.PRNGKey(0), np.uint32), 0)
  # B, T and B * T (LoRA's flattened tokens) must differ from every weight dimension.
  batch = jax.tree.map(lambda a: a[:, :30], batch)
  assert batch.target_tokens.shape == (2, 30)
  step = train.make_train_step(cfg, r["objective"], tx, r["lora_config"].scale)
  jaxpr = jax.make_jaxpr(step)(adapter["layers"], tx.init(adapter["layers"]), params, r["saes"],
                               batch)
  dots = {tuple(sorted(s)) for s in _dot_shapes(jaxpr.jaxpr)}
  frozen = _frozen_weight_shapes(params)
  assert not dots & frozen, f"weight-gradient matmuls of frozen params: {dots & frozen}"
  lora_grads = {tuple(sorted(x.shape[1:])) for x in jax.tree.leaves(adapter["layers"])}
  assert lora_grads <= dots  # dA [in, r] and dB [r, out] are there
  # The detector works: differentiating the frozen params puts their shapes in the jaxpr.
  ref = objectives.reference(params, cfg, r["saes"], batch, r["objective"])
  wrt_params = jax.make_jaxpr(jax.grad(lambda p: objectives.total_loss(
      adapter, p, cfg, r["saes"], batch, ref, r["objective"])[0]))(params)
  assert frozen & {tuple(sorted(s)) for s in _dot_shapes(wrt_params.jaxpr)}


def _fingerprint(tokens) -> jax.Array:
  tokens = jnp.asarray(tokens)
  return jnp.sum(tokens * (1 + jnp.arange(tokens.size).reshape(tokens.shape)))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(small_run, tmp_path):
  r = small_run
  stream, tc = r["stream"], r["train_config"]
  rng = np.asarray(jax.random.PRNGKey(tc.seed), np.uint32)
  prints = [int(_fingerprint(stream.batch(rng, 2 * s).target_tokens)) for s in range(5)]
  assert len(set(prints)) == 5  # the 5th batch is recognisable
  bad = prints[4]

  def nan_on_fifth_batch(adapter, params, config, saes, batch, ref, objective, remat=False):
    total, terms = objectives.total_loss(adapter, params, config, saes, batch, ref, objective)
    return jnp.where(_fingerprint(batch.target_tokens) == bad, jnp.nan, total), terms

  args = (r["params"], r["config"], r["saes"], stream, r["lora_config"], r["objective"], tc,
          tmp_path / "ckpt")
  expected = r"non-finite value at step 5 \(.*loss=nan.*Last good checkpoint: step 4 in "
  with pytest.raises(train_checkpoints.NonFiniteLossError, match=expected):
    train.train(*args, log_path=tmp_path / "log.jsonl", loss_fn=nan_on_fifth_batch,
                echo=lambda _: None)
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["2", "4"]  # no partial save
  assert [json.loads(l)["step"] for l in (tmp_path / "log.jsonl").read_text().splitlines()] == [
      1, 2, 3, 4]
  manager = train.checkpoint_manager(tmp_path / "ckpt", tc)
  template = lora_lib.init_adapter(r["config"], r["lora_config"])["layers"]
  tx = train.make_optimizer(tc, lora_lib.layer_mask(r["config"], r["lora_config"]))
  meta = train.run_meta(r["config"], r["lora_config"], r["objective"], tc)
  state = train.restore_latest(manager, train.TrainState(template, tx.init(template), 0, 0, rng),
                               meta)
  manager.close()
  assert (state.step, state.position) == (4, 8)
  leaves = jax.tree.leaves((state.layers, state.opt_state))
  assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
  assert float(jnp.abs(state.layers["q"]["b"]).max()) > 0  # it trained
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    train.train(*args, echo=lambda _: None)
  other = lora_lib.LoraConfig(rank=3, alpha=4, modules=("q", "up"))
  with pytest.raises(ValueError, match=r"lora\.rank: checkpoint 2, now 3"):
    train.train(*args[:4], other, *args[5:], resume=True, echo=lambda _: None)


def test_without_the_align_term_the_adapter_gets_no_gradient_at_init(small_run):
  """Retain alone is at its minimum (zero) at B = 0, where the adapter is a no-op, so its
  gradient there vanishes and training never leaves the start: no activation rise without the
  align term. Away from B = 0 the same gradient is large (one compiled function for both)."""
  r = small_run
  cfg, params, saes = r["config"], r["params"], r["saes"]
  objective = objectives.ObjectiveConfig(layers=(1,), w_align=0.0, w_retain=1.0)
  batch = r["stream"].batch(np.asarray(jax.random.PRNGKey(0), np.uint32), 0)
  ref = objectives.reference(params, cfg, saes, batch, objective)
  scale = r["lora_config"].scale

  @jax.jit
  def terms_and_grads(layers):
    loss = lambda layers: objectives.total_loss({"scale": scale, "layers": layers}, params, cfg,
                                                saes, batch, ref, objective)
    (_, terms), grads = jax.value_and_grad(loss, has_aux=True)(layers)
    return terms, jnp.max(jnp.stack([jnp.abs(g).max() for g in jax.tree.leaves(grads)]))

  terms, at_init = terms_and_grads(lora_lib.init_adapter(cfg, r["lora_config"])["layers"])
  _, moved = terms_and_grads(random_adapter(cfg, r["lora_config"])["layers"])
  assert "align" not in terms and float(terms["retain"]) < 1e-10
  # Not exactly 0: the adapted pass batches target and English rows together, the frozen
  # reference runs English alone, so float32 rounding differs by ~1e-7 of the residuals.
  assert float(at_init) < 1e-4 * float(moved), (float(at_init), float(moved))


def test_report_terms_survive_a_kill_after_the_final_checkpoint(small_run, tmp_path):
  """Resumed from its final checkpoint, a run trains no step; the report's final loss terms come
  from the training log and equal those of the run that got there."""
  from lora import report
  r = small_run
  tc = dataclasses.replace(r["train_config"], steps=2)
  args = (r["params"], r["config"], r["saes"], r["stream"], r["lora_config"], r["objective"], tc,
          tmp_path / "ckpt")
  log = tmp_path / "log.jsonl"

  def quadratic(adapter, *_, **__):  # the loop is under test, not the objective: compiles fast
    total = sum(jnp.sum((x - 0.5) ** 2) for x in jax.tree.leaves(adapter["layers"]))
    return total, {"quadratic": total}

  run = lambda **kw: train.train(*args, log_path=log, loss_fn=quadratic, echo=lambda _: None,
                                 **kw)
  first = run()
  resumed = run(resume=True)
  assert resumed.step == first.step == 2
  assert report.final_terms(log, resumed.step) == first.last_metrics
  assert set(first.last_metrics) == {"loss", "quadratic", "grad_norm"}


# ---- bin.finetune end to end -----------------------------------------------------------------

CLI_FLAGS = ("--steps=200", "--batch_size=4", "--bucket=64", "--lr=3e-3", "--rank=4",
             "--alpha=8", "--save_every=50", "--log_every=1", "--warmup_steps=10")


@pytest.fixture(scope="module")
def target(toy_params, toy_config):
  """(language, layer) with the largest activation gap below English on the embedded corpus,
  measured with the CLI's own toy SAEs: the toy model has no built-in disparity, so the test
  picks where one happens to be."""
  tokenizer = toy_tokenizer(toy_config.vocab_size)
  corpus = corpora.load_corpus("embedded")
  saes = random_saes.calibrated_random_saes(toy_params, toy_config, tokenizer, corpus.sentences["en"][:16], seed=0)
  layers = tuple(range(toy_config.n_layers))
  act = corpus_stats.corpus_stats(toy_params, toy_config, saes, tokenizer, corpus.sentences,
                                  show_progress=False).metrics("activation")
  gap, lang, layer = max(((act["en"][l] - act[lang][l]) / act["en"][l], lang, l)
                         for lang in corpus.languages if lang != "en" for l in layers)
  assert gap > 0.1, f"the toy setup has no language below English by 10% ({gap:.3f})"
  return lang, layer


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  return env


def finetune_cmd(out: Path, target, *extra: str) -> list[str]:
  lang, layer = target
  return [sys.executable, "-m", "bin.finetune", f"--out={out}", f"--target_lang={lang}",
          f"--objective_layers={layer}", *CLI_FLAGS, *extra]


def run_finetune(out: Path, target, env, *extra: str) -> dict:
  proc = subprocess.run(finetune_cmd(out, target, *extra), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TOY model" in proc.stdout  # the toy run says so
  return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, target, cli_env):
  out = tmp_path_factory.mktemp("finetune") / "aligned"
  return out, run_finetune(out, target, cli_env, "--weights=1,1,0")


def _log(out: Path) -> list[dict]:
  lines = (out / "train_log.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(l).items() if k != "steps_per_s"} for l in lines]


@pytest.mark.slow
def test_alignment_raises_target_activation_and_keeps_english(trained, target):
  out, report = trained
  lang, layer = target
  i = report["layers"].index(layer)
  assert set(report) >= {"target_lang", "ref_lang", "layers", "before", "after", "gain_pct",
                         "retention_pct"}
  assert report["gain_pct"][lang][i] > 5.0, report  # the paper's headline quantity 1
  assert 95.0 < report["retention_pct"]["en"][i] < 105.0, report  # headline quantity 2
  assert (out / "peft" / "adapter_model.safetensors").exists()
  assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [100, 150, 200]
  assert {"align", "retain", "loss", "grad_norm", "lr"} <= set(_log(out)[-1])


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run_bit_for_bit(trained, target, cli_env,
                                                                       tmp_path):
  reference, _ = trained
  out = tmp_path / "killed"
  with open(tmp_path / "stderr.txt", "w") as stderr:
    proc = subprocess.Popen(finetune_cmd(out, target, "--weights=1,1,0", "--save_every=10"),
                            cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=stderr,
                            text=True)
    for line in proc.stdout:
      if line.startswith("step 25/"):
        proc.send_signal(signal.SIGKILL)
        break
    proc.wait()
  assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-3000:]
  assert not (out / "report.json").exists()
  saved = [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved and max(saved) < 200, saved
  run_finetune(out, target, cli_env, "--weights=1,1,0", "--save_every=10", "--resume")
  assert _log(out) == _log(reference)
  assert ((out / "peft" / "adapter_model.safetensors").read_bytes()
          == (reference / "peft" / "adapter_model.safetensors").read_bytes())


@pytest.mark.slow
def test_trained_export_loads_in_peft(trained, toy_hf_dir, toy_params, toy_config):
  from lora import peft_io
  out, _ = trained
  adapter, cfg = peft_io.load_peft_with_config(out / "peft", toy_config)
  assert cfg.rank == 4 and cfg.alpha == 8
  assert_peft_matches_ours(toy_hf_dir, out / "peft", toy_params, toy_config, adapter)


def test_log_rewind_survives_a_line_cut_by_a_kill(tmp_path):
  log = tmp_path / "train_log.jsonl"
  log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
                 '{"step": 3, "loss": 1.2}\n{"step": 4, "lo')
  train_checkpoints.rewind_log(log, 2)
  assert [json.loads(l)["step"] for l in log.read_text().splitlines()] == [1, 2]


@pytest.mark.slow  # five compiled gradients: ~40 s on 2 cores
def test_remat_policies_give_the_same_loss_and_gradients(small_run):
  """Recomputation changes what autodiff keeps, never the numbers; an unknown policy is named."""
  r = small_run
  cfg, params, saes = r["config"], r["params"], r["saes"]
  objective = objectives.ObjectiveConfig(layers=(1,), w_align=1.0, w_retain=1.0, w_lm=0.5)
  adapter = random_adapter(cfg, r["lora_config"])
  batch = r["stream"].batch(np.asarray(jax.random.PRNGKey(0), np.uint32), 4)
  ref = objectives.reference(params, cfg, saes, batch, objective)

  def value_and_grad(remat):
    loss = lambda layers: objectives.total_loss({"scale": adapter["scale"], "layers": layers},
                                                params, cfg, saes, batch, ref, objective,
                                                remat=remat)[0]
    return jax.jit(jax.value_and_grad(loss))(adapter["layers"])

  want_loss, want_grads = value_and_grad(False)
  for remat in ("none", True, "full", "dots"):
    loss, grads = value_and_grad(remat)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=remat)
    # Recomputed blocks fuse differently: float32 reassociation, 1e-4 of each leaf's scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-4 * float(jnp.abs(b).max())), grads, want_grads)
  with pytest.raises(ValueError, match="remat='some'"):
    value_and_grad("some")


@pytest.mark.slow
def test_finetune_eval_tasks_scores_before_and_after_with_the_adapter(tmp_path, target, cli_env):
  """--eval_tasks runs bin.evaluate on the base model and through the trained adapter, for the
  target and reference languages, and reports both (self-contained three-item ARC files)."""
  lang, _ = target
  arc = tmp_path / "bench" / "arc_challenge"
  arc.mkdir(parents=True)
  for code in (lang, "en"):
    arc.joinpath(f"{code}.jsonl").write_text("".join(json.dumps(
        {"id": f"q{i}", "question": f"Question {i} ({code})?", "choices": ["one", "two", "three"],
         "answer": i}) + "\n" for i in range(3)))
  out = tmp_path / "run"
  report = run_finetune(out, target, cli_env, "--steps=20", "--eval_tasks=arc",
                        f"--eval_data_dir={tmp_path / 'bench'}")
  bench = report["benchmarks"]
  for when in ("before", "after"):
    assert sorted(bench[when]["arc"]) == sorted({lang, "en"})
    assert all(s["n"] == 3 for s in bench[when]["arc"].values())
  lls = lambda when: [json.loads(line)["loglikelihoods"] for line in
                      (out / f"eval_{when}" / "items.jsonl").read_text().splitlines()]
  assert np.abs(np.array(lls("after")) - np.array(lls("before"))).max() > 1e-4
  after_run = json.loads((out / "eval_after" / "run.json").read_text())
  assert after_run["flags"]["lora"] == str(out / "peft")
  assert "arc" in (out / "report.md").read_text()
