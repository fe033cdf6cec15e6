"""How the benchmark tools time: the median of timed calls that take turns, a row that runs out
of device memory as a note instead of a crash, and the micro-benchmarks' main
(`report_benchmark`)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable, Sequence


def median_seconds(calls: dict[Hashable, Callable[[], object]], repeats: int, warmup: int = 1,
                   settle_s: float = 0.0) -> dict[Hashable, float]:
  """{name: blocking call} -> {name: median wall seconds of `repeats` timed calls}, after
  `warmup` untimed rounds (compile / allocate). The calls take turns round by round (a, b, a, b,
  ...), so a machine whose speed drifts within the run (a shared VM, other processes) slows every
  call alike instead of whichever ran during the slow minutes. `settle_s`: a pause after each
  call, untimed, so that one library's spinning worker threads go idle before the next is timed."""
  times = {name: [] for name in calls}
  for round_ in range(warmup + repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      if round_ >= warmup:
        times[name].append(time.perf_counter() - start)
      if settle_s:
        time.sleep(settle_s)
  return {name: statistics.median(t) for name, t in times.items()}


def rates_or_notes(calls: Sequence[Callable[[], object]], repeats: int, n_tokens: int,
                   out_of_memory: Sequence[tuple[type, ...]]) -> list[tuple]:
  """[(tokens/s, None) or (None, why)] for calls timed in turns (`median_seconds`);
  `out_of_memory[i]` are the exceptions meaning that calls[i] ran out of device memory: that call
  becomes a note, the others are still timed (one row that does not fit must not cost the rest
  of the table)."""
  results, live = [None] * len(calls), {}
  for i, (call, oom) in enumerate(zip(calls, out_of_memory)):
    try:
      call()  # whether it fits; the timing warms up again
      live[i] = call
    except oom as e:
      if isinstance(e, RuntimeError) and "RESOURCE_EXHAUSTED" not in str(e) \
          and "out of memory" not in str(e).lower():
        raise
      results[i] = (None, f"out of device memory: {str(e).splitlines()[0][:200]}")
  for i, seconds in median_seconds(live, repeats).items():
    results[i] = (n_tokens / seconds, None)
  return results


def report_benchmark(measure, format_table, json_path: str | None) -> None:
  """The micro-benchmarks' main: check --json is writable first, measure, print the table,
  write the result to --json atomically."""
  from xling_jax.runtime import io
  if json_path:
    io.check_output_file(json_path, "--json")
  result = measure()
  print(format_table(result))
  if json_path:
    io.write_json(json_path, result)
