"""Tokenisation cost and bits per character: the definitions, and the log-likelihood against HF
transformers on the same weights."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import hf_base
from xling_jax.analysis import intrinsic
from xling_jax.data.toy_tokenizer import toy_tokenizer

SENTENCES = {"en": ["The cat sat on the mat.", "A second, longer sentence about the weather."],
             "hi": ["बिल्ली चटाई पर बैठी थी।", "मौसम के बारे में एक दूसरा, लंबा वाक्य।"]}


def test_tokenization_cost_definitions(toy_config):
  tok = toy_tokenizer(toy_config.vocab_size)
  cost = intrinsic.tokenization_cost(tok, SENTENCES)
  for lang, texts in SENTENCES.items():
    tokens = sum(len(tok.encode(t)) for t in texts)
    assert cost[lang]["tokens"] == tokens
    assert cost[lang]["tokens_per_sentence"] == tokens / len(texts)
    assert cost[lang]["bytes_per_token"] == sum(len(t.encode()) for t in texts) / tokens
    assert cost[lang]["chars_per_token"] == sum(map(len, texts)) / tokens
  # Devanagari takes three UTF-8 bytes per character: more bytes than characters per token.
  assert cost["hi"]["bytes_per_token"] > 2 * cost["hi"]["chars_per_token"]
  with pytest.raises(ValueError, match="no sentences"):
    intrinsic.tokenization_cost(tok, {"en": []})


def test_bits_per_char_equals_hf_log_likelihood(toy_params, toy_config, toy_hf_dir):
  """-log2 p(sentence | BOS) summed over every token, from HF's logits, equals ours."""
  import torch
  tok = toy_tokenizer(toy_config.vocab_size)
  ours = intrinsic.bits_per_char(toy_params, toy_config, tok, SENTENCES, batch_size=2,
                                 show_progress=False)
  model = hf_base(toy_hf_dir)
  for lang, texts in SENTENCES.items():
    nats = 0.0
    for text in texts:
      ids = tok.encode(text, add_bos=True)
      with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
      logp = torch.log_softmax(logits, -1)
      nats -= float(sum(logp[t - 1, ids[t]] for t in range(1, len(ids))))
    chars = sum(map(len, texts))
    assert ours[lang]["nats"] == pytest.approx(nats, rel=1e-5)
    assert ours[lang]["bits_per_char"] == pytest.approx(nats / math.log(2) / chars, rel=1e-5)
    assert ours[lang]["bits_per_sentence"] == pytest.approx(
        nats / math.log(2) / len(texts), rel=1e-5)


def test_cli_writes_json_csv_markdown_and_rejects_a_bad_language(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  run = lambda *a: subprocess.run([sys.executable, "-m", "bin.intrinsic", *a], env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=600)
  bad = run("--langs=en,xx", f"--out={tmp_path / 'bad'}")
  assert bad.returncode == 2 and "Traceback" not in bad.stderr and "xx" in bad.stderr
  assert not (tmp_path / "bad").exists()
  proc = run("--langs=en,ml", "--max_sentences=3", "--bpc_sentences=2", f"--out={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads((tmp_path / "intrinsic.json").read_text())
  assert record["bits_sentences"] == 2 and record["tokenization_sentences"] == 3
  assert record["bits"]["ml"]["sentences"] == 2 and record["toy"]
  rows = (tmp_path / "intrinsic.csv").read_text().splitlines()
  assert rows[0].startswith("language,tokens_per_sentence") and len(rows) == 3
  np.testing.assert_allclose(float(rows[2].split(",")[4]), record["bits"]["ml"]["bits_per_char"])
  assert "| ml |" in (tmp_path / "intrinsic.md").read_text()
