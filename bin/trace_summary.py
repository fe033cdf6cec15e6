"""Summarise a `bin.bench --profile_dir` trace: per bench row, device busy time and the kernels
that take it.

    python -m bin.trace_summary PROFILE_DIR [--top=12]

Reads the Chrome-format `*.trace.json.gz` that jax.profiler writes. Each row's window is the
host-side TraceAnnotation named after the row; device events (processes named `/device:...`)
inside the window are summed by kernel name. Matrix-unit kernels (cuBLAS/cuDNN/CUTLASS/Triton
GEMMs) are totalled separately, which is what the FLOP-limit fraction is about.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

from absl import flags

from bin import cli
from bin.bench_stacks import ROWS

FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 12, "Kernels listed per row.", lower_bound=1)
_GEMM = re.compile(r"gemm|gemv|cutlass|nvjet|sm90_xmma|cublas|triton_gemm|dot|wgmma|hmma", re.I)


def summarise(trace_path: str, top: int) -> str:
  with gzip.open(trace_path) as f:
    events = json.load(f)["traceEvents"]
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {pid for pid, name in names.items() if name.startswith("/device:")}
  spans = [e for e in events if e.get("ph") == "X"]
  windows = [e for e in spans if e["pid"] not in device_pids and e["name"] in ROWS]
  kernels = [e for e in spans if e["pid"] in device_pids]
  lines = []
  for w in windows:
    start, end = w["ts"], w["ts"] + w["dur"]
    inside = [k for k in kernels if start <= k["ts"] and k["ts"] + k.get("dur", 0) <= end]
    by_name = collections.Counter()
    for k in inside:
      by_name[k["name"][:90]] += k.get("dur", 0)
    busy = sum(by_name.values())
    gemm = sum(d for n, d in by_name.items() if _GEMM.search(n))
    lines.append(f"## {w['name']}: wall {w['dur'] / 1e3:.2f} ms, device busy {busy / 1e3:.2f} ms "
                 f"({len(inside)} kernels), matrix kernels {gemm / 1e3:.2f} ms")
    for name, dur in by_name.most_common(top):
      lines.append(f"  {dur / 1e3:8.3f} ms  {name}")
  return "\n".join(lines) if lines else "no row windows found in the trace"


def main(argv):
  profile_dir = argv[1]
  paths = sorted(glob.glob(os.path.join(profile_dir, "**", "*.trace.json.gz"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"PROFILE_DIR {profile_dir}: no *.trace.json.gz under it (a "
                            "bin.bench --profile_dir folder)")
  print(summarise(paths[-1], FLAGS.top))


if __name__ == "__main__":
  cli.run(main, positional=("PROFILE_DIR",))
