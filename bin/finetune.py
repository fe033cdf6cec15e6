"""python -m bin.finetune: activation-aware LoRA (DESIGN.md s.5) with a before/after report.

Trains a LoRA adapter that lifts --target_lang's SAE activation at the objective layers toward
the frozen model's --ref_lang activation while keeping --ref_lang unchanged, then reports, on a
held-out split of the parallel corpus, the activation per layer before and after, the target's
gain (%) and the reference's retention (%) (the paper's two headline quantities).

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

import json
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from bin import common

FLAGS = flags.FLAGS
common.define_platform_flags()
common.define_model_flags()
common.define_sae_flags()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
flags.DEFINE_string("target_lang", "ml", "Language whose activation the adapter lifts.")
flags.DEFINE_string("ref_lang", "en", "Reference language: the alignment target, kept unchanged.")
flags.DEFINE_string("layers", "all", "Blocks that get LoRA: 'all' or comma-separated indices.")
flags.DEFINE_integer("rank", 8, "LoRA rank r.")
flags.DEFINE_float("alpha", 16.0, "LoRA alpha; the update is scaled by alpha / r (as PEFT).")
flags.DEFINE_list("modules", ["q", "k", "v", "o", "gate", "up", "down"],
                  "Adapted weights: any of q, k, v, o, gate, up, down.")
flags.DEFINE_integer("steps", 300, "Optimiser steps.")
flags.DEFINE_float("lr", 1e-3, "Peak learning rate (linear warmup, cosine decay to lr/10).")
flags.DEFINE_integer("warmup_steps", None, "Linear warmup steps. Default: min(20, steps // 10).")
flags.DEFINE_float("weight_decay", 0.0, "AdamW decoupled weight decay.")
flags.DEFINE_float("clip_norm", 1.0, "Clip gradients to this global norm.")
flags.DEFINE_integer("batch_size", 8, "Parallel lines per step (each seen in both languages).")
flags.DEFINE_list("weights", ["1", "1", "0"],
                  "Objective weights align,retain,lm (DESIGN.md s.5). A zero weight drops the "
                  "term.")
flags.DEFINE_enum("retain", "residual", ["residual", "kl"],
                  "Retain term: relative squared distance of reference-language residuals, or "
                  "KL of next-token distributions, between adapted and frozen model.")
flags.DEFINE_string("objective_layers", None,
                    "Layers S the align term acts on: comma-separated, or 'all'. Default: 20 on "
                    "Gemma-2-2B, the same relative depth on other models (2 on the toy).")
flags.DEFINE_string("report_layers", None,
                    "Layers whose before/after activation is reported: comma-separated or "
                    "'all'. Default: the objective layers. SAEs are loaded for these and S.")
flags.DEFINE_string("corpus", "embedded",
                    "Parallel corpus: 'embedded', a directory of {lang}.txt files, or "
                    "hf:<dataset_id>[:split].")
flags.DEFINE_integer("max_sentences", None, "Use only the first N parallel lines.")
flags.DEFINE_float("eval_fraction", 0.2,
                   "Fraction of lines held out for the before/after report (never trained on).")
flags.DEFINE_integer("max_len", 128, "Cut longer sentences to this many tokens.")
flags.DEFINE_integer("bucket", 64, "Pad sequence lengths to a multiple of this (few compiles).")
flags.DEFINE_string("out", "finetune_out", "Output directory.")
flags.DEFINE_bool("resume", False,
                  "Continue from the latest checkpoint in --out/checkpoints (same settings "
                  "required). Without it an existing checkpoint directory is an error.")
flags.DEFINE_enum("remat", "none", ["none", "full", "dots"],
                  "What the backward pass recomputes, for long sequences or large batches. none: "
                  "keep every intermediate (fastest, most memory); full: recompute each block "
                  "(least memory, about a third more compute); dots: keep the weight matmul "
                  "outputs, recompute norms/attention/GELU (most of the saving, cheaper).")
flags.DEFINE_integer("save_every", 100, "Checkpoint every N steps (and at the end).")
flags.DEFINE_integer("log_every", 10, "Print and log the loss terms every N steps.")
flags.DEFINE_list("eval_tasks", [],
                  "Benchmarks scored before and after with bin.evaluate (arc, mmlu, hellaswag) "
                  "on the target and reference languages; needs --eval_data_dir.")
flags.DEFINE_string("eval_data_dir", None,
                    "Benchmark items laid out like shared/data/benchmarks (for --eval_tasks).")
flags.DEFINE_integer("eval_limit", None, "Score only the first N items per task and language.")
flags.DEFINE_string("base_model_name", None,
                    "base_model_name_or_path written to adapter_config.json. Default: "
                    "--checkpoint, or 'xling-jax-toy' for the toy model.")


def parse_layers(spec: str | None, n_layers: int, what: str) -> tuple[int, ...] | None:
  """'all' -> every layer; '3,5' -> (3, 5); None -> None."""
  if spec is None:
    return None
  if spec.strip() == "all":
    return tuple(range(n_layers))
  try:
    layers = tuple(int(v) for v in spec.split(",") if v.strip())
  except ValueError:
    raise app.UsageError(f"--{what}={spec!r}: expected 'all' or comma-separated integers")
  bad = [l for l in layers if not 0 <= l < n_layers]
  if not layers or bad:
    raise app.UsageError(f"--{what}={spec!r}: layers must lie in 0..{n_layers - 1}")
  return layers


def default_objective_layer(n_layers: int) -> int:
  """Layer 20 of Gemma-2-2B's 26, at the same relative depth elsewhere."""
  return round(20 * (n_layers - 1) / 25)


