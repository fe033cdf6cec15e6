"""python -m bin.evaluate: ARC-Challenge, MMLU and HellaSwag accuracy per language, lm-eval rules.

Scores follow lm-evaluation-harness 0.4.13 (prompts, tokenisation, acc / acc_norm), plus acc_bytes;
each item's shared context is run once, not once per choice. Without --checkpoint it scores the toy
model with random weights and says so everywhere. For Gemma-2-2B, with the items from the hub
(or --data_dir=DIR holding arc_challenge/, mmlu/, mmlu_dev/, hellaswag/ with {lang}.jsonl files):

  python -m bin.evaluate --platform=gpu --checkpoint=google/gemma-2-2b --source=hf \\
      --tasks=arc,mmlu,hellaswag --num_fewshot=0 --out=out/eval

Writes to --out: scores.json (task -> lang -> {acc, acc_norm, acc_bytes, n, stderr, n_too_long}),
scores.csv, items.jsonl (one record per scored item), scores.md (task x language tables) and
run.json (flags, model, missing task/language combinations, items skipped as too long).
"""
from __future__ import annotations

import sys
import time

from absl import flags

from bin import cli, shared_flags

FLAGS = flags.FLAGS
shared_flags.define_platform_flags()
shared_flags.define_model_flags()
shared_flags.define_langs_flag()
shared_flags.define_batch_flag(8, "items, one packed row per item")
shared_flags.define_output_flags("eval_out")
flags.adopt_module_key_flags(shared_flags)  # --help lists the shared flags too
flags.DEFINE_list("tasks", ["arc", "mmlu", "hellaswag"], "Tasks: any of arc, mmlu, hellaswag.")
flags.DEFINE_enum("source", "dir", ["dir", "hf"],
                  "Where items come from: dir = --data_dir; hf = the HF hub (allenai/ai2_arc, "
                  "cais/mmlu, Rowan/hellaswag, alexandrainst/m_*; needs network, or "
                  "HF_HUB_OFFLINE=1 with them cached). English uses lm-eval's arc_challenge / "
                  "mmlu / hellaswag prompts, the other languages Okapi's.")
flags.DEFINE_string("data_dir", None,
                    "A folder holding arc_challenge/, mmlu/, mmlu_dev/ and hellaswag/, each with "
                    "{lang}.jsonl files (README: benchmark data). Required with --source=dir.")
flags.DEFINE_bool("common_ids", False,
                  "Score only the items present in every language (each folder's common_ids.txt).")
flags.DEFINE_integer("num_fewshot", 0,
                     "Shots per prompt (lm-eval conventions: ARC 25, HellaSwag 10, MMLU 5). MMLU "
                     "takes the first N of its dev split; ARC and HellaSwag sample (seeded) from "
                     "the hub's train split, or, from --data_dir, from the evaluated items minus "
                     "the item itself.", lower_bound=0)
flags.DEFINE_integer("fewshot_seed", 1234, "Seed of the few-shot sampler (lm-eval's default).")
flags.DEFINE_integer("limit", None, "Score only the first N items of each task and language.",
                     lower_bound=1)
flags.DEFINE_integer("subsample", None,
                     "Score N items per task and language drawn as sorted(random.Random("
                     "--subsample_seed).sample(range(items), N)); 1000 with seed 0 is the "
                     "customary HellaSwag subsample. Few-shot examples still come from the "
                     "whole split.", lower_bound=1)
flags.DEFINE_integer("subsample_seed", 0, "Seed of --subsample.")
flags.DEFINE_string("lora", None, "A PEFT LoRA adapter directory applied to the model.")
flags.DEFINE_integer("max_length", None,
                     "Longest input in tokens; longer items are skipped and counted, never cut. "
                     "Default: the model's max_seq_len.", lower_bound=1)


def eval_config():
  """The flags as an EvalConfig; raises on bad values before anything loads."""
  from xling_jax.evaluation import run as evaluation
  return evaluation.EvalConfig(
      tasks=FLAGS.tasks, langs=FLAGS.langs, source=FLAGS.source, data_dir=FLAGS.data_dir,
      common_ids=FLAGS.common_ids, num_fewshot=FLAGS.num_fewshot,
      fewshot_seed=FLAGS.fewshot_seed, limit=FLAGS.limit, subsample=FLAGS.subsample,
      subsample_seed=FLAGS.subsample_seed, batch_size=FLAGS.batch_size,
      max_length=FLAGS.max_length)


def main(argv):
  from pathlib import Path

  from xling_jax.evaluation import run as evaluation
  from xling_jax.model import presets
  config = eval_config()
  out = cli.check_out()
  if FLAGS.lora and not Path(FLAGS.lora).is_dir():
    raise FileNotFoundError(f"--lora={FLAGS.lora}: no such directory (a PEFT adapter: "
                            "adapter_config.json + adapter_model.safetensors)")
  start = time.perf_counter()
  prompts = evaluation.collect_prompts(config)  # bad data fails before the model loads
  for m in prompts.missing:
    print(f"{m['task']}/{m['lang']}: no data ({m['reason']})", file=sys.stderr)
  devices = shared_flags.setup_platform()
  setup = shared_flags.load_model()
  notes = [presets.toy_note(setup.config)] if setup.is_toy else []
  for n in notes:
    print(n, file=sys.stderr)
  print(f"devices: {devices}", file=sys.stderr)
  hook = None
  if FLAGS.lora:
    from lora import lora, peft_io
    hook = lora.project_hook(peft_io.load_peft(FLAGS.lora, setup.config))
  result = evaluation.evaluate(setup, config, hook=hook, prompts=prompts,
                               progress=FLAGS.progress)
  for n in result.notes:
    print(n, file=sys.stderr)
  run = {"flags": cli.resolved_flags(), "toy": setup.is_toy, "notes": notes,
         "provenance": setup.provenance, "devices": devices,
         "seconds": round(time.perf_counter() - start, 2)}
  title = ("TOY model (random weights): " if setup.is_toy else "") + \
      f"benchmark scores, {config.num_fewshot}-shot, lm-eval 0.4.13 rules"
  md = evaluation.markdown(result, title, notes)
  paths = evaluation.write_outputs(out, result, run, md)
  print(md)
  print("wrote " + ", ".join(str(p) for p in paths))
  print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
