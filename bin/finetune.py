"""python -m bin.finetune: activation-aware LoRA (objective: lora/objectives.py) with a before/after
report.

Trains a LoRA adapter that lifts --target_lang's SAE activation at the objective layers toward
the frozen model's --ref_lang activation while keeping --ref_lang unchanged, then reports, on a
held-out split of the parallel corpus, the activation per layer before and after, the target's
gain (%) and the reference's retention (%) (the paper's two headline quantities), the gap
closure, and for the target, the reference, a related and an unrelated language (--compare_langs)
the bits per character, mean residual norm and SAE code mass before and after, on --eval_corpus
(or the held-out lines). --weights chooses the objective: the control adapters are 0,1,1 (the
plain language-model loss on the target text) and 0,1,0,1 (match the reference's residual norm,
no SAE).

With no flags it runs the toy setup (random toy Gemma-2 from --seed, random SAEs, toy tokenizer,
embedded corpus) and says so. For Gemma-2-2B:

  python -m bin.finetune --platform=gpu --checkpoint=/models/gemma-2-2b \\
      --sae_dir=/models/gemma-scope-2b-pt-res --corpus=/data/flores200 --target_lang=ml \\
      --steps=1000 --out=out/lora_ml

Writes to --out: peft/ (PEFT adapter: adapter_model.safetensors + adapter_config.json),
checkpoints/ (orbax: adapter, optimiser, data position, RNG, step), train_log.jsonl (loss terms
per logged step), report.json and report.md. --resume continues from the latest checkpoint.
"""
from __future__ import annotations

import math
import os
import sys
import time

from absl import app, flags

from bin import cli, shared_flags
from lora import DEFAULT_REMAT

FLAGS = flags.FLAGS
shared_flags.define_platform_flags()
shared_flags.define_model_flags()
shared_flags.define_sae_flags()
shared_flags.define_corpus_flags(max_len=128)
shared_flags.define_batch_flag(8, "parallel lines per step, each seen in both languages")
shared_flags.define_output_flags("finetune_out")
flags.adopt_module_key_flags(shared_flags)  # --help lists the shared flags too
flags.DEFINE_string("target_lang", "ml", "Language whose activation the adapter lifts.")
flags.DEFINE_string("ref_lang", "en", "Reference language: the alignment target, kept unchanged.")
flags.DEFINE_string("layers", "all", "Blocks that get LoRA: 'all' or comma-separated indices.")
flags.DEFINE_integer("rank", 8, "LoRA rank r.", lower_bound=1)
flags.DEFINE_float("alpha", 16.0, "LoRA alpha; the update is scaled by alpha / r (as PEFT).")
flags.DEFINE_list("modules", ["q", "k", "v", "o", "gate", "up", "down"],
                  "Adapted weights: any of q, k, v, o, gate, up, down (on a Gemma 4 with "
                  "per-layer embeddings also ple_gate, ple_proj; routed experts take none).")
flags.DEFINE_integer("steps", 300, "Optimiser steps.", lower_bound=1)
flags.DEFINE_float("lr", 1e-3, "Peak learning rate (linear warmup, cosine decay to lr/10).")
flags.DEFINE_integer("warmup_steps", None, "Linear warmup steps. Default: min(20, steps // 10).")
flags.DEFINE_float("weight_decay", 0.0, "AdamW decoupled weight decay.")
flags.DEFINE_float("clip_norm", 1.0, "Clip gradients to this global norm.")
flags.DEFINE_list("weights", ["1", "1", "0"],
                  "Objective weights align,retain,lm[,norm] (defined in lora/objectives.py). A "
                  "zero weight drops the term; norm (default 0) is the no-SAE control.")
flags.DEFINE_integer("first_line", 0,
                     "Train and hold out the lines of --corpus from this one on (0-based); "
                     "--max_sentences counts from it. Past the SAEs' training lines, the "
                     "held-out lines are new to the SAEs too.", lower_bound=0)
flags.DEFINE_string("eval_corpus", None,
                    "A parallel corpus (as --corpus) on whose first --eval_sentences lines the "
                    "languages are measured before and after. Default: the held-out lines.")
flags.DEFINE_integer("eval_sentences", 100, "Lines of --eval_corpus measured.", lower_bound=1)
flags.DEFINE_list("compare_langs", None,
                  "Languages measured beside the target and the reference. Default: a related "
                  "and an unrelated study language (xling_jax/data/languages.py).")
flags.DEFINE_enum("retain", "residual", ["residual", "kl"],
                  "Retain term: relative squared distance of reference-language residuals, or "
                  "KL of next-token distributions, between adapted and frozen model.")
flags.DEFINE_string("objective_layers", None,
                    "Layers S the align term acts on: comma-separated, or 'all'. Default: 20 on "
                    "Gemma-2-2B, the same relative depth on other models (2 on the toy).")
flags.DEFINE_string("report_layers", None,
                    "Layers whose before/after activation is reported: comma-separated or "
                    "'all'. Default: the objective layers. SAEs are loaded for these and S.")
