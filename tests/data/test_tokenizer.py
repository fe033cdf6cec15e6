"""Tokenizer: a SentencePiece model trained here on multilingual text, its HF tokenizer.json twin, the toy builder."""
from __future__ import annotations

import io
import shutil
import warnings

import numpy as np
import pytest

spm = pytest.importorskip("sentencepiece")

from xling_jax.data import toy_tokenizer as toy_lib
from xling_jax.data.tokenizer import (EncodedBatch, Tokenizer, TokenizerError, TruncationWarning,
                                      bucket_length)

# Real sentences, grouped by script (Devanagari holds Hindi and Marathi, Latin several languages).
SENTENCES = {
    "latin": [
        "Rivers carry fresh water from the mountains to the sea.",  # en
        "She forgot her umbrella at the station yesterday.",
        "How many languages do you speak?",
        "El museo abre sus puertas a las diez de la mañana.",  # es
        "¿Dónde está la biblioteca más cercana?",
        "Los niños jugaban en la plaza hasta que anocheció.",
        "La biblioteca del barri tanca els diumenges.",  # ca
        "Quina hora és? Ja hauríem de marxar.",
        "Els ocells canten a la vora del riu.",
        "Il gatto dorme sul divano tutto il pomeriggio.",  # it
        "Saya suka minum teh hangat di pagi hari.",  # id
    ],
    "cyrillic": [
        "Реки несут пресную воду с гор к морю.",
        "Вчера она забыла зонтик на вокзале.",
        "Сколько языков ты знаешь?",
        "Зимой в Сибири бывает очень холодно.",
    ],
    "cjk": [
        "河流把淡水从山上带到大海。",
        "她昨天把雨伞忘在车站了。",
        "你会说几种语言？",
        "北京是中国的首都。",
    ],
    "devanagari": [
        "नदियाँ पहाड़ों से समुद्र तक मीठा पानी ले जाती हैं।",  # hi
        "वह कल अपनी छतरी स्टेशन पर भूल गई।",
        "आप कितनी भाषाएँ बोलते हैं?",
        "बच्चे शाम तक मैदान में खेलते रहे।",
        "नद्या डोंगरांपासून समुद्रापर्यंत गोडे पाणी वाहून नेतात.",  # mr
        "ती काल तिची छत्री स्टेशनवर विसरली.",
        "तुम्ही किती भाषा बोलता?",
        "पुणे हे महाराष्ट्रातील एक मोठे शहर आहे.",
    ],
    "malayalam": [
        "നദികൾ മലകളിൽ നിന്ന് കടലിലേക്ക് ശുദ്ധജലം കൊണ്ടുപോകുന്നു.",
        "അവൾ ഇന്നലെ കുട സ്റ്റേഷനിൽ മറന്നു.",
        "നിങ്ങൾ എത്ര ഭാഷകൾ സംസാരിക്കും?",
        "കേരളത്തിൽ ധാരാളം മഴ പെയ്യുന്നു.",
    ],
}
ALL = [s for group in SENTENCES.values() for s in group]
# Text the model never saw: other scripts and emoji (byte fallback) and whitespace that must survive.
UNSEEN = ["Ελληνικά γράμματα", "தமிழ் மொழி", "日本語のテキスト 🙂👍", "  two  spaces", "trailing ",
          "tab\tand\nnewline", "x"]
PAD, EOS, BOS, UNK = 0, 1, 2, 3


def _train_spm(sentences, **overrides) -> bytes:
  """Gemma's layout: BPE, byte fallback, identity normalisation, pad 0 eos 1 bos 2 unk 3, <mask> 4."""
  opts = dict(model_type="bpe", vocab_size=1000, hard_vocab_limit=False, byte_fallback=True,
              character_coverage=1.0, pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK,
              pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
              user_defined_symbols=["<mask>"], normalization_rule_name="identity",
              add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
              num_threads=1, shuffle_input_sentence=False, minloglevel=2)
  opts.update(overrides)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, **opts)
  return buf.getvalue()


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("spm")
  (path / "tokenizer.model").write_bytes(_train_spm(ALL))
  return path


