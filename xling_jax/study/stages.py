"""The study's stages, each kind written once: the tool it runs, its folder under the study's
--out, the tool's flags built from the study's settings, its result files (named by the tool's
own constants; all present = done) and the figures RESULTS.md shows. `bin.study` runs them,
`record.collect` reads them through `Stage.read`; nothing else names a stage's files.

    intrinsic                 bin.intrinsic  intrinsic.json
    saes, saes_seed{K}        bin.train_sae  reports/layer_{L}.json      (not with --sae_dir;
                                                                          one per SAE seed)
    analysis, analysis_seed{K} bin.analyze   stats.json                  (one per SAE seed)
    lora_{T}[_{C}]            bin.finetune   report.json                 (per target T: the
                                                                          SAE objective, and
                                                                          each control C)
    bench_base, bench_lora_T[_C]  bin.evaluate  scores.json, items.jsonl (with --bench_data_dir)
    card_{task}[_limit{N}]    bin.evaluate   scores.json, run.json       (with --card_check)
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

from lora import finetune
from sae.train import loop as sae_loop
from xling_jax.analysis import intrinsic as intrinsic_lib, report as analysis_report
from xling_jax.evaluation import run as evaluation
from xling_jax.study.paper import CARD_PROTOCOL

# The study's flags every tool is given as they are: the model, its platform and the seed.
MODEL_FLAGS = ("platform", "checkpoint", "config", "tokenizer", "dtype", "mesh",
               "param_sharding", "seed")
# The kinds of stage; a stage of a kind that runs once is named, and foldered, by its kind.
INTRINSIC, SAES, ANALYSIS = "intrinsic", "saes", "analysis"
LORA, BENCH, CARD = "lora", "bench", "card"
# The adapters' objectives as bin.finetune's --weights (align, retain, lm, norm): the paper's
# activation alignment, and the controls trained on the same lines, steps, rank and lr.
OBJECTIVES = {None: "1,1,0,0", "lm": "0,1,1,0", "norm": "0,1,0,1"}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One tool run into `folder`. Done once every file of `results` exists; a non-empty
  `resume_dir` means an interrupted training, continued with --resume."""
  name: str
  kind: str
  tool: str  # the module run with `python -m`
  folder: Path
  args: tuple[str, ...]
  results: Mapping[str, Path]  # what the record calls each result file -> the file
  weight: float  # rough relative cost, for the ETA only
  resume_dir: Path | None = None
  target: str | None = None  # the adapter's language (lora, and bench of an adapter)
  control: str | None = None  # the adapter's control objective (None: the SAE objective)
  seed: int = 0  # which retraining of the SAEs (saes, analysis)
  figures: Mapping[str, Path] = dataclasses.field(default_factory=dict)  # results/ name -> file

  @property
  def done(self) -> tuple[Path, ...]:
    return tuple(self.results.values())

  def is_done(self) -> bool:
    return all(p.exists() for p in self.done)

  def argv(self) -> list[str]:
    resume = self.resume_dir is not None and self.resume_dir.is_dir() and any(
        self.resume_dir.iterdir())
    return [sys.executable, "-m", self.tool, *self.args, *(["--resume"] if resume else [])]

  def read(self) -> dict:
    """{what: the parsed JSON (a list of records for a .jsonl file)} of every result file."""
    def parse(path: Path):
      text = Path(path).read_text(encoding="utf-8")
      if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
      return json.loads(text)
    return {what: parse(Path(path)) for what, path in self.results.items()}


def plan(out: Path, s: Mapping, *, card_check: bool = False, card_limit: int = 0) -> list[Stage]:
  """The stages of the study with settings `s` (`bin.study`'s: every flag's value, with langs,
  targets, sae_layers and objective_layer resolved) under `out`, in the order they run.
  `card_check`: also score English as the model card does, on the first `card_limit` items
  (0: all)."""
  model = tuple(f"--{name}={s[name]}" for name in MODEL_FLAGS if s[name] is not None)
  stages = [_intrinsic(out, s, model)]
  seeds = range(1 if s["sae_dir"] else s["sae_seeds"])
  if not s["sae_dir"]:
    stages += [_saes(out, s, model, k) for k in seeds]
  stages += [_analysis(out, s, model, k) for k in seeds]
  adapters = [(t, c) for t in s["targets"] for c in (None, *s["lora_controls"])]
  stages += [_lora(out, s, model, t, c) for t, c in adapters]
  if s["bench_data_dir"]:
    stages.append(_bench(out, s, model, None, None))
    stages += [_bench(out, s, model, t, c) for t, c in adapters]
  if card_check:
    stages += [_card(out, s, model, task, card_limit) for task in CARD_PROTOCOL]
  return stages


