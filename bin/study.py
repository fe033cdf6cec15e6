"""python -m bin.study: the whole study on one model, end to end, each stage cached.

Stages, each one of the tools run with the flags shown when it starts, each into its own folder
under --out:
  intrinsic    tokenisation cost per language and bits per character  (bin.intrinsic)
  saes, saes_seed{k}
               JumpReLU SAEs on --train_corpus at --sae_layers, once per --sae_seeds
                                                                     (bin.train_sae; or --sae_dir)
  analysis, analysis_seed{k}
               with each seed's SAEs: SAE activation per language and layer, gaps vs --ref_lang
               beside their controls (residual norm, direction only, per sentence), bootstrap
               CIs, SAE quality per language, top-feature overlap and its null, on
               --analysis_corpus                                     (bin.analyze)
  lora_T, lora_T_{control}
               activation-aware LoRA for each of --targets and its --lora_controls adapters,
               measured before and after on --analysis_corpus        (bin.finetune)
  bench_base, bench_lora_T[_{control}]
               --bench_tasks (ARC-Challenge by default) on the same items in every language,
               each adapter paired in its target and --ref_lang      (bin.evaluate)
then study.json (every number the results use) and --results_md (tables, figures under
results/ beside it, the paper side by side). A stage whose result files exist is not run
again, and an interrupted training resumes from its checkpoints, so re-running the same
command continues where it stopped; --out holding a study with other settings is an error.
For Gemma 3 270M (README: the data layout):

  python -m bin.study --checkpoint=gemma3-270m --analysis_corpus=data/parallel/flores200_sib200 \\
      --train_corpus=data/parallel/ntrex128 --bench_data_dir=data/benchmarks --out=out/study
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from absl import app, flags

from bin import cli, shared_flags
from xling_jax.data import languages

if TYPE_CHECKING:  # the stage table imports every tool's library: not for --help
  from xling_jax.study.stages import Stage

FLAGS = flags.FLAGS
REPO = Path(__file__).resolve().parents[1]
SETTINGS_FILE = "study_settings.json"
TIMINGS_FILE = "timings.json"
# Flags that change where results go or how they are shown, not what is computed.
NOT_SETTINGS = ("out", "results_md", "progress", "card_check", "card_limit")

shared_flags.define_platform_flags()
shared_flags.define_model_flags()
shared_flags.define_langs_flag()
shared_flags.define_output_flags("study_out")
flags.adopt_module_key_flags(shared_flags)  # --help lists the shared flags too
flags.DEFINE_string("ref_lang", "en", "Reference language; one of --langs.")
flags.DEFINE_list("targets", ["hi", "ml"], "Languages that get an activation-aware LoRA adapter.")
flags.DEFINE_string("analysis_corpus", "embedded",
                    "Parallel corpus of the analysis and bits per character (FLORES-200): "
                    "'embedded', a directory of {lang}.txt files, or hf:<dataset_id>.")
flags.DEFINE_string("train_corpus", "embedded",
                    "Parallel corpus the SAEs and adapters train on (NTREX-128), kept apart "
                    "from --analysis_corpus.")
flags.DEFINE_string("bench_data_dir", None,
                    "Benchmark items (arc_challenge/, mmlu/, mmlu_dev/, hellaswag/ with "
                    "{lang}.jsonl). Unset: the benchmark stages are skipped, and the results "
                    "say so.")
flags.DEFINE_integer("bpc_sentences", 100, "Sentences per language scored for bits per character.",
                     lower_bound=0)
flags.DEFINE_integer("analysis_sentences", 300,
                     "Analyse the first N sentences per language (0 = all). Each SAE seed "
                     "analyses them: 300 keep the study within 90 minutes on a 2-core CPU.",
                     lower_bound=0)
flags.DEFINE_integer("bucket", 16,
                     "Pad sentences to a multiple of this many tokens in the analysis and the "
                     "adapters' training (parallel sentences are short: 64 would pad most "
                     "rows to twice their length).", lower_bound=1)
flags.DEFINE_integer("analysis_batch_size", 32, "Sentences per analysis batch.", lower_bound=1)
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the analysis's CIs.",
                     lower_bound=0)
flags.DEFINE_integer("quality_sentences", 25,
                     "Sentences per language of each analysis's SAE quality pass (FVU; for the "
                     "first seed also the LM loss with the reconstruction spliced in, which "
                     "runs the model once more per layer). 0 = all analysed sentences.",
                     lower_bound=0)
flags.DEFINE_string("sae_dir", None,
                    "Bring SAEs (any layout bin.analyze reads) instead of training them; "
                    "--sae_layers must be layers they cover.")
flags.DEFINE_string("sae_l0", None, "With --sae_dir: which SAE per layer (as bin.analyze).")
flags.DEFINE_list("sae_layers", None,
                  "Layers with an SAE. Default: six spread from the first to the last layer, "
                  "the LoRA objective layer among them.")
flags.DEFINE_string("sae_width", "4096", "SAE width (trained, or of --sae_dir).")
flags.DEFINE_integer("sae_sentences", 400, "Parallel lines of --train_corpus the SAEs train on "
                     "(in every language).", lower_bound=1)
flags.DEFINE_integer("sae_epochs", 1, "Passes over those lines.", lower_bound=1)
flags.DEFINE_integer("sae_batch_size", 512, "Tokens per SAE training step.", lower_bound=1)
flags.DEFINE_float("sae_target_l0", 50, "Target active features per token (quadratic penalty).")
flags.DEFINE_float("sae_lr", None, "Peak SAE learning rate. Default: bin.train_sae's, scaled to the "
                   "run's length.")
flags.DEFINE_integer("sae_seeds", 3,
                     "Times the SAEs are trained (each with its own seed: initialisation and "
                     "data order) and analysed: the results report the spread over them.",
                     lower_bound=1)
flags.DEFINE_integer("lora_sentences", 600, "Parallel lines of --train_corpus for each adapter "
                     "(a fifth held out for the gain and retention report).", lower_bound=5)
flags.DEFINE_integer("lora_steps", 16, "Optimiser steps per adapter.", lower_bound=1)
flags.DEFINE_integer("lora_batch_size", 8, "Parallel lines per LoRA step.", lower_bound=1)
flags.DEFINE_integer("lora_rank", 8, "LoRA rank.", lower_bound=1)
flags.DEFINE_float("lora_lr", 1e-3, "Peak LoRA learning rate.")
flags.DEFINE_list("lora_controls", ["lm", "norm"],
                  "Control adapters per target, trained on the same lines, steps, rank and lr: "
                  "lm (the plain language-model loss on the target text, retain kept) and "
                  "norm (match the reference's residual norm at the objective layer, no SAE).")
flags.DEFINE_integer("eval_sentences", 50,
                     "Sentences of --analysis_corpus each adapter is measured on before and "
                     "after (bits per character, residual norm, code mass).", lower_bound=1)
flags.DEFINE_list("bench_tasks", ["arc"], "Benchmarks scored.")
flags.DEFINE_bool("bench_common_ids", True,
                  "Score the same items in every language (each task's common_ids.txt), so "
                  "that languages and before/after pairs compare item by item.")
flags.DEFINE_integer("bench_limit", 200, "Items per task and language (0 = all).", lower_bound=0)
flags.DEFINE_bool("card_check", False,
                  "Also score English as the model card does (HellaSwag 10-shot on its "
                  "1000-item subsample, ARC-Challenge 25-shot on the test set), outside the "
                  "study's time budget: long few-shot contexts.")
flags.DEFINE_integer("card_limit", 0, "Items per card benchmark (0 = all of them).",
                     lower_bound=0)
flags.DEFINE_string("results_md", None,
                    "The results page to write (figures and study.json go to results/ beside "
                    "it). Default: --out/RESULTS.md.")


def default_sae_layers(n_layers: int, objective: int, count: int = 6) -> tuple[int, ...]:
  """`count` layers evenly from the first to the last, with the nearest one moved onto the
  objective layer."""
  import numpy as np
  layers = [int(round(v)) for v in np.linspace(0, n_layers - 1, min(count, n_layers))]
  nearest = min(range(len(layers)), key=lambda i: abs(layers[i] - objective))
  layers[nearest] = objective
  return tuple(sorted(set(layers)))


def settings_of(n_layers: int) -> dict:
  """The study's settings: every flag that changes what is computed, with the languages, the
  targets, the SAE layers and the adapters' objective layer resolved."""
  from lora.objectives import default_objective_layer
  langs = languages.validate_languages(FLAGS.langs)
  targets = languages.validate_languages(FLAGS.targets) if FLAGS.targets else ()
  unknown = [c for c in FLAGS.lora_controls if c not in ("lm", "norm")]
  if unknown:
    raise app.UsageError(f"--lora_controls={','.join(FLAGS.lora_controls)}: {unknown[0]} is not "
                         "a control (lm, norm)")
  if FLAGS.lora_controls and not targets:
    raise app.UsageError(f"--lora_controls={','.join(FLAGS.lora_controls)} needs --targets: a "
                         "control adapter is trained beside a target's adapter")
  if FLAGS.ref_lang not in langs:
    raise app.UsageError(f"--ref_lang={FLAGS.ref_lang} must be one of --langs")
  bad = [t for t in targets if t not in langs or t == FLAGS.ref_lang]
  if bad:
    raise app.UsageError(f"--targets={','.join(FLAGS.targets)}: {bad[0]} is not one of --langs "
                         "other than --ref_lang")
  objective = default_objective_layer(n_layers)
  layers = (cli.parse_layers(",".join(FLAGS.sae_layers), n_layers, "sae_layers")
            if FLAGS.sae_layers else default_sae_layers(n_layers, objective))
  layers = tuple(sorted(set(layers)))
  if objective not in layers:  # the adapter's objective needs an SAE there
    objective = min(layers, key=lambda l: abs(l - objective))
  if FLAGS.sae_dir and not FLAGS.sae_l0:
    raise app.UsageError("--sae_dir needs --sae_l0 (which SAE per layer, as bin.analyze)")
  if FLAGS.card_check and not FLAGS.bench_data_dir:
    raise app.UsageError("--card_check needs --bench_data_dir (HellaSwag and ARC items)")
  from xling_jax.analysis import disparity
  disparity.check_resamples(FLAGS.bootstrap, "--bootstrap")  # before any stage runs
  settings = {name: value for name, value in cli.resolved_flags().items()
              if name not in NOT_SETTINGS}
  settings.update(sae_layers=list(layers), objective_layer=objective, targets=list(targets),
                  langs=list(langs), lora_first_line=lora_first_line())
  return settings


