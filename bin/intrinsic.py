"""python -m bin.intrinsic: what each language costs the model before any SAE.

Per language of a parallel corpus: tokenisation cost (tokens per sentence, bytes and characters
per token) over every sentence, and the model's bits per character, per sentence and per token
(every token of each sentence scored after BOS) over the first --bpc_sentences sentences.
Definitions: xling_jax/intrinsic.py. For Gemma 3 270M on FLORES:

  python -m bin.intrinsic --checkpoint=gemma3-270m --corpus=/data/flores200 --out=out/intrinsic

Writes to --out: intrinsic.json (every number, with the flags and the model), intrinsic.csv (a
row per language) and intrinsic.md.
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
shared_flags.define_corpus_flags(max_len=None)
shared_flags.define_batch_flag(8, "sentences")
shared_flags.define_output_flags("intrinsic_out")
flags.adopt_module_key_flags(shared_flags)  # --help lists the shared flags too
flags.DEFINE_integer("bpc_sentences", None,
                     "Score only the first N sentences per language for bits per character "
                     "(the full-vocabulary log-likelihood of every token is the costly part). "
                     "Default: every sentence. 0 skips the model.", lower_bound=0)


def main(argv):
  from xling_jax.data.languages import validate_languages
  langs = validate_languages(FLAGS.langs)
  out = cli.check_out()
  start = time.perf_counter()
  from xling_jax.analysis import intrinsic
  from xling_jax.data import corpora
  from xling_jax.model import presets
  from xling_jax.runtime import io
  corpus = corpora.load_corpus(FLAGS.corpus, langs, FLAGS.max_sentences)
  devices = shared_flags.setup_platform()
  setup = shared_flags.load_model()
  if setup.is_toy:
    print(presets.toy_note(setup.config), file=sys.stderr)
  n_bits = corpus.n_sentences if FLAGS.bpc_sentences is None else min(FLAGS.bpc_sentences,
                                                                        corpus.n_sentences)
  print(f"devices: {devices}; corpus: {corpus.name} ({corpus.n_sentences} sentences x "
        f"{len(langs)} languages; bits over {n_bits})", file=sys.stderr)
  cost = intrinsic.tokenization_cost(setup.tokenizer, corpus.sentences)
  bits = None
  if n_bits:
    bits = intrinsic.bits_per_char(
        setup.params, setup.config, setup.tokenizer,
        {lang: corpus.sentences[lang][:n_bits] for lang in langs},
        batch_size=FLAGS.batch_size, mesh=setup.mesh, show_progress=FLAGS.progress)
  record = {**intrinsic.record(corpus, cost, bits, n_bits), "toy": setup.is_toy,
            "provenance": setup.provenance, "devices": devices,
            "flags": cli.resolved_flags(), "seconds": round(time.perf_counter() - start, 2)}
  md = intrinsic.markdown(record)
  io.write_set(out, {intrinsic.RECORD_NAME: io.json_text(record),
                     "intrinsic.csv": intrinsic.csv_text(record), "intrinsic.md": md})
  print(md)
  print(f"wrote {out}/{intrinsic.RECORD_NAME}, intrinsic.csv, intrinsic.md")


if __name__ == "__main__":
  cli.run(main)
