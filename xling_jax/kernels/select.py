"""Which implementation each kernel seam runs.

Every seam (`attention`, `sae_stats`) takes `impl=None`, meaning this module's process-wide
choice for it, which starts from the environment (`XLING_ATTENTION`, `XLING_SAE_STATS`, default
"auto") and changes with `set_impl`. Values:

    reference      plain JAX (what the tests compare every fused path against)
    pallas_triton  Pallas lowered through Triton (NVIDIA / AMD GPUs)
    pallas_mosaic  Pallas lowered through Mosaic (TPUs)
    auto           the reference, until the fused kernels have been compiled and timed on a
                   GPU and a TPU (they are exact in interpret mode, but no Triton or Mosaic
                   compile has run them yet; BENCHMARKS.md). `VALIDATED` lists the backends
                   where auto picks a fused kernel: on a single device only (a pallas_call is
                   one custom call that XLA's SPMD partitioner cannot split: on a mesh every
                   device would run the whole batch), and where it takes the shape (`supports`).

A fused choice on CPU runs the kernel in Pallas's interpreter (`interpret`): slower than the
reference there (BENCHMARKS.md), it is how the tests run the kernels. A fused choice for another
accelerator than the one at hand fails when the kernel is lowered.

The choice is read while a function is traced, so it is static: jit specialises on it, and
`set_impl` clears JAX's compilation caches when the choice changes so that no program compiled
under the old one is reused. Nothing is threaded through `model.forward`.
"""
from __future__ import annotations

import os
from typing import Callable

import jax

IMPLS = ("auto", "reference", "pallas_triton", "pallas_mosaic")
KERNELS = ("attention", "sae_stats")
_FUSED = {"gpu": "pallas_triton", "tpu": "pallas_mosaic"}
# Backends whose fused kernel `auto` may pick: add one once its kernels compiled and measured
# faster there (scripts/gpu_kernels.sh). Empty: opt in with XLING_ATTENTION / XLING_SAE_STATS.
VALIDATED: frozenset[str] = frozenset()


def _check(kernel: str, impl: str) -> str:
  if kernel not in KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
  if impl not in IMPLS:
    raise ValueError(f"{kernel} impl {impl!r}; choose one of {IMPLS}")
  return impl


_choice = {k: _check(k, os.environ.get(f"XLING_{k.upper()}", "auto")) for k in KERNELS}


def set_impl(kernel: str, impl: str) -> None:
  """Make `impl` the process-wide choice for `kernel` ("attention" or "sae_stats")."""
  if _check(kernel, impl) != _choice[kernel]:
    _choice[kernel] = impl
    jax.clear_caches()


def get_impl(kernel: str) -> str:
  """The process-wide choice for `kernel` (possibly "auto")."""
  return _choice[kernel]


def resolve(kernel: str, impl: str | None, supports: Callable[[str], bool]) -> str:
  """The concrete implementation for one call: `impl` (None: the process-wide choice), "auto"
  decided by the default backend and by `supports(fused_impl)`, whether the fused kernel takes
  this call's shapes (an explicit fused choice that does not is the kernel's error to raise)."""
  impl = _check(kernel, _choice[kernel] if impl is None else impl)
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  fused = _FUSED.get(backend) if backend in VALIDATED else None
  if fused is None or jax.device_count() > 1 or not supports(fused):
    return "reference"
  return fused


def fused_for(backend: str) -> str | None:
  """The fused implementation written for `backend` (None: none), validated or not."""
  return _FUSED.get(backend)


def interpret() -> bool:
  """Whether a fused kernel must run in Pallas's interpreter: Pallas compiles for GPUs and TPUs
  only, so a fused choice on CPU (the tests') is interpreted."""
  return jax.default_backend() == "cpu"
