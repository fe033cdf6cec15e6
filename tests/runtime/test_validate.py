"""runtime.validate: the API's argument checks (types, ranges, finite numbers, a lone string as
one item), each message naming the argument."""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np
import pytest

from xling_jax.runtime import validate


@pytest.mark.parametrize("x,hint,expected", [
    (3, int, 3), (np.int64(3), int, 3), (3, float, 3.0), (np.float32(0.5), float, 0.5),
    ("arc", Sequence[str], ("arc",)), (["q", "up"], tuple[str, ...], ("q", "up")),
    (range(3), tuple[int, ...], (0, 1, 2)), (None, int | None, None), ("16k", str | int, "16k"),
    (4096, str | int, 4096), ({"early": [0, 8]}, Mapping[str, tuple[int, int]], {"early": (0, 8)}),
    ("/tmp", str | os.PathLike, "/tmp"), (np.bool_(True), bool, True),
])
def test_accepted_and_normalised(x, hint, expected):
  got = validate.value(x, hint, "arg")
  assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("x,hint,error,message", [
    ("200", int, TypeError, "arg='200': expected an integer, got str"),
    (True, int, TypeError, "arg=True: expected an integer, got bool"),
    (2.5, int, TypeError, "expected an integer, got float"),
    (float("nan"), float, ValueError, "arg=nan: expected a finite number"),
    (float("inf"), float | None, ValueError, "expected a finite number"),
    ("1,2", tuple[int, ...], TypeError, "arg='1,2': expected a sequence of integers, got str"),
    ([1, "2"], tuple[int, ...], TypeError, r"arg\[1\]='2': expected an integer"),
    ({"a": (1, 2, 3)}, Mapping[str, tuple[int, int]], ValueError, r"arg\['a'\]=\(1, 2, 3\)"),
    (123, str | os.PathLike | None, TypeError, "expected a string or a path or None, got int"),
    ({"tasks": "arc"}, tuple[str, ...], TypeError, "expected a sequence of strings, got dict"),
])
def test_refused_with_the_argument_named(x, hint, error, message):
  with pytest.raises(error, match=message):
    validate.value(x, hint, "arg")


@dataclasses.dataclass(frozen=True)
class Settings:
  steps: int = 10
  lr: float = 1e-3
  names: tuple[str, ...] = ("a",)
  limit: int | None = None

  def __post_init__(self):
    validate.fields(self, minimum={"steps": 1, "limit": 1})


def test_fields_check_and_normalise_a_frozen_dataclass():
  assert Settings(lr=1, names="b") == Settings(lr=1.0, names=("b",))
  with pytest.raises(TypeError, match="Settings.steps='100': expected an integer, got str"):
    Settings(steps="100")
  with pytest.raises(ValueError, match="Settings.limit=0: expected an integer >= 1"):
    Settings(limit=0)
  with pytest.raises(ValueError, match="Settings.lr=inf: expected a finite number"):
    Settings(lr=float("inf"))


def test_objects_of_higher_floors_are_checked_by_what_is_read():
  with pytest.raises(TypeError, match=r"setup='toy': expected a ModelSetup \(model = "
                                      r"xj.load_model\(...\)\), got str"):
    validate.model("toy")
  long = "x" * 100
  with pytest.raises(TypeError, match=r"saes=<str>: expected an SAESetup"):
    validate.saes(long)
  with pytest.raises(ValueError, match="mode='fast': choose one of a, b"):
    validate.choice("fast", ("a", "b"), "mode")