def figures(stages: Sequence[Stage]) -> dict[str, Path]:
  """The figures RESULTS.md shows, by their name under its results/ folder: the analysis's,
  then the SAEs' training curves (of the first SAE seed)."""
  return {name: path for kind in (ANALYSIS, SAES) for stage in stages
          if stage.kind == kind and stage.seed == 0 for name, path in stage.figures.items()}


def _seeded(kind: str, seed: int) -> str:
  return kind if seed == 0 else f"{kind}_seed{seed}"


def adapter_name(target: str, control: str | None) -> str:
  return f"{LORA}_{target}" + (f"_{control}" if control else "")


def _langs(s: Mapping) -> str:
  return ",".join(s["langs"])


def _layers(s: Mapping) -> str:
  return ",".join(map(str, s["sae_layers"]))


def _sae_dir(out: Path, s: Mapping, seed: int = 0) -> Path:
  return Path(s["sae_dir"]) if s["sae_dir"] else out / _seeded(SAES, seed)


def _sae_args(out: Path, s: Mapping, seed: int = 0) -> tuple[str, ...]:
  """The flags that pick the SAEs of `seed`, brought or trained by its saes stage
  (bin.train_sae trains in quadratic mode given --target_l0, so its folders are named by that
  target)."""
  l0 = s["sae_l0"] or str(sae_loop.saved_l0("quadratic", s["sae_target_l0"]))
  return (f"--sae_dir={_sae_dir(out, s, seed)}", f"--sae_width={s['sae_width']}",
          f"--sae_l0={l0}")


def _intrinsic(out: Path, s: Mapping, model: tuple[str, ...]) -> Stage:
  folder = out / INTRINSIC
  return Stage(
      INTRINSIC, INTRINSIC, "bin.intrinsic", folder,
      (*model, f"--corpus={s['analysis_corpus']}", f"--langs={_langs(s)}",
       f"--bpc_sentences={s['bpc_sentences']}", f"--out={folder}"),
      {"record": folder / intrinsic_lib.RECORD_NAME}, 3.0 * s["bpc_sentences"] * len(s["langs"]))


def _saes(out: Path, s: Mapping, model: tuple[str, ...], seed: int) -> Stage:
  """The SAEs retrained with seed `seed` (their init and data order: --sae_seed)."""
  folder, layers = _sae_dir(out, s, seed), s["sae_layers"]
  reports = {layer: sae_loop.report_files(folder, layer) for layer in layers}
  return Stage(
      _seeded(SAES, seed), SAES, "bin.train_sae", folder,
      (*model, f"--corpus={s['train_corpus']}", f"--langs={_langs(s)}",
       f"--max_sentences={s['sae_sentences']}", f"--layers={_layers(s)}",
       f"--width={s['sae_width']}", "--steps=0", f"--epochs={s['sae_epochs']}",
       f"--batch_size={s['sae_batch_size']}", f"--target_l0={s['sae_target_l0']:g}",
       *([f"--lr={s['sae_lr']:g}"] if s["sae_lr"] is not None else []),
       f"--sae_seed={s['seed'] + seed}", "--sentences_per_forward=64", f"--out={folder}"),
      {str(layer): files["json"] for layer, files in reports.items()},
      s["sae_sentences"] * len(s["langs"]) * s["sae_epochs"] * (1 + 0.25 * len(layers)),
      resume_dir=folder / sae_loop.CHECKPOINTS, seed=seed,
      figures={f"sae_layer_{layer}.png": files["png"] for layer, files in reports.items()})


def _analysis(out: Path, s: Mapping, model: tuple[str, ...], seed: int) -> Stage:
  """The analysis with the SAEs of `seed`."""
  name, n, q = _seeded(ANALYSIS, seed), s["analysis_sentences"], s["quality_sentences"]
  if n and q:
    q = min(q, n)  # bin.analyze refuses a quality pass over more sentences than it analyses
  folder = out / name
  return Stage(
      name, ANALYSIS, "bin.analyze", folder,
      (*model, *_sae_args(out, s, seed), f"--layers={_layers(s)}",
       f"--corpus={s['analysis_corpus']}", f"--langs={_langs(s)}", f"--ref_lang={s['ref_lang']}",
       f"--bootstrap={s['bootstrap']}", f"--bucket={s['bucket']}",
       f"--batch_size={s['analysis_batch_size']}", *([f"--max_sentences={n}"] if n else []),
       *([f"--quality_sentences={q}"] if q is not None else []),
       # Retrained SAEs' quality: their FVU; the LM loss with them spliced in once, for seed 0.
       *(["--quality_lm_loss=false"] if seed else []), f"--out={folder}"),
      {"stats": folder / analysis_report.STATS_NAME},
      1.4 * (n or 1004) * len(s["langs"]) + 3.0 * (q or 100) * len(s["langs"]), seed=seed,
      figures={name: folder / name for name in (
          analysis_report.HEATMAP_NAME, analysis_report.LAYERS_NAME,
          analysis_report.CONTROLS_NAME)})


