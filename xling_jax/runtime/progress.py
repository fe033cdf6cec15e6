"""Progress lines for long loops: items/s and ETA on stderr, at most a few per second."""
from __future__ import annotations

import sys
import time

from xling_jax.runtime.platform import is_primary_process


class Progress:
  """`update(n)` after each chunk of work; prints `label: done/total (rate unit/s, ETA)`."""

  def __init__(self, total: int, label: str, unit: str = "sentences", stream=None,
               min_interval_s: float = 0.5, enabled: bool = True):
    self.total, self.label, self.unit = total, label, unit
    self.stream = stream or sys.stderr
    self.min_interval_s = min_interval_s
    self.enabled = enabled and is_primary_process()  # one progress line per run, not per host
    self.done = 0
    self.start = time.perf_counter()
    self._last_print = 0.0

  def update(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if self.enabled and (now - self._last_print >= self.min_interval_s or self.done >= self.total):
      self._last_print = now
      self.stream.write(self.line(now) + ("\n" if self.done >= self.total else "\r"))
      self.stream.flush()

  def line(self, now: float | None = None) -> str:
    elapsed = (now or time.perf_counter()) - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    eta_text = f"ETA {eta:5.1f}s" if eta != float("inf") else "ETA ?"
    return (f"{self.label}: {self.done}/{self.total} {self.unit} "
            f"({rate:.1f} {self.unit}/s, {eta_text})")
