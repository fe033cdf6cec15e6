"""What a language costs the model before any SAE: tokenisation cost and bits per character, and
their record, table (markdown) and CSV (what `bin.intrinsic` writes).

Definitions (per language, over the sentences given; a parallel corpus makes them comparable):
  tokens_per_sentence = mean over sentences of len(encode(s)) (no BOS);
  bytes_per_token     = sum UTF-8 bytes / sum tokens;
  chars_per_token     = sum characters (code points) / sum tokens;
  bits_per_char       = -sum_s log2 p(s | BOS) / sum characters, every token of s scored;
  bits_per_sentence   = -sum_s log2 p(s | BOS) / sentences: on parallel text the same content in
                        every language, so it compares languages without favouring any script.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Mapping, Sequence

from xling_jax.data.corpora import ParallelCorpus
from xling_jax.evaluation import scoring
from xling_jax.runtime.progress import Progress

RECORD_NAME = "intrinsic.json"  # bin.intrinsic's record, which the study reads
COLUMNS = ("tokens_per_sentence", "bytes_per_token", "chars_per_token", "bits_per_char",
           "bits_per_sentence", "bits_per_token")


def tokenization_cost(tokenizer, texts_by_lang: Mapping[str, Sequence[str]]) -> dict[str, dict]:
  """{lang: {sentences, tokens, chars, bytes, tokens_per_sentence, bytes_per_token,
  chars_per_token}}."""
  out = {}
  for lang, texts in texts_by_lang.items():
    if not texts:
      raise ValueError(f"{lang!r}: no sentences")
    tokens = sum(len(tokenizer.encode(t)) for t in texts)
    chars = sum(len(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    out[lang] = {"sentences": len(texts), "tokens": tokens, "chars": chars, "bytes": n_bytes,
                 "tokens_per_sentence": tokens / len(texts),
                 "bytes_per_token": n_bytes / max(tokens, 1),
                 "chars_per_token": chars / max(tokens, 1)}
  return out


def sentence_items(tokenizer, texts: Sequence[str]) -> list[scoring.EncodedItem]:
  """Each sentence as a one-choice item: context BOS, continuation every token of the sentence."""
  bos = tokenizer.encode("", add_bos=True)
  return [scoring.EncodedItem(tuple(bos), (tuple(tokenizer.encode(t)),)) for t in texts]


def bits_per_char(params, config, tokenizer, texts_by_lang: Mapping[str, Sequence[str]], *,
                  batch_size: int = 8, mesh=None, show_progress: bool = True,
                  hook=None) -> dict[str, dict]:
  """{lang: {sentences, chars, tokens, nats, bits_per_char, bits_per_sentence,
  bits_per_token}} under the model (through `hook`, an adapter, when given; see the module
  docstring). Sentences longer than the model's context are an error, never silently cut."""
  total = sum(len(v) for v in texts_by_lang.values())
  progress = Progress(total, "bits per character", enabled=show_progress)
  out = {}
  for lang, texts in texts_by_lang.items():
    progress.label = f"bits per character [{lang}]"
    items = sentence_items(tokenizer, texts)
    result = scoring.score(params, config, items, batch_size=batch_size, mesh=mesh,
                           on_batch=progress.update, hook=hook)
    if result.too_long:
      raise ValueError(f"{lang!r}: sentence {result.too_long[0] + 1} is longer than the model's "
                       f"{config.max_seq_len} tokens")
    nats = -sum(ll[0] for ll in result.loglikelihoods)
    if not math.isfinite(nats):
      raise FloatingPointError(f"{lang!r}: the log-likelihood is not finite (damaged weights?)")
    chars = sum(len(t) for t in texts)
    tokens = sum(len(it.continuations[0]) for it in items)
    bits = nats / math.log(2)
    out[lang] = {"sentences": len(texts), "chars": chars, "tokens": tokens, "nats": nats,
                 "bits_per_char": bits / chars, "bits_per_sentence": bits / len(texts),
                 "bits_per_token": bits / tokens}
  return out


def record(corpus: ParallelCorpus, tokenization: dict[str, dict], bits: dict[str, dict] | None,
           bits_sentences: int) -> dict:
  """The numbers of one run: `tokenization_cost` over every sentence of `corpus`, and
  `bits_per_char` (None: not scored) over its first `bits_sentences`."""
  return {"languages": list(corpus.languages), "corpus": corpus.name,
          "corpus_source": corpus.source, "tokenization_sentences": corpus.n_sentences,
          "bits_sentences": bits_sentences, "tokenization": tokenization, "bits": bits}


def rows(record: dict) -> list[dict]:
  """One row per language: its tokenisation cost and, where scored, its bits."""
  out = []
  for lang in record["languages"]:
    row = {"language": lang, **{k: record["tokenization"][lang][k] for k in COLUMNS[:3]}}
    bits = (record["bits"] or {}).get(lang)
    row.update({k: bits[k] if bits else None for k in COLUMNS[3:]})
    out.append(row)
  return out


def markdown(record: dict) -> str:
  head = "| language | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |"
  lines = [f"# Tokenisation cost and bits per character ({record['corpus']})", "",
           f"Tokenisation over {record['tokenization_sentences']} sentences per language; bits "
           f"over the first {record['bits_sentences']} (every token after BOS scored).", "",
           head, "|" + "---|" * (len(COLUMNS) + 1)]
  for row in rows(record):
    cells = ["-" if row[c] is None else f"{row[c]:.3f}" for c in COLUMNS]
    lines.append(f"| {row['language']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def csv_text(record: dict) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["language", *COLUMNS], lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows(record))
  return buf.getvalue()