flags.DEFINE_float("eval_fraction", 0.2,
                   "Fraction of lines held out for the before/after report (never trained on).")
flags.DEFINE_bool("resume", False,
                  "Continue from the latest checkpoint in --out/checkpoints (same settings "
                  "required). Without it an existing checkpoint directory is an error.")
flags.DEFINE_enum("remat", DEFAULT_REMAT, ["none", "full", "dots"],
                  "What the backward pass recomputes. dots: keep the weight matmul outputs, "
                  "recompute norms/attention/GELU (less memory than none, and faster on a CPU); "
                  "none: keep every intermediate (most memory); full: recompute each block "
                  "(least memory, about a third more compute: long sequences, large batches).")
flags.DEFINE_integer("save_every", 100, "Checkpoint every N steps (and at the end).",
                     lower_bound=1)
flags.DEFINE_integer("log_every", 10, "Print and log the loss terms every N steps.",
                     lower_bound=1)
flags.DEFINE_list("eval_tasks", [],
                  "Benchmarks scored before and after training, as bin.evaluate scores them "
                  "(arc, mmlu, hellaswag), on the target and reference languages; needs "
                  "--eval_data_dir. Results in --out/eval_before and --out/eval_after.")
flags.DEFINE_string("eval_data_dir", None,
                    "Benchmark items for --eval_tasks: a folder holding arc_challenge/, mmlu/, "
                    "mmlu_dev/, hellaswag/ with {lang}.jsonl files (as bin.evaluate --data_dir).")
flags.DEFINE_integer("eval_limit", None, "Score only the first N items per task and language.",
                     lower_bound=1)
flags.DEFINE_string("base_model_name", None,
                    "base_model_name_or_path written to adapter_config.json. Default: "
                    "--checkpoint, or 'xling-jax-toy' for the toy model.")


def _weights() -> tuple[float, float, float, float]:
  try:
    weights = tuple(float(w) for w in FLAGS.weights)
  except ValueError:
    weights = ()
  if len(weights) not in (3, 4) or not all(math.isfinite(w) and w >= 0 for w in weights):
    raise app.UsageError(f"--weights={','.join(FLAGS.weights)}: expected three or four "
                         "non-negative numbers align,retain,lm[,norm]")
  return (*weights, 0.0)[:4]


def eval_config(langs):
  """The --eval_* flags as an EvalConfig for `langs` (None without --eval_tasks)."""
  if not FLAGS.eval_tasks:
    return None
  if not FLAGS.eval_data_dir:
    raise app.UsageError("--eval_tasks needs --eval_data_dir (benchmark items on disk)")
  if not os.path.isdir(FLAGS.eval_data_dir):
    raise FileNotFoundError(f"--eval_data_dir={FLAGS.eval_data_dir}: no such directory")
  from xling_jax.evaluation import run as evaluation
  return evaluation.EvalConfig(tasks=FLAGS.eval_tasks, langs=langs, data_dir=FLAGS.eval_data_dir,
                               limit=FLAGS.eval_limit)


def check_flags():
  """(target, ref, weights, --out, the eval config or None, its prompts or None), checked and
  read before anything is loaded."""
  from xling_jax.data.languages import validate_languages
  if FLAGS.target_lang == FLAGS.ref_lang:
    raise app.UsageError(f"--target_lang={FLAGS.target_lang} is also --ref_lang: the adapter "
                         "lifts one language toward another")
  target, ref = validate_languages([FLAGS.target_lang, FLAGS.ref_lang])
  if FLAGS.compare_langs:
    validate_languages(FLAGS.compare_langs)
  if FLAGS.eval_corpus and FLAGS.eval_corpus != "embedded" and not FLAGS.eval_corpus.startswith(
      "hf:") and not os.path.exists(FLAGS.eval_corpus):
    raise FileNotFoundError(f"--eval_corpus={FLAGS.eval_corpus}: no such file or directory")
  weights = _weights()
  out = cli.check_out()
  from lora import finetune
  try:
    finetune.check_start(out, FLAGS.resume)
  except ValueError as e:
    raise app.UsageError(f"{e} (--resume continues it, --out chooses another)") from None
  bench = eval_config((target, ref))
  prompts = None
  if bench is not None:
    from xling_jax.evaluation import run as evaluation
    prompts = evaluation.collect_prompts(bench)
  return target, ref, weights, out, bench, prompts