@pytest.fixture(scope="module")
def tok(spm_dir):
  return Tokenizer.load(spm_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def hf_dir(spm_dir, tmp_path_factory):
  """The same model converted by transformers (GemmaTokenizerFast) and written by save_pretrained."""
  transformers = pytest.importorskip("transformers")
  out = tmp_path_factory.mktemp("hf_tok")
  hf = transformers.GemmaTokenizerFast.from_pretrained(str(spm_dir))
  hf.save_pretrained(str(out))
  assert (out / "tokenizer.json").is_file()
  return out


# ---- loading and special ids ----------------------------------------------------------------------
def test_special_ids_follow_gemma(tok):
  assert tok.kind == "sentencepiece"
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (PAD, EOS, BOS, UNK)
  assert 300 < tok.vocab_size <= 1000


def test_load_directory_prefers_tokenizer_model(spm_dir, hf_dir, tmp_path):
  both = tmp_path / "both"
  shutil.copytree(hf_dir, both)
  shutil.copy(spm_dir / "tokenizer.model", both / "tokenizer.model")
  assert Tokenizer.load(both).kind == "sentencepiece"
  assert Tokenizer.load(hf_dir).kind == "tokenizers"  # only tokenizer.json there
  # A file with another name is sniffed by content.
  other = tmp_path / "gemma.spm"
  shutil.copy(spm_dir / "tokenizer.model", other)
  assert Tokenizer.load(other).kind == "sentencepiece"


def test_load_errors_name_the_file(tmp_path):
  missing = tmp_path / "nope" / "tokenizer.model"
  with pytest.raises(FileNotFoundError, match="nope"):
    Tokenizer.load(missing)
  empty_dir = tmp_path / "empty"
  empty_dir.mkdir()
  with pytest.raises(FileNotFoundError, match="neither tokenizer.model"):
    Tokenizer.load(empty_dir)
  bad_model = tmp_path / "broken.model"
  bad_model.write_bytes(b"\x00garbage\xff" * 10)
  with pytest.raises(TokenizerError, match="broken.model"):
    Tokenizer.load(bad_model)
  bad_json = tmp_path / "tokenizer.json"
  bad_json.write_text('{"model": ', encoding="utf-8")
  with pytest.raises(TokenizerError, match="tokenizer.json"):
    Tokenizer.load(bad_json)


# ---- encode / decode -----------------------------------------------------------------------------
@pytest.mark.parametrize("script", sorted(SENTENCES))
def test_round_trip_per_script(tok, script):
  for text in SENTENCES[script]:
    ids = tok.encode(text)
    assert ids and BOS not in ids and UNK not in ids
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, np.int32)) == text


def test_round_trip_unseen_scripts_and_whitespace(tok):
  for text in UNSEEN:
    ids = tok.encode(text)
    assert UNK not in ids, text  # byte fallback covers every script
    assert tok.decode(ids) == text


def test_bos_only_when_asked_in_encode(tok):
  text = SENTENCES["cjk"][0]
  assert BOS not in tok.encode(text)
  assert tok.encode(text, add_bos=True) == [BOS] + tok.encode(text)
  assert tok.encode("") == []
  assert tok.encode("", add_bos=True) == [BOS]


def test_decode_drops_control_ids_and_checks_input(tok):
  text = SENTENCES["malayalam"][1]
  assert tok.decode([BOS] + tok.encode(text) + [EOS, PAD, PAD]) == text
  with pytest.raises(ValueError, match="outside"):
    tok.decode([tok.vocab_size])
  with pytest.raises(ValueError, match="1-D"):
    tok.decode(np.zeros((2, 3), np.int32))


