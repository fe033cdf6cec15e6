"""One batch-rows policy and one dispatch/collect loop for the analysis and the scoring."""
from __future__ import annotations

import types

import pytest

from xling_jax.runtime import batching


def test_batch_rows_caps_at_the_data_and_rounds_to_the_mesh():
  mesh4 = types.SimpleNamespace(shape={"data": 4, "model": 2})
  assert batching.batch_rows(16, 1000) == 16
  assert batching.batch_rows(4096, 12) == 12  # no padding up to an out-of-memory batch
  assert batching.batch_rows(4096, 10, mesh4) == 12
  assert batching.batch_rows(3, 1000, mesh4) == 4
  assert batching.batch_rows(8, 0) == 1
  with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
    batching.batch_rows(0, 10)


def test_pipelined_dispatches_the_next_batch_before_collecting_the_previous():
  events = []
  batching.pipelined(range(3), lambda b: events.append(f"dispatch {b}") or b * 10,
                     lambda b, out: events.append(f"collect {b}={out}"))
  assert events == ["dispatch 0", "dispatch 1", "collect 0=0", "dispatch 2", "collect 1=10",
                    "collect 2=20"]
  batching.pipelined([], lambda b: 1 / 0, lambda b, out: 1 / 0)  # nothing to do
