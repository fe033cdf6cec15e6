"""Activation-aware LoRA as one call: train an adapter on a parallel corpus, report the target's
activation gain and the reference's retention on held-out lines, and leave a PEFT adapter.
`bin.finetune` is this call with flags; a notebook makes it directly:

    import xling_jax as xj
    model = xj.load_model()                          # the toy; or "gemma3-270m", ...
    corpus = xj.load_corpus("embedded", ["ml", "en"])
    saes = xj.load_saes(model, layers=[2])           # SAEs for the objective layer(s)
    run = xj.finetune(model, saes, corpus, "ml", out="finetune_out",
                      train=xj.TrainConfig(steps=100, warmup_steps=10))
    run.report["gain_pct"]["ml"]                     # % change per reported layer
    xj.forward(model.params, model.config, tokens, mask, hook=run.hook())   # the adapted model

Beside the gain on the training corpus's held-out lines, each language of `measured` (target,
reference, a related and an unrelated one) is measured before and after on `eval_corpus` (or on
those held-out lines without one): bits per character, mean residual norm and SAE code mass per
reported layer, so that an adapter's effect can be told from the objective it was trained on.

Written under `out`: peft/ (adapter_model.safetensors + adapter_config.json, which
`peft.PeftModel.from_pretrained` loads), checkpoints/ (orbax; `resume=True` continues exactly),
train_log.jsonl, report.json and report.md, and with `bench` eval_before/ and eval_after/.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lora import DEFAULT_REMAT
from lora.lora import LoraConfig
from lora.train import TrainConfig

CHECKPOINTS = "checkpoints"
PEFT = "peft"
REPORT_NAME = "report.json"


@dataclasses.dataclass(frozen=True)
class Finetuned:
  """A finished run: the adapter pytree, the report (report.json) and the PEFT directory."""
  adapter: Any
  report: dict
  peft_dir: Path

  def hook(self):
    """The adapter as `model.forward`'s `hook=`."""
    from lora.lora import project_hook
    return project_hook(self.adapter)

  def markdown(self) -> str:
    from lora import report
    return report.markdown(self.report, self.report["notes"])

  def _repr_markdown_(self) -> str:
    return self.markdown()


def check_start(out: str | Path, resume: bool) -> Path:
  """`out` as a Path once it is writable and, unless resuming, holds no checkpoints of an
  earlier run (which a fresh run would otherwise mix with its own)."""
  from xling_jax.runtime import io
  out = io.check_output_dir(out, "out")
  checkpoints = out / CHECKPOINTS
  if checkpoints.exists() and any(checkpoints.iterdir()) and not resume:
    raise ValueError(f"{checkpoints} already holds checkpoints: resume that run, or choose "
                     "another output directory")
  return out


def score_benchmarks(setup, config, out: Path, *, prompts=None, adapter=None,
                     adapter_dir: Path | None = None, progress: bool = False) -> dict:
  """Benchmark scores as `bin.evaluate` computes them, in process on the loaded model (through
  `adapter` when given, saved in `adapter_dir`); its files go to `out`. The adapter comes from
  memory, not from the directory: in a multi-process run only process 0 writes it."""
  from lora.lora import project_hook
  from xling_jax.evaluation import run as evaluation
  result = evaluation.evaluate(setup, config, hook=project_hook(adapter), prompts=prompts,
                               progress=progress)
  settings = dict(dataclasses.asdict(config),
                  lora=None if adapter_dir is None else str(adapter_dir))
  run = {"flags": settings, "toy": setup.is_toy, "provenance": setup.provenance}
  title = f"{'TOY model: ' if setup.is_toy else ''}benchmark scores " + \
      ("after LoRA" if adapter_dir else "before LoRA")
  evaluation.write_outputs(out, result, run, evaluation.markdown(result, title))
  return result.scores


def check_arguments(setup, saes, corpus, target, ref, out, lora, objective, train,
                    report_layers, eval_corpus) -> None:
  """`finetune`'s arguments are what it reads (TypeError naming the first that is not)."""
  import os

  from lora.objectives import ObjectiveConfig
  from xling_jax.data.corpora import ParallelCorpus
  from xling_jax.runtime import validate
  validate.model(setup, "finetune: setup")
  validate.saes(saes, "finetune: saes")
  for name, value in (("corpus", corpus), ("eval_corpus", eval_corpus)):
    if value is not None or name == "corpus":
      validate.instance(value, ParallelCorpus, f"finetune: {name}", "xj.load_corpus(...)")
  validate.value(target, str, "finetune: target")
  validate.value(ref, str, "finetune: ref")
  validate.value(out, str | os.PathLike, "finetune: out")
  validate.instance(lora, LoraConfig, "finetune: lora")
  if objective is not None:
    validate.instance(objective, ObjectiveConfig, "finetune: objective")
  validate.instance(train, TrainConfig, "finetune: train")
  validate.value(report_layers, tuple[int, ...] | None, "finetune: report_layers")


