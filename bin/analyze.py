"""python -m bin.analyze: per-language, per-layer SAE activation statistics and the gap vs English.

With no flags it runs the embedded default (toy model, toy tokenizer, random SAEs, the embedded
10-language sample) and says so. For Gemma-2-2B:

  python -m bin.analyze --platform=gpu --checkpoint=/models/gemma-2-2b \\
      --sae_dir=/models/gemma-scope-2b-pt-res --corpus=/data/flores200 --out=out/flores
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

from bin import cli, shared_flags
from xling_jax.data.languages import LOW_RESOURCE

FLAGS = flags.FLAGS
shared_flags.define_platform_flags()
shared_flags.define_model_flags()
shared_flags.define_sae_flags()
shared_flags.define_langs_flag()
shared_flags.define_corpus_flags(max_len=None)
shared_flags.define_batch_flag(16, "sentences, padded with empty rows")
shared_flags.define_output_flags("analysis_out")
flags.adopt_module_key_flags(shared_flags)  # --help lists the shared flags too
flags.DEFINE_string("ref_lang", "en", "Reference language the gaps are measured against; one of "
                    "--langs.")
flags.DEFINE_string("bands", None,
                    "Layer bands NAME:FIRST-LAST,...; default early:0-8,middle:9-17,deep:18-25 "
                    "for 26 layers, thirds otherwise.")
flags.DEFINE_list("low_resource", list(LOW_RESOURCE),
                  "The low-resource group whose band max/mean the summary reports (those of "
                  "--langs that are in it).")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for confidence intervals (0 = off).",
                     lower_bound=0)
flags.DEFINE_string("layers", "all",
                    "Layers to analyse (those the SAEs cover): 'all' or comma-separated, e.g. "
                    "0,4,8,11,14,17 for SAEs trained on six layers.")
flags.DEFINE_integer("top_k", 20, "Top features per language and layer in stats.json.",
                     lower_bound=1)
flags.DEFINE_integer("quality_sentences", None,
                     "Sentences per language on which each SAE's FVU and the LM loss with its "
                     "reconstruction spliced in are measured (sae_quality in stats.json; the "
                     "model runs once more per analysed layer on them). 0: all. Default: the "
                     "first 100 (or the whole corpus when smaller).", lower_bound=0)
flags.DEFINE_bool("quality_lm_loss", True,
                  "Also measure the LM loss with each SAE's reconstruction spliced in (a "
                  "forward pass and the vocabulary per analysed layer); false: the FVU only.")


def check_flags() -> tuple[tuple[str, ...], dict | None, Path]:
  """(languages, bands or None for the model's default, --out), checked before anything loads."""
  from xling_jax.analysis import disparity
  from xling_jax.data.languages import validate_languages
  langs = validate_languages(FLAGS.langs)
  if FLAGS.ref_lang not in langs:
    raise app.UsageError(f"--ref_lang={FLAGS.ref_lang} must be one of --langs ({','.join(langs)})")
  validate_languages(FLAGS.low_resource)
  disparity.check_resamples(FLAGS.bootstrap, "--bootstrap")  # ValueError: one line, exit 2
  try:
    bands = disparity.parse_bands(FLAGS.bands) if FLAGS.bands else None
  except ValueError as e:
    raise app.UsageError(f"--bands={FLAGS.bands}: {e}") from None
  return langs, bands, cli.check_out()


def main(argv):
  langs, bands, out = check_flags()
  devices = shared_flags.setup_platform()
  start = time.perf_counter()

  from xling_jax.analysis import run as analysis
  from xling_jax.data import corpora
  from xling_jax.runtime import batching

  corpus = corpora.load_corpus(FLAGS.corpus, langs, FLAGS.max_sentences)
  if (FLAGS.quality_sentences or 0) > corpus.n_sentences:
    raise app.UsageError(f"--quality_sentences={FLAGS.quality_sentences}: the corpus has "
                         f"{corpus.n_sentences} sentences per language (0 = all of them)")
  setup = shared_flags.load_model()
  config = setup.config
  layers = tuple(sorted(set(cli.parse_layers(FLAGS.layers, config.n_layers, "layers"))))
  settings = analysis.AnalysisConfig(
      ref_lang=FLAGS.ref_lang, layers=layers, bands=bands, low_resource=tuple(FLAGS.low_resource),
      bootstrap=FLAGS.bootstrap, top_k=FLAGS.top_k, batch_size=FLAGS.batch_size,
      bucket=FLAGS.bucket, max_len=FLAGS.max_len, seed=FLAGS.seed,
      quality_sentences=FLAGS.quality_sentences, quality_lm_loss=FLAGS.quality_lm_loss)
  try:
    analysis.check(settings, config.n_layers, corpus.languages, corpus.n_sentences)
  except ValueError as e:
    given = f"--layers={FLAGS.layers}" + (f", --bands={FLAGS.bands}" if FLAGS.bands else "")
    raise app.UsageError(f"{e} ({given})") from None
  batch_size = batching.batch_rows(FLAGS.batch_size, corpus.n_sentences, setup.mesh)
  if batch_size < FLAGS.batch_size:
    print(f"--batch_size={FLAGS.batch_size} is more than the corpus's {corpus.n_sentences} "
          f"sentences: batches of {batch_size}", file=sys.stderr)
  saes = shared_flags.load_saes(setup, layers, corpus.sentences[langs[0]][:16])
  from sae import random_saes
  for note in random_saes.notes(setup, saes):
    print(note, file=sys.stderr)
  print(f"devices: {devices}; corpus: {corpus.name} ({corpus.n_sentences} sentences x "
        f"{len(langs)} languages); SAEs: {saes.description}", file=sys.stderr)

  result = analysis.analyze(setup, saes, corpus, settings, show_progress=FLAGS.progress,
                            run_config=cli.resolved_flags())
  for warning in result.warnings():
    print(warning, file=sys.stderr)
  paths = result.write(out)
  print(result.markdown())
  print("wrote " + ", ".join(str(p) for p in paths.values()))
  print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
