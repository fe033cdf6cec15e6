"""Parallel corpora: the embedded sample, text directories, Hugging Face datasets, and their errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, shared_data_or_skip
from xling_jax.data import corpora
from xling_jax.data.languages import LANGUAGES, LOW_RESOURCE, STUDY_LANGUAGES, validate_languages

# Letters (str.isalpha) of each script fall in these code point ranges.
SCRIPT_RANGES = {
  "Latin": [(0x0041, 0x024F)],
  "Han": [(0x4E00, 0x9FFF)],
  "Cyrillic": [(0x0400, 0x04FF)],
  "Devanagari": [(0x0900, 0x097F)],
  "Malayalam": [(0x0D00, 0x0D7F)],
}


def in_script(char: str, script: str) -> bool:
  return any(lo <= ord(char) <= hi for lo, hi in SCRIPT_RANGES[script])


def write_dir(root, files: dict[str, str | bytes]):
  root.mkdir(exist_ok=True)
  for lang, content in files.items():
    path = root / f"{lang}.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
  return root


# --- languages -----------------------------------------------------------------------------------


def test_study_languages_order_groups_and_flores_codes():
  assert STUDY_LANGUAGES == ("en", "zh", "ru", "es", "it", "id", "ca", "mr", "ml", "hi")
  assert LOW_RESOURCE == ("id", "ca", "mr", "ml", "hi")
  assert [LANGUAGES[c].group for c in STUDY_LANGUAGES[:5]] == ["reference", "high", "high", "high", "high"]
  assert [LANGUAGES[c].flores200 for c in STUDY_LANGUAGES] == [
    "eng_Latn", "zho_Hans", "rus_Cyrl", "spa_Latn", "ita_Latn",
    "ind_Latn", "cat_Latn", "mar_Deva", "mal_Mlym", "hin_Deva"]
  assert corpora.flores_plus_config("zh") == "cmn_Hans"
  assert corpora.flores_plus_config("hi") == "hin_Deva"


def test_validate_languages():
  assert validate_languages(["hi", "en"]) == ("hi", "en")
  assert validate_languages("en, zh,ml") == ("en", "zh", "ml")
  # The study's ten are defaults, not a whitelist: any code is fine where the data has it.
  assert validate_languages(["en", "fr", "tlh", "zh-Hans", "pt_BR"]) == (
    "en", "fr", "tlh", "zh-Hans", "pt_BR")
  with pytest.raises(ValueError, match=r"'klingon', 'EN': not a language code \(ISO 639"):
    validate_languages(["en", "klingon", "EN"])
  with pytest.raises(ValueError, match="no languages given"):
    validate_languages([])
  with pytest.raises(ValueError, match="more than once: en"):
    validate_languages(["en", "zh", "en"])


# --- the embedded sample -------------------------------------------------------------------------


def test_embedded_sample_has_every_language_aligned_and_non_empty():
  corpus = corpora.embedded_sample()
  assert corpus.languages == STUDY_LANGUAGES
  assert corpus.n_sentences >= 40
  for lang in STUDY_LANGUAGES:
    texts = corpus.sentences[lang]
    assert len(texts) == corpus.n_sentences
    assert all(t and t == t.strip() for t in texts), lang
    assert len(set(texts)) == len(texts), f"{lang} repeats a sentence"
  assert "CC0" in corpus.source and "xling-jax" in corpus.source


@pytest.mark.parametrize("lang", STUDY_LANGUAGES)
def test_embedded_sample_is_written_in_each_languages_script(lang):
  script = LANGUAGES[lang].script
  for i, text in enumerate(corpora.embedded_sample().sentences[lang]):
    letters = [c for c in text if c.isalpha()]
    assert letters, (lang, i)
    stray = [c for c in letters if not in_script(c, script)]
    assert not stray, f"{lang} sentence {i + 1} has non-{script} letters {stray}: {text}"


def test_embedded_sample_is_not_copied_from_the_shared_corpora():
  embedded = set(corpora.embedded_sample().sentences["en"])
  for name in ("flores200_sib200", "ntrex128"):
    path = shared_data_or_skip("parallel", name, "en.txt")
    assert not embedded & set(path.read_text(encoding="utf-8").splitlines()), name


def test_corpora_module_does_not_import_datasets():
  code = "import sys, xling_jax.data.corpora; sys.exit('datasets' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# --- ParallelCorpus ------------------------------------------------------------------------------


def toy_corpus(n=5):
  return corpora.ParallelCorpus(
    "toy", ("en", "hi"), {"en": [f"e{i}" for i in range(n)], "hi": [f"h{i}" for i in range(n)]}, "test")


def test_corpus_head_sample_subset():
  corpus = toy_corpus()
  assert corpus.head(2).sentences == {"en": ("e0", "e1"), "hi": ("h0", "h1")}
  assert corpus.head(99) is corpus
  sample = corpus.sample(3, seed=7)
  assert sample == corpus.sample(3, seed=7)
  assert sample.n_sentences == 3
  rows = [int(t[1:]) for t in sample.sentences["en"]]
  assert rows == sorted(rows) and [int(t[1:]) for t in sample.sentences["hi"]] == rows
  assert "seed 7" in sample.source
  assert {corpus.sample(3, seed=s).sentences["en"] for s in range(10)} != {sample.sentences["en"]}
  assert corpus.subset(["hi"]).languages == ("hi",)
  with pytest.raises(ValueError, match="corpus toy has no 'zh'; it holds en, hi"):
    corpus.subset(["en", "zh"])
  with pytest.raises(ValueError, match="cannot sample 6 of 5"):
    corpus.sample(6, seed=0)
  for bad in (0, -1):
    with pytest.raises(ValueError, match="positive integer"):
      corpus.head(bad)


def test_corpus_checks_its_invariants():
  with pytest.raises(ValueError, match=r"different numbers of sentences \(en=2, hi=1\)"):
    corpora.ParallelCorpus("c", ("en", "hi"), {"en": ["a", "b"], "hi": ["x"]}, "test")
  with pytest.raises(ValueError, match="sentence 2 of 'hi' is empty"):
    corpora.ParallelCorpus("c", ("en", "hi"), {"en": ["a", "b"], "hi": ["x", " "]}, "test")
  with pytest.raises(ValueError, match="no sentences"):
    corpora.ParallelCorpus("c", ("en",), {"en": []}, "test")
  with pytest.raises(ValueError, match="sentences are given for"):
    corpora.ParallelCorpus("c", ("en", "hi"), {"en": ["a"]}, "test")
  with pytest.raises(ValueError, match="not a language code"):
    corpora.ParallelCorpus("c", ("german",), {"german": ["a"]}, "test")
  with pytest.raises(TypeError):
    toy_corpus().sentences["en"] = ("changed",)


# --- (a) text directories ------------------------------------------------------------------------


def test_text_dir_reads_lines_and_cleans_them(tmp_path):
  root = write_dir(tmp_path / "c", {
    "en": "\ufeffHello there.  \r\nSecond\u2028line stays one sentence.\n",
    "hi": "नमस्ते।\n  दूसरा वाक्य।",
  })
  corpus = corpora.load_text_dir(root, ["en", "hi"])
  assert corpus.sentences["en"] == ("Hello there.", "Second\u2028line stays one sentence.")
  assert corpus.sentences["hi"] == ("नमस्ते।", "दूसरा वाक्य।")
  assert corpus.name == str(root) and str(root.resolve()) in corpus.source


def test_text_dir_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="corpus directory .*nowhere does not exist"):
    corpora.load_text_dir(tmp_path / "nowhere", ["en"])

  root = write_dir(tmp_path / "missing", {"en": "a\n", "zh": "甲\n"})
  with pytest.raises(FileNotFoundError, match=r"missing hi\.txt, ml\.txt; the directory has en\.txt, zh\.txt"):
    corpora.load_text_dir(root, ["en", "hi", "ml"])

  root = write_dir(tmp_path / "empty", {"en": "a\n", "hi": "\ufeff \n"})
  with pytest.raises(ValueError, match=r"empty[/\\]hi\.txt is empty"):
    corpora.load_text_dir(root, ["en", "hi"])

  root = write_dir(tmp_path / "blank", {"en": "a\nb\nc\n", "hi": "x\n  \ny\n"})
  with pytest.raises(ValueError, match=r"blank[/\\]hi\.txt, line 2: empty line"):
    corpora.load_text_dir(root, ["en", "hi"])

  root = write_dir(tmp_path / "uneven", {"en": "a\nb\nc\n", "zh": "甲\n乙\n", "hi": "x\ny\nz\n"})
  with pytest.raises(ValueError, match=r"different numbers of sentences \(en=3, zh=2, hi=3\)"):
    corpora.load_text_dir(root, ["en", "zh", "hi"])

  root = write_dir(tmp_path / "latin1", {"en": "a\n", "es": "ma\xf1ana\n".encode("latin-1")})
  with pytest.raises(ValueError, match=r"latin1[/\\]es\.txt: not valid UTF-8 at byte offset 2"):
    corpora.load_text_dir(root, ["en", "es"])

  with pytest.raises(FileNotFoundError, match=r"missing fr\.txt; the directory has en\.txt, es\.txt"):
    corpora.load_text_dir(root, ["en", "fr"])


def test_text_dir_serves_any_language_it_has_a_file_for(tmp_path):
  root = write_dir(tmp_path / "c", {"en": "The cat sleeps.\n", "fr": "Le chat dort.\n"})
  corpus = corpora.load_corpus(root, "en,fr")
  assert corpus.languages == ("en", "fr") and corpus.sentences["fr"] == ("Le chat dort.",)


@pytest.mark.parametrize("name, lines", [("flores200_sib200", 1004), ("ntrex128", 1997)])
def test_shared_parallel_corpora_load_in_all_ten_languages(name, lines):
  corpus = corpora.load_text_dir(shared_data_or_skip("parallel", name))
  assert corpus.languages == STUDY_LANGUAGES
  assert corpus.n_sentences == lines
  assert all(len(corpus.sentences[lang]) == lines for lang in STUDY_LANGUAGES)
  assert any(in_script(c, "Malayalam") for c in corpus.sentences["ml"][0])


def test_ntrex_first_line_is_the_first_news_sentence():
  corpus = corpora.load_text_dir(shared_data_or_skip("parallel", "ntrex128"), ["en"])
  assert corpus.sentences["en"][0] == "Welsh AMs worried about 'looking like muppets'"


# --- (b) Hugging Face datasets (local, no network) -----------------------------------------------

FLORES_LIKE = {"en": ["The cat sleeps.", "It rains."], "hi": ["बिल्ली सोती है।", " बारिश होती है। "]}


@pytest.fixture(scope="module")
def flores_like_dir(tmp_path_factory):
  """FLORES+ layout on disk: one saved DatasetDict per config (`eng_Latn`, `hin_Deva`), column `text`."""
  import datasets
  root = tmp_path_factory.mktemp("flores_like")
  for lang, texts in FLORES_LIKE.items():
    table = datasets.Dataset.from_dict({"id": list(range(len(texts))), "text": texts})
    datasets.DatasetDict({"dev": table.select([0]), "devtest": table}).save_to_disk(
      str(root / corpora.flores_plus_config(lang)))
  return root


def test_hf_dataset_in_flores_plus_layout(flores_like_dir):
  corpus = corpora.load_hf_dataset(flores_like_dir, ["en", "hi"])
  assert corpus.sentences == {"en": ("The cat sleeps.", "It rains."), "hi": ("बिल्ली सोती है।", "बारिश होती है।")}
  assert corpus.name == f"hf:{flores_like_dir}:devtest"
  assert corpora.load_hf_dataset(flores_like_dir, ["hi"], split="dev").sentences["hi"] == ("बिल्ली सोती है।",)
  with pytest.raises(ValueError, match="has no split 'test'; its splits: dev, devtest"):
    corpora.load_hf_dataset(flores_like_dir, ["en"], split="test")
  with pytest.raises(ValueError, match=r"has no column 'sentence' for 'en'; its columns: \['id', 'text'\]"):
    corpora.load_hf_dataset(flores_like_dir, ["en"], column="sentence")


def test_hf_dataset_with_a_column_per_language(tmp_path):
  import datasets
  path = tmp_path / "wide"
  datasets.Dataset.from_dict({"english": ["One.", "Two."], "zh": ["一。", "二。"]}).save_to_disk(str(path))
  corpus = corpora.load_hf_dataset(path, ["en", "zh"], config_for_lang=None,
                                   column={"en": "english", "zh": "zh"})
  assert corpus.sentences == {"en": ("One.", "Two."), "zh": ("一。", "二。")}
  with pytest.raises(ValueError, match="column has no entry for 'hi'; it maps en, zh"):
    corpora.load_hf_dataset(path, ["en", "hi"], config_for_lang=None, column={"en": "english", "zh": "zh"})
  datasets.Dataset.from_dict({"en": ["One.", None]}).save_to_disk(str(tmp_path / "holes"))
  with pytest.raises(ValueError, match="column 'en', row 1: empty or not text: None"):
    corpora.load_hf_dataset(tmp_path / "holes", ["en"], config_for_lang=None, column=lambda lang: lang)


def test_hf_dataset_load_failure_names_the_config(tmp_path):
  (tmp_path / "no_data").mkdir()
  with pytest.raises(corpora.CorpusError, match=r"could not load Hugging Face dataset .*no_data' \(config 'eng_Latn', split 'devtest'\)"):
    corpora.load_hf_dataset(tmp_path / "no_data", ["en"])
  with pytest.raises(corpora.CorpusError, match=r"no FLORES\+ config is known for 'fr'"):
    corpora.load_hf_dataset(tmp_path / "no_data", ["fr"])


def test_hf_dataset_offline_is_one_quick_error(offline_network):
  with pytest.raises(ValueError, match=r"corpus hf:openlanguagedata/flores_plus \(no such local "
                                       r"path\): the Hugging Face hub cannot be reached"):
    corpora.load_corpus("hf:openlanguagedata/flores_plus", ["en"])


# --- load_corpus ---------------------------------------------------------------------------------


def test_load_corpus_dispatch(tmp_path, flores_like_dir):
  default = corpora.load_corpus()
  assert default.name == "embedded" and default.languages == STUDY_LANGUAGES
  assert corpora.load_corpus("embedded", "en,hi", max_sentences=3).sentences == {
    lang: default.sentences[lang][:3] for lang in ("en", "hi")}

  root = write_dir(tmp_path / "dir", {"en": "a\nb\n", "mr": "अ\nब\n"})
  assert corpora.load_corpus(root, ["mr"], max_sentences=1).sentences == {"mr": ("अ",)}

  assert corpora.load_corpus(f"hf:{flores_like_dir}", ["en", "hi"]).n_sentences == 2
  assert corpora.load_corpus(f"hf:{flores_like_dir}:dev", ["en", "hi"]).n_sentences == 1

  with pytest.raises(FileNotFoundError, match="a corpus is 'embedded', 'hf:<dataset_id>'"):
    corpora.load_corpus("embeded")
  with pytest.raises(ValueError, match="expected 'hf:<dataset_id>'"):
    corpora.load_corpus("hf:")
  with pytest.raises(ValueError, match="not a language code"):
    corpora.load_corpus("embedded", ["en", "klingon"])
  with pytest.raises(ValueError, match=r"corpus embedded has no 'xx'; it holds en, zh, .* \(other "
                                       r"languages: a directory of \{lang\}\.txt files\)"):
    corpora.load_corpus("embedded", ["en", "xx"])