def finetune(setup, saes, corpus, target: str, ref: str = "en", *, out: str | Path,
             lora: LoraConfig = LoraConfig(), objective=None,
             train: TrainConfig = TrainConfig(), report_layers: Sequence[int] | None = None,
             resume: bool = False, remat: bool | str = DEFAULT_REMAT, bench=None,
             bench_prompts=None, base_model_name: str | None = None,
             echo: Callable[[str], None] = print, run_config: Mapping | None = None,
             eval_corpus=None, compare: Sequence[str] | None = None,
             progress: bool = False) -> Finetuned:
  """Train a LoRA adapter that lifts `target`'s SAE activation at the objective layers toward
  the frozen model's `ref` activation (the objective: `lora.objectives`), on the lines of
  `corpus` (a ParallelCorpus holding both languages) not held out for the report.

  `setup`: a `model_setup.ModelSetup`; `saes`: a `model_setup.SAESetup` covering the objective
  layers and `report_layers` (default: the objective layers). `objective` defaults to
  align + retain at the paper's relative depth (`objectives.default_objective_layer`). `bench`:
  an `evaluation.EvalConfig` scored before and after (its prompts in `bench_prompts` when read
  already). `run_config` is what report.json records as the settings (the tool passes every
  flag). `eval_corpus`: a ParallelCorpus (FLORES) for the gain, retention and per-language
  measurements; `compare`: the related and unrelated languages measured beside target and
  reference (default `languages.comparison_languages`, those the measured text has). Settings
  are checked before anything is computed (ValueError). `echo` gets a line per phase and per
  logged step (with an ETA); `progress` adds the measurements' and the benchmarks' progress
  lines (items/s, ETA) on stderr.
  """
  from lora import data, objectives, peft_io, report as report_lib, train as train_lib
  from lora.lora import project_hook, unadapted_notes
  from xling_jax.analysis import corpus_stats, intrinsic
  from sae import random_saes
  from xling_jax.data import languages
  from xling_jax.runtime import io, platform
  check_arguments(setup, saes, corpus, target, ref, out, lora, objective, train, report_layers,
                  eval_corpus)
  start = time.perf_counter()
  config = setup.config
  if target == ref:
    raise ValueError(f"target {target} is also the reference: the adapter lifts one language "
                     "toward another")
  missing = [lang for lang in (target, ref) if lang not in corpus.languages]
  if missing:
    raise ValueError(f"corpus {corpus.name} has no {', '.join(missing)}")
  objective = (objective or objectives.ObjectiveConfig()).for_model(config)
  report_layers = tuple(sorted(set(objective.layers if report_layers is None else report_layers)))
  needed = sorted(set(objective.layers) | set(report_layers))
  absent = [l for l in needed if l not in saes.layers]
  if absent:
    raise ValueError(f"the SAEs cover layers {list(saes.layers)}; the objective and the report "
                     f"need {absent} too")
  measure_source = eval_corpus or corpus
  if compare is None:
    compare = [lang for lang in languages.comparison_languages(target, ref)
               if lang is not None and lang in measure_source.languages]
  measured = tuple(dict.fromkeys((target, ref, *compare)))
  absent = [lang for lang in measured if lang not in measure_source.languages]
  if absent:
    raise ValueError(f"corpus {measure_source.name} has no {', '.join(absent)} to measure")
  out = check_start(out, resume)

  rows = data.heldout_rows(corpus.n_sentences, train.eval_fraction, train.seed)
  train_split, heldout = data.split_parallel(corpus.sentences[target], corpus.sentences[ref],
                                             train.eval_fraction, train.seed)
  skipped = unadapted_notes(config, lora)  # Gemma 4's experts: said, not refused
  for note in skipped:
    echo(f"note: {note}")
  notes = [*random_saes.notes(setup, saes), *skipped]
  texts = {target: heldout.target, ref: heldout.ref}
  measure_texts = ({lang: eval_corpus.sentences[lang] for lang in measured} if eval_corpus else
                   {lang: tuple(corpus.sentences[lang][i] for i in rows) for lang in measured})

  def stats(adapter, texts_by_lang):
    """The analysis's statistics (corpus_stats) at the report layers, through `adapter`."""
    return corpus_stats.corpus_stats(
        setup.params, config, saes.select(report_layers), setup.tokenizer, texts_by_lang,
        batch_size=train.batch_size, bucket=train.bucket, max_len=train.max_len,
        hook=project_hook(adapter), mesh=setup.mesh, layers=report_layers, show_progress=progress)

  def measure(adapter) -> dict:
    """{bits_per_char: {lang}, resid_norm: {lang: [L]}, code_mass: {lang: [L]}} of measured."""
    s = stats(adapter, measure_texts)
    bits = intrinsic.bits_per_char(setup.params, config, setup.tokenizer, measure_texts,
                                   batch_size=train.batch_size, mesh=setup.mesh,
                                   show_progress=progress, hook=project_hook(adapter))
    return {"bits_per_char": {lang: b["bits_per_char"] for lang, b in bits.items()},
            "resid_norm": s.metrics("resid_norm"), "code_mass": s.metrics("activation")}

  echo(f"measuring {', '.join(measured)} before training ...")
  before = stats(None, texts).metrics("activation")
  measured_before = measure(None)
  scores_before = (None if bench is None else
                   score_benchmarks(setup, bench, out / "eval_before", prompts=bench_prompts,
                                    progress=progress))
  log_path = out / train_lib.LOG_NAME
  result = train_lib.train(
      setup.params, config, saes.select(objective.layers),
      data.BatchStream(train_split, setup.tokenizer, train), lora, objective, train,
      out / CHECKPOINTS, resume=resume, log_path=log_path, echo=echo, remat=remat,
      mesh=setup.mesh)
  echo("measuring after training ...")
  after = stats(result.adapter, texts).metrics("activation")
  measured_after = measure(result.adapter)
  if base_model_name is None:
    from xling_jax.checkpoints.weights_package import HUB_IDS
    checkpoint = setup.provenance.get("checkpoint")
    base_model_name = HUB_IDS.get(checkpoint, checkpoint) or "xling-jax-toy"
  peft_dir = out / PEFT
  adapter_files = peft_io.peft_files(result.adapter, lora, config,
                                     base_model_name_or_path=str(base_model_name))
  report = {
      "target_lang": target, "ref_lang": ref, "layers": list(report_layers),
      "before": before, "after": after,
      "gain_pct": {lang: report_lib.gain_pct(after[lang], before[lang]) for lang in texts},
      "retention_pct": {lang: report_lib.retention_pct(after[lang], before[lang])
                        for lang in texts},
      "gap_closure_pct": report_lib.retention_pct(after[target], before[ref]),
      "measured": {
          "languages": list(measured),
          "text": eval_corpus.name if eval_corpus else "the held-out lines",
          "sentences": len(next(iter(measure_texts.values()))),
          "gain_pct": {target: report_lib.gain_pct(measured_after["code_mass"][target],
                                                   measured_before["code_mass"][target])},
          "retention_pct": {ref: report_lib.retention_pct(measured_after["code_mass"][ref],
                                                          measured_before["code_mass"][ref])},
          "gap_closure_pct": report_lib.retention_pct(measured_after["code_mass"][target],
                                                      measured_before["code_mass"][ref])},
      **{name: {"before": measured_before[name], "after": measured_after[name]}
         for name in ("bits_per_char", "resid_norm", "code_mass")},
      "objective": dataclasses.asdict(objective),
      "objective_layers": list(objective.layers), "steps": result.step,
      "final_terms": report_lib.final_terms(log_path, result.step),
      "train_lines": len(train_split), "heldout_lines": len(heldout), "toy": setup.is_toy,
      "random_saes": saes.random,
      "notes": notes, "saes": saes.description, "corpus": corpus.source,
      "devices": platform.describe_devices(), "provenance": setup.provenance,
      "flags": dict(run_config) if run_config is not None else {
          "lora": dataclasses.asdict(lora), "objective": dataclasses.asdict(objective),
          "train": dataclasses.asdict(train), "remat": remat, "resume": resume},
  }
  if bench is not None:
    report["benchmarks"] = {
        "before": scores_before,
        "after": score_benchmarks(setup, bench, out / "eval_after", prompts=bench_prompts,
                                  progress=progress,
                                  adapter=result.adapter, adapter_dir=peft_dir)}
  report["seconds"] = round(time.perf_counter() - start, 2)
  run = Finetuned(result.adapter, report, peft_dir)
  # The adapter and its report are one set: a failure leaves the previous run's both.
  io.write_set(out, {**{f"{PEFT}/{name}": data for name, data in adapter_files.items()},
                     REPORT_NAME: io.json_text(report), "report.md": run.markdown()})
  return run