def _weights() -> tuple[float, float, float]:
  try:
    weights = tuple(float(w) for w in FLAGS.weights)
  except ValueError:
    weights = ()
  if len(weights) != 3:
    raise app.UsageError(f"--weights={','.join(FLAGS.weights)}: expected three numbers "
                         "align,retain,lm")
  return weights


def _pct(new, old):
  """Percent change per layer; None where the old value is 0 (no defined change)."""
  return [100.0 * (n - o) / o if o else None for n, o in zip(new, old)]


def run_benchmarks(out: Path, adapter_dir: Path | None, langs: list[str]) -> dict:
  """Scores of bin.evaluate (a subprocess: its flags are its own) for the same model."""
  cmd = [sys.executable, "-m", "bin.evaluate", f"--platform={FLAGS.platform}",
         f"--tasks={','.join(FLAGS.eval_tasks)}", f"--langs={','.join(langs)}",
         f"--data_dir={FLAGS.eval_data_dir}", f"--seed={FLAGS.seed}", f"--dtype={FLAGS.dtype}",
         f"--out={out}", "--noprogress"]
  passed = {"config": FLAGS.config, "checkpoint": FLAGS.checkpoint, "tokenizer": FLAGS.tokenizer,
            "limit": FLAGS.eval_limit, "lora": adapter_dir}
  cmd += [f"--{flag}={value}" for flag, value in passed.items() if value is not None]
  # Its Markdown goes to stderr: stdout carries this tool's own report.
  subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1], stdout=sys.stderr)
  return json.loads((out / "scores.json").read_text())


