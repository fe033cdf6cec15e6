"""The final report of each trained SAE: `layer_{L}.json` and `layer_{L}.png` (loss and L0
curves from the training log)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from xling_jax.runtime import io

CURVES = ("loss", "mse", "l0", "fvu", "dead_fraction", "dense_fraction")


def curves(records: Sequence[Mapping], index: int) -> dict[str, list[float]]:
  """Layer `index`'s curves from the log records (each holds one value per layer)."""
  out = {"step": [r["step"] for r in records]}
  out.update({name: [r[name][index] for r in records] for name in CURVES})
  return out


def files(directory: str | Path, layer: int) -> dict[str, Path]:
  """Where `write` puts layer `layer`'s report: {"json": layer_{layer}.json, "png": ...}."""
  directory = Path(directory)
  return {"json": directory / f"layer_{layer}.json", "png": directory / f"layer_{layer}.png"}


def write(directory: str | Path, layer: int, summary: Mapping, curve: Mapping[str, list],
          target_l0: float | None = None) -> dict[str, Path]:
  """`summary` (JSON-able) plus `curve` as layer_{layer}.json, and the curves as a PNG."""
  paths = files(directory, layer)
  png = plot_png(layer, curve, target_l0)  # rendered before either file is written
  io.write_text(paths["json"], json.dumps({**summary, "curves": curve}, indent=2) + "\n")
  io.write_bytes(paths["png"], png)
  return paths


def plot_png(layer: int, curve: Mapping[str, list], target_l0: float | None) -> bytes:
  """The loss and L0 curves of one layer's training as PNG bytes."""
  from io import BytesIO

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (loss_ax, l0_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
  loss_ax.plot(curve["step"], curve["loss"], label="loss")
  loss_ax.plot(curve["step"], curve["mse"], label="MSE (normalised inputs)")
  loss_ax.plot(curve["step"], curve["fvu"], label="FVU")
  loss_ax.set_yscale("log")
  loss_ax.set_xlabel("step")
  loss_ax.legend(fontsize=8)
  l0_ax.plot(curve["step"], curve["l0"], label="L0")
  if target_l0 is not None:
    l0_ax.axhline(target_l0, color="gray", linestyle="--", label=f"target {target_l0:g}")
  l0_ax.set_xlabel("step")
  l0_ax.set_ylabel("active features per token")
  l0_ax.legend(fontsize=8)
  for ax in (loss_ax, l0_ax):
    ax.grid(alpha=0.3)
  fig.suptitle(f"JumpReLU SAE, layer {layer}", fontsize=10)
  fig.tight_layout()
  data = BytesIO()
  fig.savefig(data, format="png", dpi=110)
  plt.close(fig)
  return data.getvalue()
