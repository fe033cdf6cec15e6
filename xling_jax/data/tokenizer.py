"""Gemma's tokenizer: a SentencePiece `tokenizer.model`, an HF `tokenizer.json` or the vocabulary of a
GGUF checkpoint, with explicit BOS rules.

BOS policy (Gemma convention):
  * `encode_batch` prepends BOS by default (`add_bos=True`): Gemma Scope SAEs were trained on
    activations of BOS-prefixed text, so every analysis batch starts with BOS.
  * `encode` does NOT prepend BOS by default: log-likelihood scoring tokenises context and
    continuation separately and adds the single BOS itself.
BOS, when added, is always the first real token of a row: position 0 with right padding,
position `T - length` with left padding.

Padding: rows are padded with `pad_id` to a common width T that is the smallest multiple of `bucket`
holding the longest row (so `jax.jit` sees few distinct shapes), capped at `max_len`. `mask` is 1 on
real tokens (BOS included) and 0 on padding. Rows longer than `max_len` keep their first `max_len`
tokens (BOS survives); they are listed in `EncodedBatch.truncated` and a `TruncationWarning` is emitted,
so truncation is never silent.

Special ids are read from the model file (Gemma: pad 0, eos 1, bos 2, unk 3). A model without a pad piece
gets `pad_id = 0` as the fill value (documented fallback: padding is identified by `mask`, never by
the id). A model without BOS has `bos_id = None`, and asking for BOS then raises.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SPM_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
PAD_FALLBACK_ID = 0
_PAD_SIDES = ("left", "right")
# Token strings tried (in order) when a tokenizer.json has no tokenizer_config.json naming them.
_HF_SPECIAL_CANDIDATES = {
    "pad": ("<pad>", "[PAD]"),
    "eos": ("<eos>", "</s>", "<|endoftext|>"),
    "bos": ("<bos>", "<s>"),
    "unk": ("<unk>", "[UNK]"),
}


class TokenizerError(ValueError):
  """A tokenizer file is unreadable, or a request cannot be honoured (e.g. BOS on a model without one)."""


class TruncationWarning(UserWarning):
  """Some rows of a batch were longer than `max_len` and were cut."""


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedBatch:
  """A padded batch. `tokens`/`mask` are [B, T] int32, `lengths` [B] int32 (real tokens incl. BOS).

  `truncated` lists the row indices that were cut to `max_len` (empty when nothing was cut).
  """
  tokens: np.ndarray
  mask: np.ndarray
  lengths: np.ndarray
  truncated: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.tokens.shape)


def bucket_length(n: int, bucket: int | None, max_len: int | None = None) -> int:
  """Smallest multiple of `bucket` that is >= n, capped at `max_len`.

  `bucket` None or 1 means exactly n (still capped at `max_len`). Pure function, no side effects.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"length must be a non-negative int, got {n!r}")
  if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer))
                             or bucket < 1):
    raise ValueError(f"bucket must be None or an int >= 1, got {bucket!r}")
  if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
                              or max_len < 1):
    raise ValueError(f"max_len must be None or an int >= 1, got {max_len!r}")
  width = int(n) if bucket is None or bucket == 1 else int(math.ceil(n / bucket)) * int(bucket)
  if max_len is not None:
    width = min(width, int(max_len))
  return width


def _check_text(text: Any, where: str) -> str:
  if not isinstance(text, str):
    raise TypeError(f"{where}: expected str, got {type(text).__name__} ({text!r:.60})")
  return text


class _SpmBackend:
  kind = "sentencepiece"

  def __init__(self, path: Path, model_proto: bytes | None = None):
    import sentencepiece as spm
    try:
      self.sp = (spm.SentencePieceProcessor(model_file=str(path)) if model_proto is None
                 else spm.SentencePieceProcessor(model_proto=model_proto))
    except (RuntimeError, OSError) as e:
      raise TokenizerError(f"{path}: not a readable SentencePiece model ({e})") from None
    if self.sp.get_piece_size() == 0:
      raise TokenizerError(f"{path}: SentencePiece model has no pieces (empty or corrupt file)")
    sp = self.sp

    def opt(i: int) -> int | None:
      return i if i >= 0 else None

    self.vocab_size = sp.get_piece_size()
    self.bos_id, self.eos_id, self.unk_id = opt(sp.bos_id()), opt(sp.eos_id()), opt(sp.unk_id())
    self.pad_id = opt(sp.pad_id())

  def encode(self, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in self.sp.encode(texts, out_type=int)]

  def decode(self, ids: list[int]) -> str:
    # SentencePiece drops control pieces (pad/bos/eos) itself.
    return self.sp.decode(ids)


