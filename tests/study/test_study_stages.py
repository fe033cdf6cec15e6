"""The stage table: from the committed study's settings it plans the stages and commands that
study ran, and a stage is done once its tool has written the files the table names."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from tests.conftest import REPO
from xling_jax.evaluation import run as evaluation
from xling_jax.study import stages

RECORD = json.loads((REPO / "results" / "study.json").read_text(encoding="utf-8"))


def test_the_table_plans_the_committed_studys_stages_and_commands():
  commands = {name: timing["command"] for name, timing in RECORD["stages"].items()}
  out = Path(shlex.split(commands["intrinsic"])[-1].split("=", 1)[1]).parent
  plan = stages.plan(out, RECORD["settings"], card_check=bool(RECORD["card"]))
  assert [s.name for s in plan] == list(commands)
  for stage in plan:
    assert shlex.join(["python", "-m", stage.tool, *stage.args]) == commands[stage.name]
  assert stages.plan(out, {**RECORD["settings"], "sae_dir": "brought"})[1].kind == stages.ANALYSIS


def test_a_stage_is_done_once_its_tool_wrote_its_results(tmp_path):
  card = stages.plan(tmp_path, RECORD["settings"], card_check=True, card_limit=5)[-1]
  assert card.folder == tmp_path / "card_arc_limit5" and not card.is_done()
  metrics = dict.fromkeys(evaluation.METRICS, 0.5)
  scores = {"arc": {"en": {**metrics, "stderr": metrics, "n": 2, "n_too_long": 0}}}
  result = evaluation.EvalResult(evaluation.EvalConfig(source="hf"), scores, [], [], [], 128, ())
  evaluation.write_outputs(card.folder, result, {"flags": {"num_fewshot": 25}}, "md")
  assert card.is_done()
  assert card.read()["scores"] == scores
  assert card.read()["run"]["flags"] == {"num_fewshot": 25}
