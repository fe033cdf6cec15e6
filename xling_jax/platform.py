"""Choosing the JAX backend from a `--platform` flag, before JAX initialises."""
from __future__ import annotations

import os

PLATFORMS = ("cpu", "gpu", "tpu")
_JAX_NAMES = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


def select_platform(name: str, distributed: bool = False) -> None:
  """Make `name` (cpu|gpu|tpu) JAX's backend, or exit with a clear message if it is absent.

  Must run before the first JAX computation: JAX binds its backend once. `distributed` calls
  `jax.distributed.initialize()` (multi-host), which must also precede any computation.
  """
  if name not in PLATFORMS:
    raise SystemExit(f"--platform={name!r}: choose one of {', '.join(PLATFORMS)}")
  os.environ["JAX_PLATFORMS"] = _JAX_NAMES[name]
  import jax
  try:
    jax.config.update("jax_platforms", _JAX_NAMES[name])
    if distributed:
      jax.distributed.initialize()
    devices = jax.devices()
  except (RuntimeError, AssertionError) as e:  # jax 0.10 asserts when CUDA plugins are absent
    hint = {"gpu": "install the CUDA build: pip install -e '.[cuda]' (see BUILD.md)",
            "tpu": "run on a TPU VM with pip install -e '.[tpu]' (see BUILD.md)"}.get(name, "")
    raise SystemExit(f"--platform={name}: no {name.upper()} is available to JAX here "
                     f"({(str(e).splitlines() or [type(e).__name__])[0]}). {hint}") from None
  if not devices:
    raise SystemExit(f"--platform={name}: JAX found no {name} devices")


def describe_devices() -> str:
  import jax
  devices = jax.devices()
  hosts = f", {jax.process_count()} hosts" if jax.process_count() > 1 else ""
  kinds = sorted({d.device_kind for d in devices})
  return f"{len(devices)} x {', '.join(kinds)} ({jax.default_backend()}{hosts})"