def lora_first_line() -> int:
  """The first line of --train_corpus the adapters use: past the SAEs' lines, so that their
  held-out lines are new to the SAEs too; 0 when the corpus has no line past them (the
  results say so) or the SAEs were brought."""
  if FLAGS.sae_dir or not FLAGS.targets:
    return 0
  from xling_jax.data import corpora
  n = corpora.load_corpus(FLAGS.train_corpus, [FLAGS.ref_lang]).n_sentences
  return FLAGS.sae_sentences if n > FLAGS.sae_sentences else 0


def check_settings(out: Path, settings: dict) -> None:
  """An --out holding a study with other settings is an error (naming the first difference);
  the same settings mean: continue that study."""
  path = out / SETTINGS_FILE
  if not path.exists():
    return
  old = json.loads(path.read_text())
  for key in sorted(set(old) | set(settings)):
    if key not in old:  # its stages ran without the setting: their files mean something else
      raise app.UsageError(f"--out={out} holds a study of an earlier xling-jax, whose settings "
                           f"lack {key}: choose another --out")
    if old[key] != settings.get(key):
      raise app.UsageError(f"--out={out} holds a study run with {key}={old[key]!r}, not "
                           f"{settings.get(key)!r}: re-run with its settings to continue it, or "
                           "choose another --out")