def test_bad_input_types(tok):
  with pytest.raises(TypeError):
    tok.encode(None)
  with pytest.raises(TypeError):
    tok.encode(b"bytes")
  with pytest.raises(TypeError, match="single str"):
    tok.encode_batch("not a list")
  with pytest.raises(TypeError, match=r"texts\[1\]"):
    tok.encode_batch(["fine", 3])
  with pytest.raises(ValueError, match="empty list"):
    tok.encode_batch([])
  with pytest.raises(ValueError, match="pad_side"):
    tok.encode_batch(["a"], pad_side="middle")
  with pytest.raises(ValueError, match="bucket"):
    tok.encode_batch(["a"], bucket=0)
  with pytest.raises(ValueError, match="max_len"):
    tok.encode_batch(["a"], max_len=0)


# ---- batches -------------------------------------------------------------------------------------
def _check_batch(tok, texts, batch: EncodedBatch, *, pad_side, add_bos=True):
  B, T = batch.tokens.shape
  assert batch.tokens.dtype == np.int32 and batch.mask.dtype == np.int32
  assert batch.mask.shape == (B, T) and batch.lengths.shape == (B,)
  assert B == len(texts)
  for b, text in enumerate(texts):
    want = tok.encode(text, add_bos=add_bos)
    n = len(want)
    assert batch.lengths[b] == n
    real = slice(0, n) if pad_side == "right" else slice(T - n, T)
    pad = slice(n, T) if pad_side == "right" else slice(0, T - n)
    assert batch.tokens[b, real].tolist() == want
    assert (batch.mask[b, real] == 1).all() and (batch.mask[b, pad] == 0).all()
    assert (batch.tokens[b, pad] == tok.pad_id).all()
    n_bos = int((batch.tokens[b][batch.mask[b] == 1] == BOS).sum())
    if add_bos:
      assert batch.tokens[b, real.start] == BOS and n_bos == 1  # BOS is the first real token, once
    else:
      assert n_bos == 0
    assert tok.decode(batch.tokens[b]) == text  # padding and BOS decode to nothing
  assert batch.mask.sum(axis=1).tolist() == batch.lengths.tolist()


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_encode_batch_padding_mask_and_bos(tok, pad_side):
  texts = [SENTENCES["latin"][0], SENTENCES["cjk"][2], "", SENTENCES["devanagari"][4],
           SENTENCES["malayalam"][0], SENTENCES["cyrillic"][3]]
  batch = tok.encode_batch(texts, pad_side=pad_side, bucket=16)
  _check_batch(tok, texts, batch, pad_side=pad_side)
  assert batch.tokens.shape[1] % 16 == 0
  assert batch.tokens.shape[1] - 16 < batch.lengths.max() <= batch.tokens.shape[1]
  assert batch.lengths[2] == 1 and batch.truncated == ()  # empty text -> just BOS
  no_bos = tok.encode_batch(texts, pad_side=pad_side, bucket=None, add_bos=False)
  _check_batch(tok, texts, no_bos, pad_side=pad_side, add_bos=False)
  assert no_bos.lengths[2] == 0 and not no_bos.mask[2].any()


def test_left_and_right_padding_hold_the_same_tokens(tok):
  texts = [SENTENCES["devanagari"][0], SENTENCES["latin"][2]]
  right = tok.encode_batch(texts, pad_side="right")
  left = tok.encode_batch(texts, pad_side="left")
  assert right.tokens.shape == left.tokens.shape
  for b in range(len(texts)):
    assert right.tokens[b][right.mask[b] == 1].tolist() == left.tokens[b][left.mask[b] == 1].tolist()


