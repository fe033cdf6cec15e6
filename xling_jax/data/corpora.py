"""Parallel corpora per language: sentence i has the same meaning in every language.

Three sources, one entry point (`load_corpus`):
- "embedded": a small sample in the 10 study languages shipped in `xling_jax/assets/` (no download);
- a directory of `{lang}.txt` files, one sentence per line;
- "hf:<dataset_id>[:split]": a Hugging Face dataset in the FLORES+ layout, from the hub or a local path.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from xling_jax.data.languages import LANGUAGES, STUDY_LANGUAGES, validate_languages
from xling_jax.runtime import hub, validate

EMBEDDED = "embedded"
HF_PREFIX = "hf:"
EMBEDDED_ASSET = "assets/parallel_sample.json"
FLORES_PLUS_SPLIT = "devtest"

# A per-language setting: one value for every language, a {lang: value} mapping, or a function of the code.
PerLanguage = str | None | Mapping[str, str] | Callable[[str], str | None]


@dataclass(frozen=True)
class ParallelCorpus:
  """Sentences per language, aligned by position; checked on construction, read-only after it."""
  name: str
  languages: tuple[str, ...]
  sentences: Mapping[str, tuple[str, ...]]
  source: str  # provenance: where the text came from and under which terms

  def __post_init__(self):
    languages = validate_languages(self.languages)
    if set(self.sentences) != set(languages):
      raise ValueError(f"{self.name}: sentences are given for {sorted(self.sentences)}, "
                       f"but the corpus languages are {list(languages)}")
    sentences = MappingProxyType({lang: tuple(self.sentences[lang]) for lang in languages})
    counts = {lang: len(texts) for lang, texts in sentences.items()}
    if len(set(counts.values())) > 1:
      listed = ", ".join(f"{lang}={n}" for lang, n in counts.items())
      raise ValueError(f"{self.name}: languages have different numbers of sentences ({listed}); "
                       "line i must be the same sentence in every language")
    if not counts[languages[0]]:
      raise ValueError(f"{self.name}: the corpus has no sentences")
    for lang, texts in sentences.items():
      for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
          raise ValueError(f"{self.name}: sentence {i + 1} of {lang!r} is empty or not text: {text!r}")
    object.__setattr__(self, "languages", languages)
    object.__setattr__(self, "sentences", sentences)

  @property
  def n_sentences(self) -> int:
    return len(self.sentences[self.languages[0]])

  def subset(self, langs: Iterable[str] | str) -> ParallelCorpus:
    """The same sentences in `langs` only, in that order."""
    langs = validate_languages(langs)
    absent = [lang for lang in langs if lang not in self.sentences]
    if absent:
      raise ValueError(f"corpus {self.name} has no {', '.join(map(repr, absent))}; it holds "
                       f"{', '.join(self.languages)} (other languages: a directory of "
                       "{lang}.txt files)")
    return ParallelCorpus(self.name, langs, {lang: self.sentences[lang] for lang in langs}, self.source)

  def head(self, n: int) -> ParallelCorpus:
    """The first n parallel lines (all of them when the corpus is shorter)."""
    _check_positive(n, "head")
    if n >= self.n_sentences:
      return self
    return self._take(range(n), f"first {n} of {self.n_sentences} sentences")

  def lines(self, start: int, n: int | None = None) -> ParallelCorpus:
    """Lines start .. start + n - 1 (to the end when n is None or runs past it)."""
    if not isinstance(start, int) or start < 0 or start >= self.n_sentences:
      raise ValueError(f"{self.name}: no line {start} in a corpus of {self.n_sentences} lines")
    stop = self.n_sentences if n is None else min(start + n, self.n_sentences)
    if start == 0 and stop == self.n_sentences:
      return self
    return self._take(range(start, stop), f"lines {start}-{stop - 1} of {self.n_sentences}")

  def sample(self, n: int, seed: int) -> ParallelCorpus:
    """n parallel lines drawn without replacement, kept in corpus order; the same seed gives the same lines."""
    _check_positive(n, "sample")
    if n > self.n_sentences:
      raise ValueError(f"{self.name}: cannot sample {n} of {self.n_sentences} sentences")
    rows = sorted(random.Random(seed).sample(range(self.n_sentences), n))
    return self._take(rows, f"{n} of {self.n_sentences} sentences sampled with seed {seed}")

  def _take(self, rows: Iterable[int], note: str) -> ParallelCorpus:
    rows = tuple(rows)
    sentences = {lang: tuple(texts[i] for i in rows) for lang, texts in self.sentences.items()}
    return ParallelCorpus(self.name, self.languages, sentences, f"{self.source}; {note}")


def _check_positive(n: int, what: str) -> None:
  if not isinstance(n, int) or n < 1:
    raise ValueError(f"{what}: the number of sentences must be a positive integer, got {n!r}")


# --- (a) a directory of {lang}.txt -----------------------------------------------------------------


def load_text_dir(path: str | os.PathLike, langs: Iterable[str] | str = STUDY_LANGUAGES) -> ParallelCorpus:
  """`{path}/{lang}.txt` for each language: UTF-8, one sentence per line, line i aligned across files."""
  langs = validate_languages(langs)
  root = Path(path)
  if not root.is_dir():
    raise FileNotFoundError(f"corpus directory {root} does not exist (a corpus is {EMBEDDED!r}, "
                            f"'{HF_PREFIX}<dataset_id>' or a directory of {{lang}}.txt files)")
  missing = [f"{lang}.txt" for lang in langs if not (root / f"{lang}.txt").is_file()]
  if missing:
    present = sorted(p.name for p in root.glob("*.txt")) or ["no .txt files"]
    raise FileNotFoundError(f"{root}: missing {', '.join(missing)}; the directory has {', '.join(present)}")
  sentences = {lang: _read_lines(root / f"{lang}.txt") for lang in langs}
  return ParallelCorpus(str(path), langs, sentences, f"text directory {root.resolve()}")


def _read_lines(file: Path) -> tuple[str, ...]:
  try:
    text = file.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{file}: not valid UTF-8 at byte offset {e.start} ({e.reason})") from None
  text = text.removeprefix("\ufeff")
  if not text.strip():
    raise ValueError(f"{file} is empty")
  # Split on "\n" only: str.splitlines would also break at U+2028 and friends inside a sentence.
  lines = text.split("\n")
  if lines[-1] == "":  # the file's final newline ends the last line; it does not start a new one
    lines.pop()
  stripped = tuple(line.strip() for line in lines)
  for number, line in enumerate(stripped, start=1):
    if not line:
      raise ValueError(f"{file}, line {number}: empty line (every line must hold the sentence aligned "
                       "with the same line of the other languages)")
  return stripped


# --- (b) a Hugging Face dataset ------------------------------------------------------------------


class CorpusError(ValueError):
  """A corpus could not be read."""


def flores_plus_config(lang: str) -> str:
  """The FLORES+ config name of a study language (one config per language, e.g. `eng_Latn`)."""
  if lang not in LANGUAGES:
    raise CorpusError(f"no FLORES+ config is known for {lang!r} (only for {', '.join(LANGUAGES)}); "
                      "pass config_for_lang, or use a directory of {lang}.txt files")
  return LANGUAGES[lang].flores_plus


def load_hf_dataset(dataset_id: str | os.PathLike, langs: Iterable[str] | str = STUDY_LANGUAGES, *,
                    split: str = FLORES_PLUS_SPLIT, config_for_lang: PerLanguage = flores_plus_config,
                    column: PerLanguage = "text") -> ParallelCorpus:
  """A parallel corpus from a Hugging Face dataset on the hub or on disk.

  The defaults read FLORES+ (`openlanguagedata/flores_plus`: one config per language, column `text`,
  splits `dev` and `devtest`; gated: accept its terms on the hub and log in first). Other layouts:
  - `config_for_lang=None` and `column=lambda lang: lang` for one table with a column per language;
  - `config_for_lang` / `column` as a `{lang: name}` mapping for arbitrary names.
  `dataset_id` may be a local directory: a `save_to_disk` folder (a Dataset, or a DatasetDict from which
  `split` is taken), or one such folder per config under it (`{dataset_id}/{config}`); any other
  directory goes to `datasets.load_dataset` (data files). Rows must be in the same order in every language.
  """
  langs = validate_languages(langs)
  if not Path(dataset_id).is_dir():  # fail in a second offline, not after datasets' retries
    hub.check_reachable(str(dataset_id), f"corpus {HF_PREFIX}{dataset_id} (no such local path)",
                        repo_type="dataset")
  tables = {}  # per config: a dataset with one config for every language is read once
  sentences = {}
  for lang in langs:
    config = _per_language(config_for_lang, lang, "config_for_lang")
    if config not in tables:
      tables[config] = _open_split(str(dataset_id), config, split)
    table, col = tables[config], _per_language(column, lang, "column")
    where = f"{dataset_id} (config {config}, split {split})"
    if col not in table.column_names:
      raise ValueError(f"{where} has no column {col!r} for {lang!r}; its columns: {table.column_names}")
    texts = list(table[col])
    for i, text in enumerate(texts):
      if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}, column {col!r}, row {i}: empty or not text: {text!r}")
    sentences[lang] = tuple(text.strip() for text in texts)
  name = f"{HF_PREFIX}{dataset_id}:{split}"
  return ParallelCorpus(name, langs, sentences, f"Hugging Face dataset {dataset_id}, split {split}")


def _per_language(value: PerLanguage, lang: str, what: str) -> str | None:
  if callable(value):
    return value(lang)
  if isinstance(value, Mapping):
    if lang not in value:
      raise ValueError(f"{what} has no entry for {lang!r}; it maps {', '.join(sorted(value))}")
    return value[lang]
  return value


def _open_split(dataset_id: str, config: str | None, split: str):
  import datasets  # imported here, not at module level: it is slow to import and only this route needs it

  local = Path(dataset_id)
  if local.is_dir():
    saved = local / config if config and (local / config).is_dir() else local
    if (saved / "dataset_dict.json").is_file() or (saved / "state.json").is_file():
      loaded = datasets.load_from_disk(str(saved))
      if not isinstance(loaded, datasets.DatasetDict):
        return loaded  # a saved Dataset is a single split already
      if split not in loaded:
        raise ValueError(f"{saved} has no split {split!r}; its splits: {', '.join(loaded)}")
      return loaded[split]
  try:
    return datasets.load_dataset(dataset_id, config, split=split)
  except Exception as e:  # say which language's config failed; the cause stays attached
    raise CorpusError(f"could not load Hugging Face dataset {dataset_id!r} (config {config!r}, "
                      f"split {split!r}): {type(e).__name__}: {e}") from e


# --- (c) the embedded sample ---------------------------------------------------------------------


def embedded_sample() -> ParallelCorpus:
  """The sample shipped with the package: original sentences written for xling-jax (CC0), 10 languages."""
  data = json.loads(resources.files("xling_jax").joinpath(EMBEDDED_ASSET).read_text(encoding="utf-8"))
  langs = tuple(data["languages"])
  sentences = {lang: tuple(record[lang] for record in data["sentences"]) for lang in langs}
  return ParallelCorpus(EMBEDDED, langs, sentences, f"xling_jax/{EMBEDDED_ASSET} ({data['license']}): "
                        f"{data['provenance']}")


# --- one entry point -----------------------------------------------------------------------------


def load_corpus(spec: str | os.PathLike = EMBEDDED, langs: Iterable[str] | str = STUDY_LANGUAGES,
                max_sentences: int | None = None) -> ParallelCorpus:
  """`spec` is "embedded", "hf:<dataset_id>[:split]" (FLORES+ layout, default split devtest) or a
  directory; `langs` language codes (one string may list them comma-separated)."""
  spec = os.fspath(validate.value(spec, str | os.PathLike, "load_corpus: spec"))
  langs = validate_languages(langs)
  max_sentences = validate.value(max_sentences, int | None, "load_corpus: max_sentences")
  validate.at_least(max_sentences, 1, "load_corpus: max_sentences")
  if spec == EMBEDDED:
    corpus = embedded_sample().subset(langs)
  elif spec.startswith(HF_PREFIX):
    dataset_id, split = _parse_hf_spec(spec)
    corpus = load_hf_dataset(dataset_id, langs, split=split)
  else:
    corpus = load_text_dir(spec, langs)
  return corpus if max_sentences is None else corpus.head(max_sentences)


def _parse_hf_spec(spec: str) -> tuple[str, str]:
  body = spec[len(HF_PREFIX):]
  # A hub id has no ":", so a trailing ":name" without a path separator is the split.
  dataset_id, sep, split = body.rpartition(":")
  if not sep or not dataset_id or "/" in split or "\\" in split:
    dataset_id, split = body, FLORES_PLUS_SPLIT
  if not dataset_id or not split:
    raise ValueError(f"corpus {spec!r}: expected '{HF_PREFIX}<dataset_id>' or '{HF_PREFIX}<dataset_id>:<split>'")
  return dataset_id, split