class _HfBackend:
  kind = "tokenizers"

  def __init__(self, path: Path):
    try:
      import tokenizers
    except ImportError as e:
      raise ImportError(
          f"loading {path} needs the `tokenizers` library: pip install tokenizers "
          "(it also comes with `transformers`)") from e
    try:
      self.tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
      raise TokenizerError(f"{path}: not a readable HF tokenizer.json ({e})") from None
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    if self.vocab_size == 0:
      raise TokenizerError(f"{path}: tokenizer.json has an empty vocabulary")
    names = self._configured_special_tokens(path.parent / HF_CONFIG_FILE)
    ids = {}
    for role, candidates in _HF_SPECIAL_CANDIDATES.items():
      tried = ([names[role]] if role in names else []) + list(candidates)
      ids[role] = next((i for i in map(self.tok.token_to_id, tried) if i is not None), None)
    self.pad_id, self.eos_id, self.bos_id, self.unk_id = ids["pad"], ids["eos"], ids["bos"], ids["unk"]
    # SentencePiece never decodes control pieces; strip the same ids here so both backends agree.
    self._control = {i for i in (self.pad_id, self.eos_id, self.bos_id) if i is not None}

  @staticmethod
  def _configured_special_tokens(config_path: Path) -> dict[str, str]:
    if not config_path.is_file():
      return {}
    try:
      cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      raise TokenizerError(f"{config_path}: unreadable tokenizer config ({e})") from None
    out = {}
    for role in _HF_SPECIAL_CANDIDATES:
      value = cfg.get(f"{role}_token")
      if isinstance(value, dict):
        value = value.get("content")
      if isinstance(value, str):
        out[role] = value
    return out

  def encode(self, texts: list[str]) -> list[list[int]]:
    # add_special_tokens=False: a Gemma tokenizer.json's post-processor would add BOS itself; we add it
    # (or not) explicitly so the policy is the same for both backends.
    return [list(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

  def decode(self, ids: list[int]) -> str:
    return self.tok.decode([i for i in ids if i not in self._control], skip_special_tokens=False)


def _gguf_model_proto(path: Path) -> bytes:
  from xling_jax.checkpoints.gguf_file import GGUFFile
  from xling_jax.runtime.errors import CheckpointError
  try:
    return GGUFFile(path).tokenizer_model_proto()
  except CheckpointError as e:
    raise TokenizerError(str(e)) from None


class Tokenizer:
  """Gemma tokenizer over SentencePiece (`tokenizer.model`) or HF `tokenizers` (`tokenizer.json`).

  Use `Tokenizer.load(path)`. See the module docstring for the BOS, padding and truncation rules.
  """

  def __init__(self, backend, path: Path):
    self._backend = backend
    self.path = path

  # ---- loading -------------------------------------------------------------------------------
  @classmethod
  def load(cls, path: str | Path) -> "Tokenizer":
    """Load a SentencePiece `.model`, an HF `tokenizer.json`, a directory holding either, or a
    `.gguf` checkpoint (its vocabulary as a SentencePiece model, see `gguf_file`).

    In a directory `tokenizer.model` is preferred over `tokenizer.json` (it is Gemma's reference).
    A file with another name is sniffed: JSON (first byte `{`) goes to `tokenizers`, anything else
    to SentencePiece.
    """
    path = Path(path).expanduser()
    if path.is_dir():
      for name in (SPM_FILE, HF_FILE):
        if (path / name).is_file():
          return cls.load(path / name)
      raise FileNotFoundError(
          f"{path}: directory holds neither {SPM_FILE} (SentencePiece) nor {HF_FILE} (HF tokenizers)")
    if not path.is_file():
      raise FileNotFoundError(
          f"{path}: no such tokenizer file (expected a SentencePiece {SPM_FILE}, an HF {HF_FILE}, "
          "or a directory holding one)")
    if path.suffix == ".gguf":
      return cls(_SpmBackend(path, _gguf_model_proto(path)), path)
    if path.suffix == ".json":
      is_json = True
    elif path.suffix == ".model":
      is_json = False
    else:
      with open(path, "rb") as f:
        is_json = f.read(4096).lstrip()[:1] == b"{"
    backend = _HfBackend(path) if is_json else _SpmBackend(path)
    return cls(backend, path)

  # ---- properties ----------------------------------------------------------------------------
  @property
  def kind(self) -> str:
    """'sentencepiece' or 'tokenizers'."""
    return self._backend.kind

  @property
  def vocab_size(self) -> int:
    return self._backend.vocab_size

  @property
  def bos_id(self) -> int | None:
    return self._backend.bos_id

  @property
  def eos_id(self) -> int | None:
    return self._backend.eos_id

  @property
  def unk_id(self) -> int | None:
    return self._backend.unk_id

  @property
  def pad_id(self) -> int:
    """The model's pad id; `PAD_FALLBACK_ID` (0) when the model defines none (padding is in `mask`)."""
    pad = self._backend.pad_id
    return PAD_FALLBACK_ID if pad is None else pad

  def __repr__(self) -> str:
    return (f"Tokenizer({str(self.path)!r}, kind={self.kind}, vocab_size={self.vocab_size}, "
            f"pad={self.pad_id}, eos={self.eos_id}, bos={self.bos_id})")

  # ---- encode / decode -----------------------------------------------------------------------
  def _bos(self) -> int:
    if self.bos_id is None:
      raise TokenizerError(f"{self.path}: this tokenizer has no BOS piece; pass add_bos=False")
    return self.bos_id

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Token ids of `text`. No BOS unless `add_bos` (scoring adds BOS once, itself)."""
    _check_text(text, "Tokenizer.encode")
    ids = self._backend.encode([text])[0]
    return [self._bos()] + ids if add_bos else ids

  def decode(self, ids) -> str:
    """Text of a 1-D id sequence (list, numpy or jax array). Pad/BOS/EOS ids decode to nothing."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
      raise ValueError(f"Tokenizer.decode: expected a 1-D id sequence, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
      raise TypeError(f"Tokenizer.decode: expected integer ids, got dtype {arr.dtype}")
    out = arr.astype(np.int64).tolist()
    bad = [i for i in out if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"Tokenizer.decode: ids {bad[:5]} outside [0, {self.vocab_size})")
    return self._backend.decode(out)

  def encode_batch(self, texts: Sequence[str], *, add_bos: bool = True, max_len: int | None = None,
                   bucket: int | None = 64, pad_side: str = "right") -> EncodedBatch:
    """Encode and pad a batch. See the module docstring for the BOS/padding/truncation rules.

    Raises ValueError for an empty list, or when every row is empty (all texts '' and no BOS),
    TypeError when `texts` is a str or holds a non-str.
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError("Tokenizer.encode_batch: expected a sequence of str, got a single "
                      f"{type(texts).__name__}; wrap it in a list")
    texts = list(texts)
    if not texts:
      raise ValueError("Tokenizer.encode_batch: empty list of texts")
    for i, t in enumerate(texts):
      _check_text(t, f"Tokenizer.encode_batch: texts[{i}]")
    if pad_side not in _PAD_SIDES:
      raise ValueError(f"pad_side must be one of {_PAD_SIDES}, got {pad_side!r}")
    bucket_length(0, bucket, max_len)  # validates bucket / max_len
    prefix = [self._bos()] if add_bos else []

    rows = [prefix + ids for ids in self._backend.encode(texts)]
    truncated = tuple(i for i, r in enumerate(rows) if max_len is not None and len(r) > max_len)
    if truncated:
      rows = [r[:max_len] for r in rows]
      shown = ", ".join(map(str, truncated[:10])) + (", ..." if len(truncated) > 10 else "")
      warnings.warn(
          f"encode_batch: {len(truncated)} of {len(rows)} rows were longer than max_len={max_len} and "
          f"were truncated (rows {shown}); see EncodedBatch.truncated", TruncationWarning, stacklevel=2)
    longest = max(len(r) for r in rows)
    if longest == 0:
      raise ValueError("Tokenizer.encode_batch: every text is empty and add_bos=False: nothing to encode")
    width = bucket_length(longest, bucket, max_len)

    batch = len(rows)
    tokens = np.full((batch, width), self.pad_id, dtype=np.int32)
    mask = np.zeros((batch, width), dtype=np.int32)
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    for b, r in enumerate(rows):
      n = len(r)
      if not n:
        continue
      sl = slice(0, n) if pad_side == "right" else slice(width - n, width)
      tokens[b, sl] = r
      mask[b, sl] = 1
    return EncodedBatch(tokens=tokens, mask=mask, lengths=lengths, truncated=truncated)
