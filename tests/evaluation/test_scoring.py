"""Log-likelihood scoring: lm-eval's tokenisation rule, context-once packing, HF parity, metrics."""
from __future__ import annotations

import math
import statistics

import jax
import numpy as np
import pytest

from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.evaluation import prompts, scoring
from xling_jax.evaluation.benchmark_items import Item
from xling_jax.model import transformer as model_lib


@pytest.fixture(scope="module")
def tok():
  return toy_tokenizer()


def _items():
  """One item per prompt format: ARC with two shots, MMLU (English, with its subject line), HellaSwag,
  and Okapi ARC in Hindi and Malayalam, whose choices are many tokens each."""
  shots = [Item("arc", "en", f"S{i}", ("water", "sand"), i % 2, question=f"What is wet {i}?")
           for i in range(2)]
  arc = Item("arc", "en", "A", ("It boils.", "It freezes at zero.", "Nothing"), 1,
             question="What happens to water in the cold?")
  mmlu = Item("mmlu", "en", "anatomy/val/0", ("bone", "skin", "heart", "lung"), 2,
              question="Which organ pumps blood?", subject="anatomy")
  hellaswag = Item("hellaswag", "en", "0", ("walks to the park.", "reads a [title] book.", "sleeps."),
                   0, activity_label="Walking", ctx_a="My sister goes outside.", ctx_b="she")
  hindi = Item("arc", "hi", "H", ("पानी सौ डिग्री पर उबलता है।", "शहर जाने वाली ट्रेन"), 0,
               question="आज मौसम अच्छा है?")
  malayalam = Item("arc", "ml", "M", ("വെള്ളം നൂറ് ഡിഗ്രി", "ഇന്ന് നല്ല കാലാവസ്ഥയാണ്"), 1,
                   question="എന്റെ സഹോദരി?")
  return [prompts.prompt_for(arc, shots), prompts.prompt_for(mmlu), prompts.prompt_for(hellaswag),
          prompts.prompt_for(hindi), prompts.prompt_for(malayalam)]


def test_encode_pair_follows_lm_eval(tok):
  assert scoring.encode_pair(tok, "Answer: ", "x") == scoring.encode_pair(tok, "Answer:", " x")
  text = "The weather is nice today, so we are going to the park."
  whole = tok.encode(text, add_bos=True)
  differs = 0
  for k in range(1, len(text)):
    ctx, cont = scoring.encode_pair(tok, text[:k].rstrip(), text[len(text[:k].rstrip()):])
    assert ctx == tok.encode(text[:k].rstrip(), add_bos=True) and ctx[0] == tok.bos_id
    assert cont == whole[len(ctx):]
    differs += cont != tok.encode(text[len(text[:k].rstrip()):])
  # Splitting the joint tokenisation is not tokenising the continuation alone: the rule matters.
  assert differs > 0
  with pytest.raises(ValueError, match="choice 1 .* tokenises to no tokens"):
    scoring.encode_item(tok, "Answer:", [" A", ""])
  with pytest.raises(ValueError, match="no choices to score"):
    scoring.encode_item(tok, "Answer:", [])


# Every scoring test below runs the same items with batch_size=8 (one packed batch), so they share
# compiled shapes: on a 2-core CI machine compiling, not computing, is what costs time.
BATCH = 8


@pytest.fixture(scope="module")
def encoded(tok):
  # One-token choices (what MMLU letters are under Gemma's tokenizer) next to the real prompts.
  return scoring.encode_prompts(tok, _items()) + [
      scoring.EncodedItem((2, 40, 41, 42, 43), ((50,), (51,), (52, 53)))]


@pytest.fixture(scope="module")
def scored(toy_params, toy_config, encoded):
  return scoring.score(toy_params, toy_config, encoded, batch_size=BATCH)


def _independent(params, config, items):
  """Every choice scored as its own full sequence [ctx + cont] (one padded batch, no packing)."""
  seqs = [(list(it.context), list(c)) for it in items for c in it.continuations]
  width = max(len(c) + len(k) for c, k in seqs)
  tokens = np.zeros((len(seqs), width), np.int32)
  mask = np.zeros((len(seqs), width), np.int32)
  for r, (c, k) in enumerate(seqs):
    tokens[r, :len(c) + len(k)] = c + k
    mask[r, :len(c) + len(k)] = 1
  logits = model_lib.jit_forward(params, config, tokens, mask, return_residuals=False).logits
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
  return [sum(logp[r, len(c) - 1 + j, t] for j, t in enumerate(k)) for r, (c, k) in enumerate(seqs)]


def test_context_once_equals_independent_sequences(toy_params, toy_config, encoded, scored):
  assert any(it.max_input_len > toy_config.sliding_window for it in encoded)  # local layers matter
  assert scored.too_long == []
  reference = _independent(toy_params, toy_config, encoded)
  np.testing.assert_allclose(np.concatenate(scored.loglikelihoods), reference, rtol=1e-6, atol=1e-4)
  # Several batches, the last one mostly padding rows, give the same numbers.
  batched = scoring.score(toy_params, toy_config, encoded, batch_size=5)
  np.testing.assert_allclose(np.concatenate(batched.loglikelihoods), reference, rtol=1e-6, atol=1e-4)


