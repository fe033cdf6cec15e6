"""What the study is checked against, in one place: the numbers of arXiv 2507.18918 and of the
Gemma 3 model card. `verdicts` compares a run with them; `stages` runs the card's protocol.

The paper's layer bands and objective layer are settings of the analysis and the adapters
(`analysis.disparity.default_bands`, `lora.objectives.default_objective_layer`), which sit
below the study and so keep them.
"""
from __future__ import annotations

from typing import NamedTuple

ARXIV = "2507.18918"
MODEL = "Gemma-2-2B"
SAES = "Gemma Scope"
# As quoted in the paper's abstract: the largest activation gaps (%) of low-resource languages
# below English in the early and the deep layers, the activation gains (%) of the LoRA
# fine-tuning per language, the share (%) of English activation it keeps, and what it does to
# the benchmarks.
PAPER = {"early_gap_max": 26.27, "deep_gap_max": 19.89, "lora_gain": {"ml": 87.69, "hi": 86.32},
         "english_retention": 91.0, "benchmarks": "modest gains"}


class CardProtocol(NamedTuple):
  shots: int
  subsample: int | None  # items of lm-eval's fixed subsample; None: the whole test set


# How the Gemma 3 model cards score the pretrained models' English: HellaSwag 10-shot on
# lm-eval's 1000-item subsample, ARC-Challenge 25-shot on the whole test set.
CARD_PROTOCOL = {"hellaswag": CardProtocol(10, 1000), "arc": CardProtocol(25, None)}
# What the card publishes for each checkpoint, in %, under CARD_PROTOCOL.
MODEL_CARD = {"gemma3-270m": {"hellaswag": 40.9, "arc": 29.0}}
