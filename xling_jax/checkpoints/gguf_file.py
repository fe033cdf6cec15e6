"""Read a Gemma 2/3 GGUF checkpoint (llama.cpp's format): its config, tensors and tokenizer.

The header (metadata and tensor table) is parsed here with `struct`, not by `gguf.GGUFReader`,
which spends ~20 s building a numpy view per entry of the 262k-entry tokenizer arrays. Tensor data
stays in a read-only memory map; `get` dequantises one tensor at a time with `gguf.quants`, in
row chunks, so reading a checkpoint never holds more than one float32 tensor plus a chunk.

Layout conventions (see xling_jax/layout.py): GGUF lists a tensor's dims innermost first (`ne`);
`get` returns numpy order, reversed `ne`, which is HF's [out, in]. Gemma norm scales are stored as
1 + w (llama.cpp adds the 1); `get` returns them as stored.
"""
from __future__ import annotations

import dataclasses
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from xling_jax.checkpoints import hf_config
from xling_jax.checkpoints.stacked import read_params, resolve_sharding
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import Params
from xling_jax.runtime.errors import CheckpointError

ARCHITECTURES = ("gemma2", "gemma3")
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types: fixed-width scalars (struct format), 8 = string, 9 = array.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_FLOAT32, _STRING, _ARRAY = 6, 8, 9
# `get` dequantises at most this many values at a time: the numpy temporaries of a K-quant then
# stay in cache (1 MB of float32), which is both leaner and about 2x faster than whole tensors.
_CHUNK_VALUES = 1 << 18

# llama.cpp token types (tokenizer.ggml.token_type), the same numbers as SentencePiece's.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_SPM_BPE = 2  # TrainerSpec.ModelType.BPE


@dataclasses.dataclass(frozen=True)
class _TensorEntry:
  """One row of the tensor table: `shape` in numpy order, `offset` from the file start."""
  shape: tuple[int, ...]
  ggml_type: int
  offset: int
  nbytes: int


class _CorruptHeader(Exception):
  """The header holds something no GGUF writer produces (a bad type, invalid UTF-8)."""


def _utf8(raw: bytes) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _CorruptHeader(f"invalid UTF-8 in a string: {e}") from None


class _Cursor:
  """Reads little-endian GGUF values from a buffer; running off its end raises EOFError."""

  def __init__(self, buf, pos: int = 0):
    self.buf, self.pos, self.size = buf, pos, len(buf)

  def _take(self, n: int) -> int:
    start = self.pos
    if n < 0 or start + n > self.size:
      raise EOFError
    self.pos = start + n
    return start

  def scalar(self, fmt: str):
    return struct.unpack_from(fmt, self.buf, self._take(struct.calcsize(fmt)))[0]

  def string(self) -> str:
    n = self.scalar("<Q")
    start = self._take(n)
    return _utf8(self.buf[start:start + n])

  def value(self, value_type: int) -> Any:
    """A scalar, str, numpy array (numeric arrays) or list (string / nested arrays)."""
    if value_type == _FLOAT32:
      # The shortest decimal that rounds to this float32: 1e-06, not 9.99999997e-07.
      return float(str(np.float32(self.scalar("<f"))))
    if value_type in _SCALAR_FORMATS:
      return self.scalar(_SCALAR_FORMATS[value_type])
    if value_type == _STRING:
      return self.string()
    if value_type != _ARRAY:
      raise _CorruptHeader(f"unknown metadata value type {value_type}")
    item_type, count = self.scalar("<I"), self.scalar("<Q")
    if item_type in _SCALAR_FORMATS:
      dtype = np.dtype(_SCALAR_FORMATS[item_type])
      start = self._take(count * dtype.itemsize)
      return np.frombuffer(self.buf, dtype, count, start).copy()
    if item_type == _STRING:
      return self._strings(count)
    return [self.value(item_type) for _ in range(count)]

  def _strings(self, count: int) -> list[str]:
    # The hot loop of the header (262k tokenizer strings): inlined to stay well under a second.
    buf, pos, size, out = self.buf, self.pos, self.size, []
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(count):
      if pos + 8 > size:
        raise EOFError
      (n,) = unpack(buf, pos)
      pos += 8
      if pos + n > size:
        raise EOFError
      out.append(_utf8(buf[pos:pos + n]))
      pos += n
    self.pos = pos
    return out


def _gguf():
  try:
    import gguf
  except ImportError as e:
    raise ImportError("reading GGUF checkpoints needs the `gguf` package: pip install gguf "
                      "(or pip install -e '.[gemma3]')") from e
  return gguf