def test_bucketed_lengths(tok):
  texts = [SENTENCES["latin"][0], SENTENCES["latin"][2]]
  longest = len(tok.encode(texts[0], add_bos=True))
  assert tok.encode_batch(texts, bucket=None).tokens.shape[1] == longest
  assert tok.encode_batch(texts, bucket=1).tokens.shape[1] == longest
  assert tok.encode_batch(texts, bucket=8).tokens.shape[1] == -(-longest // 8) * 8
  assert tok.encode_batch(texts).tokens.shape[1] == 64  # default bucket
  # Two different batches in the same bucket share a shape (one jit compilation).
  assert (tok.encode_batch([SENTENCES["cyrillic"][1]]).tokens.shape
          == tok.encode_batch([SENTENCES["cjk"][0]]).tokens.shape)


@pytest.mark.parametrize("n,bucket,max_len,want", [
    (0, 64, None, 0), (1, 64, None, 64), (64, 64, None, 64), (65, 64, None, 128),
    (65, 64, 100, 100), (65, 64, 128, 128), (7, None, None, 7), (7, 1, None, 7),
    (7, None, 5, 5), (9, 8, None, 16),
])
def test_bucket_length(n, bucket, max_len, want):
  assert bucket_length(n, bucket, max_len) == want


def test_bucket_length_rejects_bad_arguments():
  for args in [(-1, 8, None), (3, 0, None), (3, 8, 0), (3.5, 8, None)]:
    with pytest.raises(ValueError):
      bucket_length(*args)


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_truncation_is_reported_not_silent(tok, pad_side):
  texts = [SENTENCES["malayalam"][0], "a", SENTENCES["devanagari"][0], "ok"]
  full = [tok.encode(t, add_bos=True) for t in texts]
  max_len = 6
  assert len(full[0]) > max_len and len(full[2]) > max_len and len(full[1]) <= max_len
  with pytest.warns(TruncationWarning, match=r"2 of 4 rows .*max_len=6.*rows 0, 2"):
    batch = tok.encode_batch(texts, max_len=max_len, bucket=4, pad_side=pad_side)
  assert batch.truncated == (0, 2)
  assert batch.tokens.shape == (4, max_len)  # the bucket (8) is capped at max_len
  assert batch.lengths.tolist() == [min(len(f), max_len) for f in full]
  for b in (0, 2):  # the head is kept, BOS first
    assert batch.tokens[b].tolist() == full[b][:max_len]
  # Nothing cut: no warning, empty tuple.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ok = tok.encode_batch(texts, max_len=200)
  assert ok.truncated == () and ok.tokens.shape[1] == 64


def test_all_empty_without_bos_is_an_error(tok):
  with pytest.raises(ValueError, match="empty"):
    tok.encode_batch(["", ""], add_bos=False)
  only_bos = tok.encode_batch(["", ""], bucket=None)
  assert only_bos.tokens.tolist() == [[BOS], [BOS]] and only_bos.lengths.tolist() == [1, 1]


# ---- the HF tokenizer.json twin --------------------------------------------------------------------
def test_tokenizer_json_matches_sentencepiece(tok, hf_dir):
  hf = Tokenizer.load(hf_dir / "tokenizer.json")
  assert hf.kind == "tokenizers"
  assert (hf.pad_id, hf.eos_id, hf.bos_id, hf.unk_id) == (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id)
  assert hf.vocab_size == tok.vocab_size
  for text in ALL + UNSEEN:
    ids = tok.encode(text)
    assert hf.encode(text) == ids, text
    assert hf.decode(ids) == text
  texts = ALL[::3]
  for pad_side in ("left", "right"):
    a = tok.encode_batch(texts, pad_side=pad_side, bucket=16)
    b = hf.encode_batch(texts, pad_side=pad_side, bucket=16)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.lengths, b.lengths)
  assert hf.decode([BOS] + tok.encode(ALL[0]) + [EOS, PAD]) == ALL[0]


