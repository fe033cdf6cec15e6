"""GGUFFile on synthetic GGUFs written with gguf.GGUFWriter: metadata -> HF config, dequantised
tensors, the SentencePiece vocabulary it builds, and one-line errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shared_data_or_skip
from xling_jax.checkpoints import gguf_file, hf_config
from xling_jax.checkpoints.gguf_file import GGUFFile
from xling_jax.data.tokenizer import Tokenizer
from xling_jax.model import config as config_lib, presets
from xling_jax.model.config import ModelConfig
from xling_jax.runtime.errors import CheckpointError

gguf = pytest.importorskip("gguf", reason="GGUF support needs pip install gguf")
Q = gguf.GGMLQuantizationType

# A vocabulary laid out as llama.cpp writes Gemma's: special pieces CONTROL (<unk> included),
# a whitespace piece with literal spaces, a chat marker, byte fallback, then BPE pieces whose
# scores order the merges.
_SPECIAL = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 3), ("<start_of_turn>", 3),
            ("  ", 4)]
_BYTES = [(f"<0x{b:02X}>", 6) for b in range(256)]
_MERGED = ["h", "e", "l", "o", "w", "r", "d", "\u2581", "he", "ll", "hell", "hello", "\u2581w",
           "or", "\u2581wor", "ld", "\u2581world"]
TOKENS = [t for t, _ in _SPECIAL + _BYTES] + _MERGED
TYPES = [k for _, k in _SPECIAL + _BYTES] + [1] * len(_MERGED)
SCORES = [0.0] * (len(_SPECIAL) + len(_BYTES)) + [-float(i) for i in range(len(_MERGED))]
ID = {t: i for i, t in enumerate(TOKENS)}


def _toy_gemma3_metadata(config: ModelConfig) -> dict:
  return dict(block_count=config.n_layers, embedding_length=config.d_model,
              feed_forward_length=config.mlp_hidden, head_count=config.n_heads,
              head_count_kv=config.n_kv_heads, key_length=config.head_dim,
              value_length=config.head_dim, layer_norm_rms_eps=config.rms_norm_eps,
              context_length=config.max_seq_len, sliding_window=config.sliding_window,
              rope_freq_base=max(k.rope_base for k in config.attention_kinds))


def write_gguf(path, arch="gemma3", metadata=None, tensors=(), vocab=True, extra=None):
  """A GGUF at `path`: `metadata` as {GGUFWriter.add_<key>: value}, `tensors` as
  (name, float32 array in numpy order, ggml type), `extra` as {key: (value, GGUFValueType)}."""
  writer = gguf.GGUFWriter(str(path), arch)
  for key, value in (metadata or {}).items():
    getattr(writer, f"add_{key}")(value)
  for key, (value, value_type) in (extra or {}).items():
    writer.add_key_value(key, value, value_type)
  if vocab:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores(SCORES)
    writer.add_token_types(TYPES)
    for role, token in (("bos", "<bos>"), ("eos", "<eos>"), ("unk", "<unk>"), ("pad", "<pad>")):
      getattr(writer, f"add_{role}_token_id")(ID[token])
  for name, array, qtype in tensors:
    if qtype in (Q.F32, Q.F16):
      writer.add_tensor(name, array.astype(np.float32 if qtype == Q.F32 else np.float16))
    else:
      writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _rand(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def toy_file(tmp_path):
  """A toy_gemma3-shaped GGUF: an F32 norm, an F16, a Q8_0 and a Q4_0 tensor."""
  config = presets.toy_gemma3()
  tensors = [("token_embd.weight", _rand((config.vocab_size, config.d_model)), Q.Q8_0),
             ("output_norm.weight", 1.0 + _rand((config.d_model,), 1), Q.F32),
             ("blk.0.attn_q.weight", _rand((config.q_width, config.d_model), 2), Q.F16),
             ("blk.0.ffn_down.weight", _rand((config.d_model, config.mlp_hidden), 3), Q.Q4_0)]
  path = write_gguf(tmp_path / "toy.gguf", metadata=_toy_gemma3_metadata(config),
                    tensors=tensors)
  return path, {name: (array, qtype) for name, array, qtype in tensors}


def _one_line_naming(error, path) -> str:
  message = str(error.value)
  assert str(path) in message and "\n" not in message, message
  return message


# ----------------------------------------------------------------------------- tensors

def test_tensors_come_back_as_written_in_numpy_order(toy_file):
  path, written = toy_file
  f = GGUFFile(path)
  assert f.architecture == "gemma3"
  assert f.names() == set(written)
  for name, (array, qtype) in written.items():
    got = f.get(name, expected_shape=array.shape)
    assert got.dtype == np.float32 and got.shape == array.shape == f.shape(name)
    if qtype in (Q.F32, Q.F16):  # norms stay as stored (1 + w): the loader subtracts the 1
      np.testing.assert_array_equal(got, array.astype(np.float16 if qtype == Q.F16 else
                                                      np.float32).astype(np.float32))
    else:  # exactly gguf's own round trip, and near the original
      roundtrip = gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)
      np.testing.assert_array_equal(got, roundtrip)
      step = np.abs(array).max() / (127 if qtype == Q.Q8_0 else 7)
      assert np.abs(got - array).max() <= step


def test_row_chunking_does_not_change_the_values(toy_file, monkeypatch):
  path, _ = toy_file
  whole = {name: GGUFFile(path).get(name) for name in GGUFFile(path).names()}
  monkeypatch.setattr(gguf_file, "_CHUNK_VALUES", 200)  # 3 rows of 64 per chunk: a ragged tail
  chunked = GGUFFile(path)
  for name, array in whole.items():
    np.testing.assert_array_equal(chunked.get(name), array)


def test_get_returns_a_writable_copy_not_the_file_map(toy_file):
  path, _ = toy_file
  norm = GGUFFile(path).get("output_norm.weight")
  norm -= 1.0  # what the loader does; a read-only map view would raise
  assert norm.flags.owndata


def test_missing_tensor_and_wrong_shape_name_the_file_and_tensor(toy_file):
  path, _ = toy_file
  f = GGUFFile(path)
  with pytest.raises(CheckpointError) as e:
    f.get("blk.9.attn_q.weight")
  assert "blk.9.attn_q.weight" in _one_line_naming(e, path)
  with pytest.raises(CheckpointError) as e:
    f.get("output_norm.weight", expected_shape=(32,))
  assert "output_norm.weight" in _one_line_naming(e, path) and "(32,)" in str(e.value)


# ----------------------------------------------------------------------------- bad files

def test_other_architecture_is_refused(tmp_path):
  path = write_gguf(tmp_path / "llama.gguf", arch="llama", metadata={"block_count": 2})
  with pytest.raises(CheckpointError) as e:
    GGUFFile(path)
  assert "architecture 'llama', expected gemma2 or gemma3" in _one_line_naming(e, path)


@pytest.mark.parametrize("keep", ["header", "data"])
def test_truncated_file_is_refused(toy_file, keep):
  path, _ = toy_file
  blob = path.read_bytes()
  path.write_bytes(blob[:200] if keep == "header" else blob[:-100])
  with pytest.raises(CheckpointError) as e:
    GGUFFile(path)
  message = _one_line_naming(e, path)
  assert "truncated" in message
  if keep == "data":
    assert "ffn_down" in message  # the last tensor is the one cut


def test_non_gguf_and_missing_files_are_refused(tmp_path):
  path = tmp_path / "model.gguf"
  path.write_bytes(b"PK\x03\x04 a zip, not a GGUF")
  with pytest.raises(CheckpointError) as e:
    GGUFFile(path)
  assert "not a GGUF file" in _one_line_naming(e, path)
  with pytest.raises(CheckpointError) as e:
    GGUFFile(tmp_path / "absent.gguf")
  assert "no such GGUF file" in _one_line_naming(e, tmp_path / "absent.gguf")


def test_unsupported_version_is_refused(toy_file):
  path, _ = toy_file
  blob = bytearray(path.read_bytes())
  blob[4:8] = (1).to_bytes(4, "little")
  path.write_bytes(bytes(blob))
  with pytest.raises(CheckpointError) as e:
    GGUFFile(path)
  assert "version 1" in _one_line_naming(e, path)


# ----------------------------------------------------------------------------- config

def test_hf_config_of_a_preset_shape_takes_what_gguf_omits_from_the_preset(toy_file):
  # toy_gemma3's query scalar (24), 5:1 pattern, local base and linear x8 scaling are not in
  # the file; its family, depth and width select the preset that supplies them.
  path, _ = toy_file
  hf = GGUFFile(path).hf_config()
  assert hf["model_type"] == "gemma3_text" and hf["tie_word_embeddings"] is True
  assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (2, 1, 0)
  assert hf["rms_norm_eps"] == 1e-6  # float32 metadata comes back as its shortest decimal
  assert hf_config.config_from_hf(hf) == presets.toy_gemma3()


def test_hf_config_without_a_matching_preset_leaves_hf_defaults(tmp_path):
  config = presets.toy_gemma3(n_layers=3, d_model=48)
  path = write_gguf(tmp_path / "odd.gguf", metadata=_toy_gemma3_metadata(config), vocab=False)
  hf = GGUFFile(path).hf_config()
  assert not {"query_pre_attn_scalar", "layer_types", "rope_scaling", "vocab_size"} & set(hf)
  got = hf_config.config_from_hf(hf, vocab_size=512)
  assert (got.n_layers, got.d_model, got.n_kv_heads, got.head_dim) == (3, 48, 2, 16)
  assert got.query_pre_attn_scalar == 256  # Gemma3TextConfig's default
  assert [got.layer_kind(i) for i in range(3)] == [config_lib.AttentionKind(8, 10000.0)] * 3


def test_hf_config_uses_the_optional_keys_a_file_states(tmp_path):
  config = presets.toy_gemma3(n_layers=3, d_model=48)
  arch = "gemma3"
  extra = {f"{arch}.rope.freq_base_swa": (5000.0, gguf.GGUFValueType.FLOAT32),
           f"{arch}.attention.sliding_window_pattern": ([False, True, False],
                                                       gguf.GGUFValueType.ARRAY),
           f"{arch}.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING),
           f"{arch}.rope.scaling.factor": (4.0, gguf.GGUFValueType.FLOAT32)}
  path = write_gguf(tmp_path / "stated.gguf", metadata=_toy_gemma3_metadata(config), extra=extra)
  got = hf_config.config_from_hf(GGUFFile(path).hf_config())
  local, glob = config_lib.AttentionKind(8, 5000.0), config_lib.AttentionKind(None, 1e6, 4.0)
  assert [got.layer_kind(i) for i in range(3)] == [glob, local, glob]
  assert got.vocab_size == len(TOKENS)  # no token_embd: the tokenizer's size


def test_gemma2_hf_config_reads_the_softcaps(tmp_path):
  config = presets.toy()
  metadata = {**_toy_gemma3_metadata(config), "rope_freq_base": 10000.0,
              "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
  tensors = [("token_embd.weight", _rand((config.vocab_size, config.d_model)), Q.F16)]
  path = write_gguf(tmp_path / "g2.gguf", arch="gemma2", metadata=metadata, tensors=tensors)
  hf = GGUFFile(path).hf_config()
  assert hf["model_type"] == "gemma2" and hf["vocab_size"] == config.vocab_size
  assert hf_config.config_from_hf(hf) == config


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_from_a_gguf_vocabulary_round_trips(toy_file):
  path, _ = toy_file
  tok = Tokenizer.load(path)
  assert tok.kind == "sentencepiece" and tok.vocab_size == len(TOKENS)
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  # No dummy prefix: a leading word has no U+2581; BPE follows the scores.
  assert tok.encode("hello world") == [ID["hello"], ID["\u2581world"]]
  assert tok.encode("hello", add_bos=True) == [2, ID["hello"]]
  # A whitespace piece stored with literal spaces matches as one id; the chat marker too.
  assert tok.encode("he  lo") == [ID["he"], ID["  "], ID["l"], ID["o"]]
  assert tok.encode("<start_of_turn>hello") == [ID["<start_of_turn>"], ID["hello"]]
  # Unseen characters fall back to UTF-8 bytes, digits and all.
  assert tok.encode("é") == [ID["<0xC3>"], ID["<0xA9>"]]
  for text in ("hello world", "he  lo", "world é 42", "<start_of_turn>hello"):
    assert tok.decode(tok.encode(text)) == text
  batch = tok.encode_batch(["hello", "hello world"], bucket=None)
  assert batch.tokens.tolist() == [[2, ID["hello"], 0], [2, ID["hello"], ID["\u2581world"]]]


def test_hand_written_model_proto_parses_as_sentencepiece_s_own(toy_file):
  try:
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2
  except Exception as e:  # its generated code refuses an older protobuf runtime
    pytest.skip(f"sentencepiece_model_pb2 is unusable here ({e})")
  path, _ = toy_file
  ours = GGUFFile(path).tokenizer_model_proto()
  proto = spm_pb2.ModelProto.FromString(ours)
  assert proto.SerializeToString() == ours  # every byte is a field protobuf knows, in its order
  assert [p.piece for p in proto.pieces][:6] == ["<pad>", "<eos>", "<bos>", "<unk>",
                                                 "<start_of_turn>", "\u2581\u2581"]
  kinds = spm_pb2.ModelProto.SentencePiece
  assert [p.type for p in proto.pieces][:7] == [kinds.CONTROL] * 3 + [
      kinds.UNKNOWN, kinds.USER_DEFINED, kinds.USER_DEFINED, kinds.BYTE]
  assert [p.score for p in proto.pieces][-3:] == [-14.0, -15.0, -16.0]
  t = proto.trainer_spec
  assert (t.model_type, t.vocab_size, t.byte_fallback, t.split_digits) == (
      spm_pb2.TrainerSpec.BPE, len(TOKENS), True, True)
  assert (t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (3, 2, 1, 0)
  assert (t.unk_piece, t.bos_piece, t.eos_piece, t.pad_piece) == ("<unk>", "<bos>", "<eos>",
                                                                  "<pad>")
  n = proto.normalizer_spec
  assert (n.name, n.add_dummy_prefix, n.remove_extra_whitespaces) == ("identity", False, False)


def test_tokenizer_from_a_gguf_without_vocabulary_names_the_file(tmp_path):
  from xling_jax.data.tokenizer import TokenizerError
  path = write_gguf(tmp_path / "novocab.gguf", metadata={"block_count": 1}, vocab=False)
  with pytest.raises(TokenizerError) as e:
    Tokenizer.load(path)
  assert "tokenizer.ggml.tokens" in _one_line_naming(e, path)


# ----------------------------------------------------------------------------- the real 270M

def test_real_gemma3_270m_config_is_the_preset(gemma3_270m_gguf):
  f = GGUFFile(gemma3_270m_gguf)
  assert f.architecture == "gemma3" and len(f.names()) == 236
  assert hf_config.config_from_hf(f.hf_config()) == presets.gemma3_270m()


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_gemma3_270m_tokenizer_matches_transformers_on_flores(gemma3_270m_gguf,
                                                                   gemma3_270m_hf_tokenizer):
  from xling_jax.data.corpora import load_text_dir
  corpus = load_text_dir(shared_data_or_skip("parallel", "flores200_sib200"))
  assert len(corpus.languages) == 10 and corpus.n_sentences == 1004
  ours, theirs = Tokenizer.load(gemma3_270m_gguf), gemma3_270m_hf_tokenizer
  assert ours.vocab_size == 262144 and (ours.pad_id, ours.eos_id, ours.bos_id) == (0, 1, 2)
  for lang in corpus.languages:
    texts = list(corpus.sentences[lang])
    for add_bos in (False, True):
      expected = theirs(texts, add_special_tokens=add_bos)["input_ids"]
      batch = ours.encode_batch(texts, add_bos=add_bos, bucket=None)
      got = [row[:n].tolist() for row, n in zip(batch.tokens, batch.lengths)]
      mismatch = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
      assert mismatch is None, (lang, add_bos, texts[mismatch], got[mismatch], expected[mismatch])
    assert [ours.decode(ours.encode(t)) for t in texts] == texts, lang
  # Chat and other special markers in raw text stay single ids, as in transformers.
  text = "<start_of_turn>user\nhi<end_of_turn>\n<mask> <unused5>"
  assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