class GGUFFile:
  """A Gemma 2/3 GGUF checkpoint, memory-mapped; the constructor validates it (see `_open`)."""

  def __init__(self, path: str | Path):
    self.path = Path(path).expanduser()
    self._map, self.metadata, self._tensors = self._open()
    self.architecture: str = self.metadata["general.architecture"]

  def _error(self, what: str) -> CheckpointError:
    return CheckpointError(f"{self.path}: {what}")

  def _open(self) -> tuple[mmap.mmap, dict[str, Any], dict[str, _TensorEntry]]:
    """Map the file and parse its header. Raises CheckpointError for a missing or non-GGUF
    file, an unsupported version, a header or tensor data past the end of the file (truncated),
    or an architecture other than Gemma 2/3."""
    if not self.path.is_file():
      raise self._error("no such GGUF file")
    with open(self.path, "rb") as f:
      if f.read(4) != _MAGIC:
        raise self._error("not a GGUF file (it does not start with the GGUF magic bytes)")
      buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
      metadata, table, data_start = self._header(_Cursor(buf, 4))
    except EOFError:
      raise self._error("truncated GGUF: the header runs past the end of the file") from None
    except _CorruptHeader as e:
      raise self._error(f"corrupt GGUF header ({e})") from None
    architecture = metadata.get("general.architecture")
    if architecture == "gemma4":
      raise self._error("a Gemma 4 GGUF (architecture 'gemma4') is not supported; load the "
                        "model's HF safetensors checkpoint")
    if architecture not in ARCHITECTURES:
      raise self._error(f"a GGUF of architecture {architecture!r}, expected gemma2 or gemma3")
    return buf, metadata, self._tensor_entries(table, data_start, len(buf))

  def _header(self, cursor: _Cursor) -> tuple[dict[str, Any], list[tuple], int]:
    """(metadata, tensor table rows, offset of the tensor data) from just past the magic."""
    version = cursor.scalar("<I")
    if version not in _VERSIONS:
      raise self._error(f"GGUF version {version} (big-endian or unsupported); this reader "
                        f"handles little-endian versions {_VERSIONS}")
    n_tensors, n_kv = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
      key = cursor.string()
      metadata[key] = cursor.value(cursor.scalar("<I"))
    table = [self._table_row(cursor) for _ in range(n_tensors)]
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    return metadata, table, -(-cursor.pos // alignment) * alignment

  @staticmethod
  def _table_row(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string()
    ne = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
    ggml_type, offset = cursor.scalar("<I"), cursor.scalar("<Q")
    return name, tuple(reversed(ne)), ggml_type, offset

  def _tensor_entries(self, table, data_start: int, file_size: int) -> dict[str, _TensorEntry]:
    gguf = _gguf()
    entries = {}
    for name, shape, ggml_type, offset in table:
      try:
        block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
      except (ValueError, KeyError):
        raise self._error(f"tensor {name} has unknown ggml type {ggml_type}") from None
      nbytes = math.prod(shape) // block * block_bytes
      entry = _TensorEntry(shape, ggml_type, data_start + offset, nbytes)
      if entry.offset + nbytes > file_size:
        raise self._error(f"truncated GGUF: tensor {name} ends at byte {entry.offset + nbytes}, "
                          f"past the end of the {file_size}-byte file")
      entries[name] = entry
    return entries

  # ---- tensors -----------------------------------------------------------------------------
  def names(self) -> set[str]:
    return set(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    """A tensor's shape in numpy order (reversed GGUF `ne`; [out, in] for linear maps)."""
    return self._entry(name).shape

  def _entry(self, name: str) -> _TensorEntry:
    if name not in self._tensors:
      raise self._error(f"no tensor {name!r} (a {self.architecture} GGUF with "
                        f"{len(self._tensors)} tensors)")
    return self._tensors[name]

  def get(self, name: str, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Tensor `name` as a fresh float32 array in numpy order (norm scales as stored, 1 + w).

    Raises CheckpointError when it is absent, when its shape differs from `expected_shape`, or
    when `gguf` cannot dequantise its type.
    """
    entry = self._entry(name)
    if expected_shape is not None and tuple(expected_shape) != entry.shape:
      raise self._error(f"tensor {name} has shape {entry.shape}, expected "
                        f"{tuple(expected_shape)}")
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType(entry.ggml_type)
    row = entry.shape[-1] if entry.shape else 1
    out = np.empty(entry.shape, np.float32)
    flat_out = out.reshape(-1, row)
    raw = np.frombuffer(self._map, np.uint8, entry.nbytes, entry.offset)
    raw = raw.reshape(flat_out.shape[0], -1)
    step = max(1, _CHUNK_VALUES // row)
    try:
      for start in range(0, flat_out.shape[0], step):
        flat_out[start:start + step] = gguf.quants.dequantize(raw[start:start + step], qtype)
    except NotImplementedError:
      raise self._error(f"tensor {name} is stored as {qtype.name}, which the installed gguf "
                        "cannot dequantise") from None
    return out

  # ---- config ------------------------------------------------------------------------------
  def _meta(self, key: str, default: Any = None) -> Any:
    return self.metadata.get(f"{self.architecture}.{key}", default)

  def hf_config(self) -> dict[str, Any]:
    """An HF config.json-style dict (for `hf_config.config_from_hf`).

    llama.cpp's Gemma GGUFs omit the local RoPE base, the sliding/global layer pattern, RoPE
    scaling and the query scalar. Those the file does state (`rope.freq_base_swa`,
    `attention.sliding_window_pattern`, `rope.scaling.*`) are used; the rest come from the
    preset of the same family, depth and width, or, without one, are left out so HF's family
    defaults apply (as in transformers' GGUF loader).
    """
    hf: dict[str, Any] = {"model_type": "gemma3_text" if self.architecture == "gemma3"
                          else "gemma2"}
    for gguf_key, hf_key in (
        ("block_count", "num_hidden_layers"), ("embedding_length", "hidden_size"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("attention.key_length", "head_dim"),
        ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
        ("context_length", "max_position_embeddings"),
        ("attention.sliding_window", "sliding_window"), ("rope.freq_base", "rope_theta"),
        ("attn_logit_softcapping", "attn_logit_softcapping"),
        ("final_logit_softcapping", "final_logit_softcapping")):
      value = self._meta(gguf_key)
      if value is not None:
        hf[hf_key] = value
    embed = self._tensors.get("token_embd.weight")
    tokens = self.metadata.get("tokenizer.ggml.tokens")
    if embed is not None or tokens is not None:
      hf["vocab_size"] = embed.shape[0] if embed is not None else len(tokens)
    for ours, hf_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                         ("padding", "pad_token_id")):
      value = self.metadata.get(f"tokenizer.ggml.{ours}_token_id")
      if value is not None:
        hf[hf_key] = value
    hf["tie_word_embeddings"] = "output.weight" not in self._tensors
    hf.update(self._preset_extras(hf))
    hf.update(self._stated_extras())
    return hf

  def _preset_extras(self, hf: dict[str, Any]) -> dict[str, Any]:
    """What GGUF omits, from the preset of the same family, depth and width ({} if none)."""
    from xling_jax.model.presets import PRESETS
    for make in PRESETS.values():
      preset = make()
      if (preset.family, preset.n_layers, preset.d_model) == (
          self.architecture, hf.get("num_hidden_layers"), hf.get("hidden_size")):
        break
    else:
      return {}
    ref = hf_config.config_to_hf(preset)
    keys = ["query_pre_attn_scalar", "layer_types"]
    if self.architecture == "gemma3":
      # The legacy keys, not rope_parameters, so the file's own rope_theta stays in force.
      keys += ["rope_local_base_freq", "rope_scaling"]
    return {k: ref[k] for k in keys}

  def _stated_extras(self) -> dict[str, Any]:
    """The optional keys newer llama.cpp writers add, in HF's terms."""
    extras: dict[str, Any] = {}
    local_base = self._meta("rope.freq_base_swa")
    if local_base is not None:
      extras["rope_local_base_freq"] = local_base
    pattern = self._meta("attention.sliding_window_pattern")
    if isinstance(pattern, int):  # every `pattern`-th layer is global
      extras.update(sliding_window_pattern=pattern, layer_types=None)
    elif pattern is not None:  # one flag per layer, True = sliding window
      extras["layer_types"] = ["sliding_attention" if flag else "full_attention"
                               for flag in list(pattern)]
    scaling = self._meta("rope.scaling.type")
    if scaling not in (None, "none"):
      extras["rope_scaling"] = {"rope_type": scaling,
                                "factor": self._meta("rope.scaling.factor", 1.0)}
    return extras

  # ---- tokenizer ---------------------------------------------------------------------------
  def tokenizer_model_proto(self) -> bytes:
    """A serialized SentencePiece ModelProto of the GGUF's vocabulary (Gemma's BPE settings).

    Three repairs of how llama.cpp stores Gemma's vocabulary: `<unk>` is CONTROL in the file but
    SentencePiece needs it UNKNOWN; user-defined whitespace pieces hold literal spaces where
    SentencePiece spells them with U+2581; and the other CONTROL pieces but pad/bos/eos (chat
    markers such as `<start_of_turn>`, `<mask>`, `<unusedN>`) become USER_DEFINED, so raw text
    containing them encodes each as one id, as transformers' tokenizer of the same file does
    (SentencePiece never matches a CONTROL piece in text).
    """
    tokens = self.metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
      raise self._error("no tokenizer vocabulary (tokenizer.ggml.tokens) in the metadata")
    scores = self.metadata.get("tokenizer.ggml.scores", np.zeros(len(tokens), np.float32))
    types = self.metadata.get("tokenizer.ggml.token_type", np.full(len(tokens), _NORMAL))
    if not len(tokens) == len(scores) == len(types):
      raise self._error(f"tokenizer arrays disagree: {len(tokens)} tokens, {len(scores)} scores, "
                        f"{len(types)} token types")
    ids = {role: self.metadata.get(f"tokenizer.ggml.{role}_token_id")
           for role in ("unknown", "bos", "eos", "padding")}
    controls = {ids["bos"], ids["eos"], ids["padding"]}
    pieces = []
    for i, (piece, score, kind) in enumerate(zip(tokens, scores.tolist(), types.tolist())):
      if i == ids["unknown"]:
        kind = _UNKNOWN
      elif kind == _USER_DEFINED and not piece.strip():
        piece = piece.replace(" ", "\u2581")
      elif kind == _CONTROL and i not in controls:
        kind = _USER_DEFINED
      pieces.append(_pb_piece(piece, score, kind))
    # TrainerSpec: model_type, vocab_size, split_digits, byte_fallback, then the special pieces.
    trainer = [(3, _SPM_BPE), (4, len(tokens)), (25, True), (35, True)]
    for role, id_field in (("unknown", 40), ("bos", 41), ("eos", 42), ("padding", 43)):
      token_id = ids[role]
      trainer.append((id_field, -1 if token_id is None else token_id))
      if token_id is not None:
        trainer.append((id_field + 5, tokens[token_id]))  # unk_piece .. pad_piece: 45 .. 48
    # NormalizerSpec: name, add_dummy_prefix, remove_extra_whitespaces.
    normalizer = [(1, "identity"), (3, False), (4, False)]
    return b"".join(pieces + [_pb_field(2, _pb_message(sorted(trainer))),
                              _pb_field(3, _pb_message(normalizer))])


# ----------------------------------------------------------------------------- protobuf

# SentencePiece's ModelProto is written by hand (field numbers from sentencepiece_model.proto):
# the sentencepiece wheel's generated sentencepiece_model_pb2 demands a protobuf runtime at least
# as new as the one it was generated with (7.36 for sentencepiece 0.2.3), which pins too much.
_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_FLOAT32_LE = struct.Struct("<f")


def _pb_varint(n: int) -> bytes:
  if 0 <= n <= 0x7F:
    return _ONE_BYTE[n]
  n &= (1 << 64) - 1  # a negative int32 is its ten-byte two's complement
  out = bytearray()
  while n > 0x7F:
    out.append(n & 0x7F | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _pb_field(number: int, value: bool | int | str | bytes) -> bytes:
  """One field: bool / int as a varint, str (UTF-8) / bytes (a sub-message) length-delimited."""
  if isinstance(value, (bool, int)):
    return _pb_varint(number << 3) + _pb_varint(int(value))
  raw = value.encode("utf-8") if isinstance(value, str) else value
  return _pb_varint(number << 3 | 2) + _pb_varint(len(raw)) + raw


def _pb_message(fields: list[tuple[int, bool | int | str]]) -> bytes:
  """The fields in the order given (protobuf's own writers order them by number)."""
  return b"".join(_pb_field(number, value) for number, value in fields)


def _pb_piece(piece: str, score: float, kind: int) -> bytes:
  """ModelProto field 1: one SentencePiece {1: piece, 2: score (fixed32 float), 3: type}.
  Spelled out with the tags as literals: it runs once per vocabulary entry (262k)."""
  raw = piece.encode("utf-8")
  body = (b"\x0a" + _pb_varint(len(raw)) + raw + b"\x15" + _FLOAT32_LE.pack(score) + b"\x18"
          + _pb_varint(kind))
  return b"\x0a" + _pb_varint(len(body)) + body


def load_gguf(path: str | os.PathLike, config: ModelConfig | None = None, *,
              dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """A llama.cpp GGUF of Gemma 2 / Gemma 3, any tensor type (dequantised to float32)."""
  source = GGUFFile(path)
  if config is None:
    try:
      config = hf_config.config_from_hf(source.hf_config())
    except (ValueError, TypeError) as e:
      raise CheckpointError(f"{path}: {e}") from e
  return read_params(source, "gguf", config, dtype, resolve_sharding(sharding, config)), config
