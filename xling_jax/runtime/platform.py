"""Choosing the JAX backend from a `--platform` flag, before JAX initialises; joining a
multi-process run (jax.distributed) and saying which process writes the results."""
from __future__ import annotations

import dataclasses
import os
import sys

PLATFORMS = ("cpu", "gpu", "tpu")
_JAX_NAMES = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


@dataclasses.dataclass(frozen=True)
class Distributed:
  """How this process joins a multi-process run: the arguments of `jax.distributed.initialize`.
  None leaves one to JAX's auto-detection (TPU pods, Slurm, Open MPI, Kubernetes)."""
  coordinator_address: str | None = None  # host:port of process 0
  num_processes: int | None = None
  process_id: int | None = None

  def check(self) -> None:
    if self.num_processes is not None and self.num_processes < 1:
      raise ValueError(f"--num_processes={self.num_processes}: must be >= 1")
    if self.process_id is not None and self.num_processes is not None and \
        not 0 <= self.process_id < self.num_processes:
      raise ValueError(f"--process_id={self.process_id}: must lie in 0..{self.num_processes - 1} "
                       f"(--num_processes={self.num_processes})")
    if self.coordinator_address is not None and ":" not in self.coordinator_address:
      raise ValueError(f"--coordinator_address={self.coordinator_address}: expected host:port "
                       "of process 0, e.g. 10.0.0.1:1234")


def select_platform(name: str, distributed: Distributed | None = None) -> None:
  """Make `name` (cpu|gpu|tpu) JAX's backend; ValueError (one line: what is missing, how to
  install it) if it is absent.

  Must run before the first JAX computation: JAX binds its backend once. With `distributed`
  this process joins a multi-process run (`jax.distributed.initialize`), which must also
  precede any computation; on CPU the processes' collectives go through gloo.
  """
  if name not in PLATFORMS:
    raise ValueError(f"--platform={name!r}: choose one of {', '.join(PLATFORMS)}")
  os.environ["JAX_PLATFORMS"] = _JAX_NAMES[name]
  import jax
  try:
    jax.config.update("jax_platforms", _JAX_NAMES[name])
    if distributed is not None:
      distributed.check()
      if name == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
      _initialize(jax, distributed)
    devices = jax.devices()
  except (RuntimeError, AssertionError) as e:  # jax 0.10 asserts when CUDA plugins are absent
    hint = {"gpu": "install the CUDA build: pip install -e '.[cuda]' (see BUILD.md)",
            "tpu": "run on a TPU VM with pip install -e '.[tpu]' (see BUILD.md)"}.get(name, "")
    # JAX's own hint (set JAX_PLATFORMS='' ...) contradicts the flag the user just gave.
    reason = (str(e).splitlines() or [type(e).__name__])[0].split(" (set JAX_PLATFORMS")[0]
    raise ValueError(f"--platform={name}: no {name.upper()} is available to JAX here "
                     f"({reason}); {hint}") from None
  if not devices:
    raise ValueError(f"--platform={name}: JAX found no {name} devices")


def _initialize(jax, distributed: Distributed) -> None:
  try:
    jax.distributed.initialize(**{k: v for k, v in dataclasses.asdict(distributed).items()
                                  if v is not None})
  except (ValueError, RuntimeError) as e:  # nothing auto-detected, coordinator unreachable
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"--distributed: joining the multi-process run failed ({first}); give "
                     "--coordinator_address, --num_processes and --process_id where JAX "
                     "cannot detect them (anywhere but TPU pods and Slurm/MPI clusters)") from None


def is_primary_process() -> bool:
  """True except on the processes other than 0 of a multi-process run: they compute what
  process 0 computes and leave writing results and printing progress to it."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return True
  return jax.process_index() == 0


def describe_host() -> str:
  """The machine, for provenance: CPU model, cores and memory (what float rounding, and so a
  trained SAE's last digits, and every timing depend on)."""
  import platform as stdlib_platform
  model = stdlib_platform.processor() or stdlib_platform.machine()
  memory = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
    with open("/proc/meminfo", encoding="utf-8") as f:
      kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    memory = f", {kib / 2 ** 20:.0f} GiB"
  except (OSError, StopIteration, ValueError):  # not Linux: what the platform module says
    pass
  return f"{model}, {os.cpu_count()} cores{memory}"


def describe_devices() -> str:
  import jax
  devices = jax.devices()
  hosts = f", {jax.process_count()} hosts" if jax.process_count() > 1 else ""
  kinds = sorted({d.device_kind for d in devices})
  return f"{len(devices)} x {', '.join(kinds)} ({jax.default_backend()}{hosts})"