def test_loglikelihoods_match_hf_transformers(toy_hf_dir, encoded, scored):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf = transformers.Gemma2ForCausalLM.from_pretrained(
      toy_hf_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
  items = _items()
  seqs = [(enc.context, cont) for enc in encoded[:len(items)] for cont in enc.continuations]
  width = max(len(c) + len(k) for c, k in seqs)
  ids = torch.zeros((len(seqs), width), dtype=torch.long)
  mask = torch.zeros((len(seqs), width), dtype=torch.long)
  for r, (c, k) in enumerate(seqs):  # right padding: HF's default positions are then right
    ids[r, :len(c) + len(k)] = torch.tensor(c + k)
    mask[r, :len(c) + len(k)] = 1
  with torch.no_grad():
    logp = torch.log_softmax(hf(input_ids=ids, attention_mask=mask).logits.double(), dim=-1)
  hf_lls = [sum(float(logp[r, len(c) - 1 + j, t]) for j, t in enumerate(k))
            for r, (c, k) in enumerate(seqs)]
  ours = [ll for lls in scored.loglikelihoods[:len(items)] for ll in lls]
  np.testing.assert_allclose(ours, hf_lls, rtol=0, atol=1e-4)
  assert prompts.FEWSHOT_DELIMITER in items[0].context  # the ARC prompt carries two shots
  assert max(len(c) for c in encoded[3].continuations) > 5  # Hindi choices are many tokens


def test_too_long_items_are_skipped_and_listed_never_cut(toy_params, toy_config, encoded, scored):
  longest = max(range(len(encoded)), key=lambda i: encoded[i].max_input_len)
  limit = encoded[longest].max_input_len - 1
  cut = scoring.score(toy_params, toy_config, encoded, batch_size=BATCH, max_len=limit)
  assert cut.too_long == [longest] and cut.loglikelihoods[longest] is None
  for i in range(len(encoded)):
    if i != longest:
      np.testing.assert_allclose(cut.loglikelihoods[i], scored.loglikelihoods[i], atol=1e-5)


def test_vocabulary_mismatch_is_an_error(toy_params, toy_config):
  item = scoring.EncodedItem((2, 600), ((7,),))
  with pytest.raises(ValueError, match="token id 600 is outside the model's vocabulary"):
    scoring.score(toy_params, toy_config, [item])


def test_lora_adapter_equals_merged_weights(toy_params, toy_config, encoded, scored):
  lora = pytest.importorskip("lora.lora")
  fresh = lora.init_adapter(toy_config, lora.LoraConfig(rank=2, modules=("q", "down")))
  # A fresh adapter is a no-op (B = 0); a non-zero B makes it change the scores.
  adapter = {"scale": fresh["scale"], "layers": {
      m: {"a": ab["a"], "b": jax.numpy.full(ab["b"].shape, 0.05)}
      for m, ab in fresh["layers"].items()}}
  with_adapter = scoring.score(toy_params, toy_config, encoded, batch_size=BATCH,
                               hook=lora.project_hook(adapter))
  merged = scoring.score(lora.merge(toy_params, adapter, toy_config), toy_config, encoded, batch_size=BATCH)
  flat = lambda r: np.concatenate(r.loglikelihoods)
  np.testing.assert_allclose(flat(with_adapter), flat(merged), atol=1e-4)
  assert not np.allclose(flat(with_adapter), flat(scored), atol=1e-3)


def test_bucket_pads_at_most_a_quarter():
  sizes = [scoring.bucket(n, 16) for n in range(1, 5000)]
  assert all(s >= max(n, 16) and s <= max(n, 16) * 1.25 for n, s in zip(range(1, 5000), sizes))
  assert len(set(sizes)) < 40  # few compiled shapes


def test_item_record_uses_characters_for_acc_norm_and_bytes_for_acc_bytes():
  item = Item("arc", "hi", "x", ("ab", "नमस्ते"), 1, question="q")
  p = prompts.prompt_for(item)
  # "ab": 2 chars, 2 bytes; "नमस्ते": 6 chars, 18 bytes.
  record = scoring.item_record(p, [-3.0, -18.0])
  assert (record["n_chars"], record["n_bytes"]) == ([2, 6], [2, 18])
  # per char: -1.5 vs -3 -> 0; per byte: -1.5 vs -1 -> 1.
  assert (record["pred"], record["pred_norm"], record["pred_bytes"]) == (0, 0, 1)
  record = scoring.item_record(p, [-3.0, -6.0])
  assert (record["pred"], record["pred_norm"]) == (0, 1)
  assert scoring.item_record(p, [-1.0, -1.0])["pred"] == 0  # ties go to the first choice
  assert set(record) >= {"task", "lang", "id", "loglikelihoods", "n_chars", "n_bytes", "gold", "pred",
                         "pred_norm"}


def test_aggregate_means_and_standard_errors():
  records = [{"gold": g, "pred": p, "pred_norm": q, "pred_bytes": 0,
              "loglikelihoods": [-1.0 - (i != g) for i in range(4)]}
             for g, p, q in [(0, 0, 1), (1, 0, 1), (2, 2, 2), (0, 0, 0), (3, 1, 3)]]
  out = scoring.aggregate(records)
  acc = [1.0, 0.0, 1.0, 1.0, 0.0]
  assert out["n"] == 5 and out["acc"] == pytest.approx(0.6) and out["acc_norm"] == pytest.approx(0.8)
  assert out["acc_bytes"] == pytest.approx(0.4)
  assert out["stderr"]["acc"] == pytest.approx(statistics.stdev(acc) / math.sqrt(5))
  assert out["margin"] == pytest.approx(1.0) and out["stderr"]["margin"] == 0.0
  assert scoring.aggregate(records[:1])["stderr"]["acc"] is None
  assert scoring.aggregate([])["acc"] is None