def layer_plan(n_layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(objective layers, report layers) on an `n_layers` model, matched to what a local
  --sae_dir holds before the model loads: the default objective layer, when it has no SAE
  there, becomes the nearest that has one (said on stderr); any other mismatch is an error
  naming the fix (`shared_flags.match_sae_dir`, which also settles --sae_width)."""
  from lora import objectives
  objective = cli.parse_layers(FLAGS.objective_layers, n_layers, "objective_layers")
  if objective is None:
    default = objectives.default_objective_layer(n_layers)
    held = [l for l in (shared_flags.sae_dir_widths() or {}) if 0 <= l < n_layers]
    objective = (default,)
    if held and default not in held:
      objective = (min(held, key=lambda l: (abs(l - default), l)),)
  report = cli.parse_layers(FLAGS.report_layers, n_layers, "report_layers") or objective
  shared_flags.match_sae_dir(sorted(set(objective) | set(report)),
                             "--objective_layers and --report_layers")
  if FLAGS.objective_layers is None and objective != (default,):
    print(f"--objective_layers: the default, layer {default} (the paper's relative depth), has "
          f"no SAE in --sae_dir={FLAGS.sae_dir}; using the nearest that has one, {objective[0]}",
          file=sys.stderr)
  return objective, report


def main(argv):
  target, ref, (w_align, w_retain, w_lm, w_norm), out, bench, bench_prompts = check_flags()
  devices = shared_flags.setup_platform()
  start = time.perf_counter()
  objective_layers, report_layers = layer_plan(shared_flags.n_model_layers())
  print(f"devices: {devices}", file=sys.stderr, flush=True)

  from lora import finetune, objectives, train
  from lora.lora import LoraConfig
  from sae import random_saes
  from xling_jax.data import corpora, languages

  train_config = train.TrainConfig(
      steps=FLAGS.steps, batch_size=FLAGS.batch_size, lr=FLAGS.lr,
      warmup_steps=(min(20, FLAGS.steps // 10) if FLAGS.warmup_steps is None
                    else FLAGS.warmup_steps),
      weight_decay=FLAGS.weight_decay, clip_norm=FLAGS.clip_norm, eval_fraction=FLAGS.eval_fraction,
      max_len=FLAGS.max_len, bucket=FLAGS.bucket, seed=FLAGS.seed, save_every=FLAGS.save_every,
      log_every=FLAGS.log_every)
  compare = (tuple(FLAGS.compare_langs) if FLAGS.compare_langs is not None else
             tuple(lang for lang in languages.comparison_languages(target, ref) if lang))
  langs = tuple(dict.fromkeys((target, ref, *compare)))
  eval_corpus = (None if not FLAGS.eval_corpus else
                 corpora.load_corpus(FLAGS.eval_corpus, langs, FLAGS.eval_sentences))
  # Without an eval corpus the languages are measured on the held-out lines of this one.
  corpus = corpora.load_corpus(FLAGS.corpus, (target, ref) if eval_corpus else langs,
                               None if FLAGS.max_sentences is None
                               else FLAGS.first_line + FLAGS.max_sentences).lines(FLAGS.first_line)
  print(f"loading {FLAGS.checkpoint or 'the toy model'} ...", file=sys.stderr, flush=True)
  setup = shared_flags.load_model()
  L = setup.config.n_layers
  lora_layers = (None if FLAGS.layers == "all"
                 else cli.parse_layers(FLAGS.layers, L, "layers"))
  lora_config = LoraConfig(rank=FLAGS.rank, alpha=FLAGS.alpha, modules=tuple(FLAGS.modules),
                           layers=lora_layers, seed=FLAGS.seed)
  objective = objectives.ObjectiveConfig(layers=objective_layers, w_align=w_align,
                                         w_retain=w_retain, w_lm=w_lm, retain=FLAGS.retain,
                                         w_norm=w_norm)
  sae_layers = sorted(set(objective_layers) | set(report_layers))
  print(f"loading SAEs for layers {sae_layers} ({FLAGS.sae_dir or 'random toy SAEs'}) ...",
        file=sys.stderr, flush=True)
  saes = shared_flags.load_saes(setup, sae_layers, corpus.sentences[ref][:16])
  for note in random_saes.notes(setup, saes):
    print(note, file=sys.stderr)
  print(f"corpus: {corpus.name} ({corpus.n_sentences} lines, {FLAGS.eval_fraction:.0%} held "
        f"out); SAEs: {saes.description}; objective layers {list(objective_layers)}",
        file=sys.stderr, flush=True)
  run = finetune.finetune(
      setup, saes, corpus, target, ref, out=out, lora=lora_config, objective=objective,
      train=train_config, report_layers=report_layers, resume=FLAGS.resume, remat=FLAGS.remat,
      bench=bench, bench_prompts=bench_prompts, base_model_name=FLAGS.base_model_name,
      echo=lambda line: print(line, flush=True), run_config=cli.resolved_flags(),
      eval_corpus=eval_corpus, compare=compare, progress=FLAGS.progress)
  print(run.markdown())
  print(f"wrote {run.peft_dir}/, {out / 'checkpoints'}/, {out}/report.json, {out}/report.md")
  print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


def interrupted() -> str:
  """The checkpoint an interrupted run saved, and how to continue from it."""
  from pathlib import Path

  from lora import finetune
  return cli.resume_hint(Path(FLAGS.out).expanduser() / finetune.CHECKPOINTS)


if __name__ == "__main__":
  cli.run(main, on_interrupt=interrupted)