def _lora(out: Path, s: Mapping, model: tuple[str, ...], target: str,
          control: str | None) -> Stage:
  """`target`'s adapter under the SAE objective (`control` None) or a control objective, on the
  training corpus's lines past the SAEs' (so its held-out lines are new to the SAEs too),
  measured on the analysis corpus."""
  name = adapter_name(target, control)
  folder = out / name
  first = s["lora_first_line"]
  return Stage(
      name, LORA, "bin.finetune", folder,
      (*model, *_sae_args(out, s), f"--corpus={s['train_corpus']}", f"--first_line={first}",
       f"--max_sentences={s['lora_sentences']}", f"--target_lang={target}",
       f"--ref_lang={s['ref_lang']}", f"--weights={OBJECTIVES[control]}",
       f"--steps={s['lora_steps']}", f"--batch_size={s['lora_batch_size']}",
       f"--rank={s['lora_rank']}", f"--bucket={s['bucket']}", f"--lr={s['lora_lr']:g}",
       f"--objective_layers={s['objective_layer']}", f"--report_layers={_layers(s)}",
       f"--eval_corpus={s['analysis_corpus']}", f"--eval_sentences={s['eval_sentences']}",
       f"--out={folder}"),
      {"report": folder / finetune.REPORT_NAME},
      s["lora_steps"] * s["lora_batch_size"] * 2 * 6 + s["lora_sentences"] * 0.8
      + 8.0 * s["eval_sentences"],
      resume_dir=folder / finetune.CHECKPOINTS, target=target, control=control)


def _bench(out: Path, s: Mapping, model: tuple[str, ...], target: str | None,
           control: str | None) -> Stage:
  """The benchmarks of the base model in every language (`target` None), or through an adapter
  in its target and the reference language: the same items (--common_ids) in each, paired."""
  name = f"{BENCH}_base" if target is None else f"{BENCH}_{adapter_name(target, control)}"
  folder, limit = out / name, s["bench_limit"]
  adapter = (() if target is None else
             (f"--lora={out / adapter_name(target, control) / finetune.PEFT}",))
  langs = _langs(s) if target is None else f"{target},{s['ref_lang']}"
  return Stage(
      name, BENCH, "bin.evaluate", folder,
      (*model, f"--data_dir={s['bench_data_dir']}", f"--tasks={','.join(s['bench_tasks'])}",
       f"--langs={langs}", *(["--common_ids"] if s["bench_common_ids"] else []),
       *([f"--limit={limit}"] if limit else []), *adapter, f"--out={folder}"),
      {"scores": folder / evaluation.SCORES_NAME, "items": folder / evaluation.ITEMS_NAME},
      (limit or 1000) * len(langs.split(",")) * len(s["bench_tasks"]) * 4, target=target,
      control=control)


def _card(out: Path, s: Mapping, model: tuple[str, ...], task: str, limit: int) -> Stage:
  """English `task` as the model card scores it (`CARD_PROTOCOL`), on the first `limit` items
  (0: all); the folder names a limit, so a partial check never passes for the full one."""
  name, protocol = f"{CARD}_{task}", CARD_PROTOCOL[task]
  folder = out / (f"{name}_limit{limit}" if limit else name)
  return Stage(
      name, CARD, "bin.evaluate", folder,
      (*model, f"--data_dir={s['bench_data_dir']}", f"--tasks={task}", "--langs=en",
       f"--num_fewshot={protocol.shots}",
       *([f"--subsample={protocol.subsample}"] if protocol.subsample else []),
       *([f"--limit={limit}"] if limit else []), f"--out={folder}"),
      {"scores": folder / evaluation.SCORES_NAME, "run": folder / evaluation.RUN_NAME},
      (limit or 1000) * protocol.shots * 3)