def markdown(report: dict, notes: list[str]) -> str:
  t, r = report["target_lang"], report["ref_lang"]
  lines = [f"# {'TOY model: ' if report['toy'] else ''}activation-aware LoRA, {t} -> {r}", ""]
  lines += [f"> {n}" for n in notes] + ([""] if notes else [])
  lines += [f"Held-out lines: {report['heldout_lines']}; objective layers "
            f"{report['objective_layers']}; {report['steps']} steps.", "",
            f"| layer | {t} before | {t} after | {t} gain % | {r} before | {r} after | "
            f"{r} retention % |", "|---|---|---|---|---|---|---|"]
  for i, layer in enumerate(report["layers"]):
    lines.append(
        f"| {layer} | {report['before'][t][i]:.4g} | {report['after'][t][i]:.4g} | "
        f"{report['gain_pct'][t][i]:+.2f} | {report['before'][r][i]:.4g} | "
        f"{report['after'][r][i]:.4g} | {report['retention_pct'][r][i]:.2f} |")
  bench = report.get("benchmarks")
  if bench:
    lines += ["", "| task | lang | metric | before | after |", "|---|---|---|---|---|"]
    for task, by_lang in bench["after"].items():
      for lang, scores in by_lang.items():
        for metric in ("acc", "acc_norm"):
          before = bench["before"].get(task, {}).get(lang, {}).get(metric)
          after = scores.get(metric)
          if before is not None and after is not None:
            lines.append(f"| {task} | {lang} | {metric} | {before:.4f} | {after:.4f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.eval_tasks and not FLAGS.eval_data_dir:
    raise app.UsageError("--eval_tasks needs --eval_data_dir (benchmark items on disk)")
  from xling_jax.languages import validate_languages
  target, ref = validate_languages([FLAGS.target_lang, FLAGS.ref_lang])
  w_align, w_retain, w_lm = _weights()
  devices = common.setup_platform()
  start = time.perf_counter()
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

  import jax
  import numpy as np

  from lora import objectives, peft_io, train
  from lora.lora import LoraConfig
  from xling_jax import corpora, toy

  out = Path(FLAGS.out)
  checkpoint_dir = out / "checkpoints"
  if checkpoint_dir.exists() and any(checkpoint_dir.iterdir()) and not FLAGS.resume:
    raise app.UsageError(f"{checkpoint_dir} already holds checkpoints: pass --resume to continue "
                         "that run, or choose another --out")
  setup = common.load_model()
  config = setup.config
  L = config.n_layers
  objective_layers = (parse_layers(FLAGS.objective_layers, L, "objective_layers")
                      or (default_objective_layer(L),))
  report_layers = parse_layers(FLAGS.report_layers, L, "report_layers") or objective_layers
  lora_layers = None if FLAGS.layers == "all" else parse_layers(FLAGS.layers, L, "layers")
  lora_config = LoraConfig(rank=FLAGS.rank, alpha=FLAGS.alpha, modules=tuple(FLAGS.modules),
                           layers=lora_layers, seed=FLAGS.seed)
  objective = objectives.ObjectiveConfig(layers=objective_layers, w_align=w_align,
                                         w_retain=w_retain, w_lm=w_lm, retain=FLAGS.retain)
  train_config = train.TrainConfig(
      steps=FLAGS.steps, batch_size=FLAGS.batch_size, lr=FLAGS.lr,
      warmup_steps=(min(20, FLAGS.steps // 10) if FLAGS.warmup_steps is None
                    else FLAGS.warmup_steps),
      weight_decay=FLAGS.weight_decay, clip_norm=FLAGS.clip_norm, eval_fraction=FLAGS.eval_fraction,
      max_len=FLAGS.max_len, bucket=FLAGS.bucket, seed=FLAGS.seed, save_every=FLAGS.save_every,
      log_every=FLAGS.log_every)

  corpus = corpora.load_corpus(FLAGS.corpus, (target, ref), FLAGS.max_sentences)
  train_split, heldout = train.split_parallel(corpus.sentences[target], corpus.sentences[ref],
                                              train_config.eval_fraction, train_config.seed)
  sae_layers = tuple(sorted(set(objective_layers) | set(report_layers)))
  saes, sae_source = common.load_saes(setup, sae_layers, corpus.sentences[ref][:16])
  select = lambda layers: jax.tree.map(
      lambda x: x[np.asarray([sae_layers.index(l) for l in layers])], saes)

  notes = [toy.toy_note(config)] if setup.is_toy else []
  for n in notes:
    print(n, file=sys.stderr)
  print(f"devices: {devices}; corpus: {corpus.name} ({len(train_split)} train / {len(heldout)} "
        f"held-out lines); SAEs: {sae_source}; objective layers {list(objective_layers)}",
        file=sys.stderr)

  def activation(texts, adapter):
    return train.corpus_activation(
        setup.params, config, select(report_layers), report_layers, setup.tokenizer, texts,
        adapter=adapter, batch_size=train_config.batch_size, max_len=train_config.max_len,
        bucket=train_config.bucket).tolist()

  texts = {target: heldout.target, ref: heldout.ref}
  before = {lang: activation(t, None) for lang, t in texts.items()}
  try:
    result = train.train(
        setup.params, config, select(objective_layers),
        train.BatchStream(train_split, setup.tokenizer, train_config), lora_config, objective,
        train_config, checkpoint_dir, resume=FLAGS.resume, log_path=out / train.LOG_NAME,
        echo=lambda line: print(line, flush=True), remat=FLAGS.remat, mesh=setup.mesh)
  except train.NonFiniteLossError as e:
    raise SystemExit(f"error: {e}") from None
  after = {lang: activation(t, result.adapter) for lang, t in texts.items()}
  base_name = FLAGS.base_model_name or FLAGS.checkpoint or "xling-jax-toy"
  peft_dir = peft_io.save_peft(out / "peft", result.adapter, lora_config, config,
                               base_model_name_or_path=str(base_name))

  report = {
      "target_lang": target, "ref_lang": ref, "layers": list(report_layers),
      "before": before, "after": after,
      "gain_pct": {lang: _pct(after[lang], before[lang]) for lang in texts},
      "retention_pct": {lang: [100.0 * a / b if b else None
                               for a, b in zip(after[lang], before[lang])] for lang in texts},
      "objective_layers": list(objective_layers), "steps": result.step,
      "final_terms": result.last_metrics, "train_lines": len(train_split),
      "heldout_lines": len(heldout), "toy": setup.is_toy, "notes": notes,
      "saes": sae_source, "corpus": corpus.source, "devices": devices,
      "provenance": setup.provenance,
      "flags": {f: FLAGS[f].value for f in (
          "target_lang", "ref_lang", "layers", "rank", "alpha", "modules", "steps", "lr",
          "warmup_steps", "weight_decay", "clip_norm", "batch_size", "weights", "retain",
          "objective_layers", "report_layers", "corpus", "max_sentences", "eval_fraction",
          "max_len", "bucket", "checkpoint", "tokenizer", "config", "sae_dir", "seed",
          "eval_tasks")},
  }
  if FLAGS.eval_tasks:
    report["benchmarks"] = {
        "before": run_benchmarks(out / "eval_before", None, [target, ref]),
        "after": run_benchmarks(out / "eval_after", peft_dir, [target, ref])}
  report["seconds"] = round(time.perf_counter() - start, 2)
  md = markdown(report, notes)
  (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
  (out / "report.md").write_text(md, encoding="utf-8")
  print(md)
  print(f"wrote {peft_dir}/, {checkpoint_dir}/, {out}/report.json, {out}/report.md")
  print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
  common.run(main)
