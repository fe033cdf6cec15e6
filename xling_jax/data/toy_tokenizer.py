"""A small SentencePiece tokenizer trained on the fly, for the toy model (vocab 512) and the no-download demo.

The real Gemma tokenizer is a 4 MB download; the embedded default run of `bin.analyze` and the tests
need a tokenizer whose ids fit the toy model's 512-row embedding. `toy_tokenizer()` trains one
deterministically (BPE, one thread, no sampling or shuffling, Gemma's normalisation: identity, no dummy
prefix, whitespace kept) with Gemma's special ids (pad 0, eos 1, bos 2, unk 3) and byte fallback, so
text in any script encodes (characters outside the training text fall back to their UTF-8 bytes).

Byte fallback costs 256 pieces, and `character_coverage=1.0` makes every distinct character of the
training text a piece of its own, so covering every character needs
4 specials + 256 bytes + distinct characters (`full_coverage_vocab_size`). When the text has more
distinct characters than that leaves room for (the embedded 10-language sample has ~460, most of them
CJK), only the most frequent ones become pieces, keeping a quarter of the spare room (at most 64) for
merges; the rest are cut out of the training text (the text is split there, so no false neighbours
are learnt) and encode as their UTF-8 bytes. Round trips stay exact either way. The smallest vocab
accepted is 4 + 256 + 1 (`MIN_VOCAB_SIZE`); anything smaller fails with a message saying so.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

from xling_jax.data.tokenizer import Tokenizer, TokenizerError

N_SPECIAL = 4  # pad, eos, bos, unk
N_BYTES = 256
_FORMAT_VERSION = 1  # bump when the training recipe changes, to invalidate cached models


def default_sentences() -> tuple[str, ...]:
  """Every line of the embedded 10-language sample: the text the default demo analyses."""
  from xling_jax.data.corpora import embedded_sample
  corpus = embedded_sample()
  return tuple(line for lang in corpus.languages for line in corpus.sentences[lang])


def _trainer_options(vocab_size: int, max_sentence_bytes: int) -> dict:
  return dict(
      # hard_vocab_limit=False: vocab_size is an upper bound, so a tiny training text still trains
      # (fewer merges) instead of failing; ids always stay below vocab_size.
      model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
      byte_fallback=True, character_coverage=1.0, split_digits=True,
      # Gemma's normaliser: text is kept as is, spaces become '▁', no dummy prefix.
      normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True,
      # Determinism: one thread, every sentence used, in order.
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
      max_sentence_length=max(4192, max_sentence_bytes + 1),
      minloglevel=2)


MIN_VOCAB_SIZE = N_SPECIAL + N_BYTES + 1
_MAX_MERGE_RESERVE = 64
_WS = "\u2581"  # SentencePiece's whitespace marker: spaces count as this character


def _char_counts(sentences: Sequence[str]) -> dict[str, int]:
  counts: dict[str, int] = {}
  for s in sentences:
    for c in s.replace(" ", _WS):
      counts[c] = counts.get(c, 0) + 1
  return counts


def full_coverage_vocab_size(sentences: Sequence[str]) -> int:
  """The smallest vocab_size at which every character of `sentences` gets its own piece."""
  return N_SPECIAL + N_BYTES + len(_char_counts(sentences))


def kept_characters(sentences: Sequence[str], vocab_size: int) -> set[str]:
  """The characters that become pieces; the others are left to byte fallback. Deterministic."""
  counts = _char_counts(sentences)
  room = vocab_size - N_SPECIAL - N_BYTES
  if len(counts) <= room:
    return set(counts)
  keep = room - min(_MAX_MERGE_RESERVE, room // 4)
  ranked = sorted(counts, key=lambda c: (-counts[c], c))  # most frequent first, ties by code point
  return set(ranked[:keep])


def _training_text(sentences: list[str], keep: set[str]) -> list[str]:
  """Sentences split at (and without) the characters outside `keep`."""
  out = []
  for s in sentences:
    piece = []
    for c in s:
      if (_WS if c == " " else c) in keep:
        piece.append(c)
      elif piece:
        out.append("".join(piece))
        piece = []
    if piece:
      out.append("".join(piece))
  return out


def _check_sentences(sentences) -> list[str]:
  if isinstance(sentences, (str, bytes)):
    raise TypeError("sentences must be a list of str, not a single string")
  sentences = list(sentences)
  for i, s in enumerate(sentences):
    if not isinstance(s, str):
      raise TypeError(f"sentences[{i}] is {type(s).__name__}, expected str")
  sentences = [s for s in sentences if s]
  if not sentences:
    raise ValueError("build_toy_tokenizer needs at least one non-empty sentence")
  return sentences


def build_toy_tokenizer(sentences: Sequence[str], vocab_size: int, out_path: str | Path) -> Path:
  """Train a BPE SentencePiece model on `sentences` and write it to `out_path` (a `.model` file).

  `vocab_size` is an upper bound: a short text may not yield enough merges to fill it, and the model
  then has fewer pieces (every id is still < vocab_size, which is what the toy embedding needs).
  Deterministic: the same sentences and vocab_size give a byte-identical file. The write is atomic
  (temp file + rename), so concurrent builders never see a half-written model. Returns `out_path`.
  Characters that do not fit (see the module docstring) are left to byte fallback.
  Raises ValueError when `vocab_size` < `MIN_VOCAB_SIZE` (4 specials + 256 byte pieces + 1 character).
  """
  import sentencepiece as spm

  sentences = _check_sentences(sentences)
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
    raise ValueError(
        f"vocab_size={vocab_size!r} is too small: byte fallback needs {N_SPECIAL} specials + {N_BYTES} "
        f"byte pieces + at least one character, so vocab_size must be >= {MIN_VOCAB_SIZE} "
        f"(>= {full_coverage_vocab_size(sentences)} to give every character of this text its own piece)")
  keep = kept_characters(sentences, vocab_size)
  sentences = _training_text(sentences, keep)
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  max_bytes = max(len(s.encode("utf-8")) for s in sentences)
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf,
                                   **_trainer_options(vocab_size, max_bytes))
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training for {out_path} failed (vocab_size={vocab_size}): {e}") from None
  fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(buf.getvalue())
    os.replace(tmp, out_path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return out_path


def cache_dir() -> Path:
  """Where toy tokenizers are cached: toy_tokenizer/ in the user cache (`weights_package.cache_dir`:
  $XLING_CACHE_DIR, else ~/.cache/xling-jax). Not a folder named like the package in the
  temporary directory: Python would import it as `xling_jax` for tools started from there."""
  from xling_jax.checkpoints.weights_package import cache_dir as user_cache
  return user_cache() / "toy_tokenizer"


def toy_tokenizer(vocab_size: int = 512, sentences: Sequence[str] | None = None) -> Tokenizer:
  """The toy tokenizer for `sentences` (default: `default_sentences()`), built once and cached by content hash."""
  import sentencepiece as spm

  sentences = _check_sentences(default_sentences() if sentences is None else sentences)
  key = json.dumps({"v": _FORMAT_VERSION, "spm": spm.__version__, "vocab_size": vocab_size,
                    "sentences": sentences}, ensure_ascii=False)
  digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
  path = cache_dir() / f"toy-v{vocab_size}-{digest}.model"
  if path.is_file():
    try:
      tok = Tokenizer.load(path)
      if tok.vocab_size <= vocab_size:
        return tok
    except TokenizerError:
      pass  # a damaged cache entry: rebuild it below
  build_toy_tokenizer(sentences, vocab_size, path)
  return Tokenizer.load(path)