def run_stages(stages: list[Stage], out: Path) -> dict:
  """Run each stage not yet done, printing progress and a rough ETA; returns the timings."""
  from xling_jax.runtime import io
  timings_path = out / TIMINGS_FILE
  timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
  todo = [s for s in stages if not s.is_done()]
  total_weight, done_weight, spent = sum(s.weight for s in todo), 0.0, 0.0
  for i, stage in enumerate(stages, 1):
    head = f"[study {i}/{len(stages)}] {stage.name}"
    if stage.is_done():
      print(f"{head}: done earlier ({stage.done[0].parent})", file=sys.stderr, flush=True)
      continue
    eta = ("" if not done_weight else
           f"; ETA of the study ~{spent / done_weight * (total_weight - done_weight) / 60:.0f} min")
    argv = stage.argv()
    print(f"{head}: {shlex.join(['python', *argv[1:]])}  (elapsed {spent / 60:.1f} min{eta})",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
      cli.fail(f"stage {stage.name} failed (exit {proc.returncode}; its message is above); "
                  "the finished stages are kept: fix the cause and re-run the same command")
    if not stage.is_done():
      cli.fail(f"stage {stage.name} exited 0 without writing {stage.done[0]}")
    timings[stage.name] = {"seconds": round(seconds, 1), "command": shlex.join(
        ["python", *argv[1:]]), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    io.write_json(timings_path, timings)
    spent += seconds
    done_weight += stage.weight
  return timings


def main(argv):
  from xling_jax.runtime import hub, io
  from xling_jax.study import page as study_page, record as study_record, stages as stages_lib
  out = cli.check_out()
  results_md = io.check_output_file(FLAGS.results_md or out / "RESULTS.md", "--results_md")
  for flag in ("analysis_corpus", "train_corpus", "bench_data_dir"):
    value = FLAGS[flag].value
    if value and value != "embedded" and not value.startswith("hf:") and not Path(value).exists():
      raise FileNotFoundError(f"--{flag}={value}: no such file or directory")
  if FLAGS.sae_dir:
    hub.local_or_hub(FLAGS.sae_dir, "--sae_dir")
  settings = settings_of(shared_flags.n_model_layers())
  stages = stages_lib.plan(out, settings, card_check=FLAGS.card_check,
                           card_limit=FLAGS.card_limit)
  check_settings(out, settings)
  out.mkdir(parents=True, exist_ok=True)
  io.write_json(out / SETTINGS_FILE, settings)
  command = shlex.join(["python", "-m", "bin.study", *sys.argv[1:]])
  timings = run_stages(stages, out)
  from xling_jax.runtime.platform import describe_host
  record = study_record.collect(stages, settings, timings, command, machine=describe_host())
  paths = study_page.write(results_md, record, stages_lib.figures(stages),
                           also={out / "study.json": io.json_text(record)})
  print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
  cli.run(main, on_interrupt=lambda: f"the finished stages in {FLAGS.out} are kept (an "
          "interrupted training keeps its checkpoints); rerun the same command to continue")