def test_fallback_special_ids(tmp_path):
  """Non-Gemma layouts: SentencePiece defaults (no pad) and a tokenizers-built BPE with <s>/</s>."""
  plain = tmp_path / "plain.model"
  plain.write_bytes(_train_spm(ALL, pad_id=-1, unk_id=0, bos_id=1, eos_id=2, user_defined_symbols=[]))
  t = Tokenizer.load(plain)
  assert (t.unk_id, t.bos_id, t.eos_id) == (0, 1, 2)
  assert t.pad_id == 0  # documented fallback: padding is marked by the mask, not the id
  batch = t.encode_batch(["ab", SENTENCES["cyrillic"][0]], bucket=None)
  n = int(batch.lengths[0])
  assert batch.tokens[0, 0] == 1 and (batch.mask[0, :n] == 1).all() and n < batch.tokens.shape[1]
  assert (batch.mask[0, n:] == 0).all() and (batch.tokens[0, n:] == 0).all()

  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import decoders, models, pre_tokenizers, trainers
  raw = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
  raw.pre_tokenizer = pre_tokenizers.Metaspace()
  raw.decoder = decoders.Metaspace()
  raw.train_from_iterator(ALL, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"]))
  raw.save(str(tmp_path / "tokenizer.json"))
  h = Tokenizer.load(tmp_path)
  assert (h.unk_id, h.bos_id, h.eos_id, h.pad_id) == (0, 1, 2, 0)
  text = SENTENCES["latin"][3]
  assert h.encode(text, add_bos=True)[0] == 1
  assert h.decode(h.encode(text)).strip() == text


# ---- the toy tokenizer ---------------------------------------------------------------------------
def test_toy_tokenizer_is_deterministic_and_fits_vocab_512(tmp_path, monkeypatch):
  monkeypatch.setenv("XLING_CACHE_DIR", str(tmp_path / "cache"))
  a = toy_lib.build_toy_tokenizer(toy_lib.default_sentences(), 512, tmp_path / "a.model")
  b = toy_lib.build_toy_tokenizer(list(toy_lib.default_sentences()), 512, tmp_path / "b" / "b.model")
  assert a.read_bytes() == b.read_bytes()
  ta, tb = Tokenizer.load(a), Tokenizer.load(b)
  toy = toy_lib.toy_tokenizer()
  assert toy.path.parent == tmp_path / "cache" / "toy_tokenizer"
  assert toy.path.read_bytes() == a.read_bytes()
  assert toy_lib.toy_tokenizer().path == toy.path  # cached, same key
  assert toy.vocab_size <= 512
  assert (toy.pad_id, toy.eos_id, toy.bos_id, toy.unk_id) == (PAD, EOS, BOS, UNK)
  for text in ALL + UNSEEN:
    ids = ta.encode(text)
    assert ids == tb.encode(text) == toy.encode(text)
    assert max(ids) < 512 and UNK not in ids
    assert toy.decode(ids) == text
  batch = toy.encode_batch(ALL)
  assert int(batch.tokens.max()) < 512


def test_toy_tokenizer_vocab_limits(tmp_path, monkeypatch):
  monkeypatch.setenv("XLING_CACHE_DIR", str(tmp_path))
  assert toy_lib.full_coverage_vocab_size(toy_lib.default_sentences()) > 512  # the sample needs the frequency cut
  with pytest.raises(ValueError, match=f"must be >= {toy_lib.MIN_VOCAB_SIZE}"):
    toy_lib.build_toy_tokenizer(ALL, toy_lib.MIN_VOCAB_SIZE - 1, tmp_path / "small.model")
  # More distinct characters than the vocab holds: the rare ones go to byte fallback, still exact.
  assert toy_lib.full_coverage_vocab_size(ALL) > 300
  squeezed = toy_lib.toy_tokenizer(vocab_size=300, sentences=ALL)
  assert squeezed.vocab_size <= 300
  for text in ALL + UNSEEN:
    ids = squeezed.encode(text)
    assert max(ids) < 300 and UNK not in ids and squeezed.decode(ids) == text
  # A tiny text: vocab_size is an upper bound, not a demand.
  tiny = toy_lib.toy_tokenizer(vocab_size=512, sentences=["hello world", "hola mundo"])
  assert tiny.vocab_size < 512
  assert tiny.decode(tiny.encode("hello мир")) == "hello мир"
  with pytest.raises(ValueError, match="non-empty"):
    toy_lib.toy_tokenizer(sentences=["", ""])
