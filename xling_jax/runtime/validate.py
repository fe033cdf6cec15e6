"""Checking what a Python caller hands the API, at its boundary, as the CLIs check their flags:
types and ranges, every number finite, a lone string where a sequence is expected taken as one
item. A wrong type is a TypeError, a wrong value a ValueError; both name the argument
(`AnalysisConfig.bootstrap='200': expected an integer, got str`).

`fields(config)` checks a frozen dataclass against its own annotations (call it first in
`__post_init__`); `value(x, hint, name)` checks one argument against a type hint; `like(x, name,
kind, attrs, how)` checks an object by the attributes the callee reads, for the classes of a
higher floor (a `ModelSetup`, an `SAESetup`) that a lower one may not import.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from collections import abc
from typing import Any, Iterable, Mapping

_SEQUENCES = (tuple, list, abc.Sequence)
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False",
          type(None): "None", os.PathLike: "a path"}


def show(x: Any) -> str:
  """`x` as a message quotes it: its repr when short, else its type in angle brackets."""
  text = repr(x)
  return text if len(text) <= 60 else f"<{type(x).__name__}>"


def describe(hint: Any) -> str:
  """What `hint` admits, in words ("an integer or None", "a sequence of strings")."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(describe(a) for a in args)
  if origin in _SEQUENCES:
    if _fixed_length(origin, args):
      return f"a sequence of {len(args)} ({', '.join(describe(a) for a in args)})"
    return f"a sequence of {_plural(args[0]) if args else 'items'}"
  if origin is abc.Mapping:
    return "a mapping" + (f" of {_plural(args[0])} to {_plural(args[1])}" if args else "")
  if hint is Any:
    return "anything"
  return _NAMES.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _fixed_length(origin, args) -> bool:
  """tuple[int, int] (two items), unlike tuple[int, ...] or Sequence[int]."""
  return origin is tuple and bool(args) and not (len(args) == 2 and args[1] is Ellipsis)


def _plural(hint: Any) -> str:
  words = describe(hint)
  return {"an integer": "integers", "a number": "numbers", "a string": "strings",
          "a path": "paths"}.get(words, words)


def value(x: Any, hint: Any, name: str) -> Any:
  """`x` checked against the type hint `hint` and normalised: an int for `int` (never a bool
  nor "100"), a finite float for `float` (an int is taken), a tuple for a sequence (a lone
  string is one item), a dict for a mapping. `name` names the argument in the error."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any:
    return x
  if origin in (typing.Union, types.UnionType):
    if x is None and type(None) in args:
      return None
    for arg in (a for a in args if a is not type(None)):
      try:
        return value(x, arg, name)
      except TypeError:
        continue
    raise TypeError(f"{name}={show(x)}: expected {describe(hint)}, got {type(x).__name__}")
  if hint is bool:
    if isinstance(x, (bool, _numpy_bool())):
      return bool(x)
  elif hint is int:
    if isinstance(x, numbers.Integral) and not isinstance(x, (bool, _numpy_bool())):
      return int(x)
  elif hint is float:
    if isinstance(x, numbers.Real) and not isinstance(x, (bool, _numpy_bool())):
      if not math.isfinite(x):
        raise ValueError(f"{name}={x!r}: expected a finite number")
      return float(x)
  elif origin in _SEQUENCES:
    return _sequence(x, origin, args, name, hint)
  elif origin is abc.Mapping:
    if isinstance(x, Mapping):
      k, v = args or (Any, Any)
      return {value(key, k, f"{name} key"): value(item, v, f"{name}[{key!r}]")
              for key, item in x.items()}
  elif isinstance(x, hint if origin is None else origin):
    return x
  raise TypeError(f"{name}={show(x)}: expected {describe(hint)}, got {type(x).__name__}")


def _sequence(x: Any, origin, args, name: str, hint) -> tuple:
  if isinstance(x, str) and args and args[0] is str:
    x = (x,)  # "arc" is one task, not three letters
  if isinstance(x, (str, bytes, Mapping)) or not isinstance(x, Iterable):
    raise TypeError(f"{name}={show(x)}: expected {describe(hint)}, got {type(x).__name__}")
  items = tuple(x)
  if _fixed_length(origin, args):
    if len(items) != len(args):
      raise ValueError(f"{name}={show(x)}: expected {describe(hint)}")
    return tuple(value(item, arg, f"{name}[{i}]") for i, (item, arg) in
                 enumerate(zip(items, args)))
  item_hint = args[0] if args else Any
  return tuple(value(item, item_hint, f"{name}[{i}]") for i, item in enumerate(items))


def _numpy_bool():
  import numpy as np
  return np.bool_


def at_least(x: Any, low: float, name: str) -> None:
  """ValueError naming `name` unless `x` (a number or None) is None or >= `low`."""
  if x is not None and not x >= low:
    what = "an integer" if isinstance(x, int) else "a number"
    raise ValueError(f"{name}={x!r}: expected {what} >= {low}")


def fields(config: Any, minimum: Mapping[str, float] | None = None) -> None:
  """Check every field of the frozen dataclass `config` against its annotation (`value`),
  store the normalised values, then check `minimum` ({field: least value}); errors name the
  field as `Class.field`."""
  cls = type(config)
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(config):
    name = f"{cls.__name__}.{f.name}"
    object.__setattr__(config, f.name, value(getattr(config, f.name), hints[f.name], name))
  for field, low in (minimum or {}).items():
    at_least(getattr(config, field), low, f"{cls.__name__}.{field}")


def choice(x: Any, options: Iterable[str], name: str) -> str:
  """`x`, one of `options` (a TypeError for a non-string, a ValueError naming the options)."""
  options = tuple(options)
  value(x, str, name)
  if x not in options:
    raise ValueError(f"{name}={x!r}: choose one of {', '.join(options)}")
  return x


def like(x: Any, name: str, kind: str, attrs: Iterable[str], how: str) -> Any:
  """`x` when it has every attribute in `attrs` (what the callee reads of a `kind`), else a
  TypeError saying what is expected and `how` to make one (swapped or mistyped arguments)."""
  if not all(hasattr(x, a) for a in attrs):
    raise TypeError(f"{name}={show(x)}: expected {kind} ({how}), got {type(x).__name__}")
  return x


def instance(x: Any, cls: type | tuple[type, ...], name: str, how: str = "") -> Any:
  """`x` when it is an instance of `cls`, else a TypeError naming what is expected and `how`
  to make one."""
  if not isinstance(x, cls):
    kinds = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
    article = "an" if kinds[0] in "AEIOU" else "a"
    raise TypeError(f"{name}={show(x)}: expected {article} {kinds}"
                    + (f" ({how})" if how else "") + f", got {type(x).__name__}")
  return x


def model(x: Any, name: str = "setup") -> Any:
  """`x` when it is a loaded model (a `model_setup.ModelSetup`)."""
  return like(x, name, "a ModelSetup", ("params", "config", "tokenizer", "mesh", "is_toy"),
              "model = xj.load_model(...)")


def saes(x: Any, name: str = "saes") -> Any:
  """`x` when it is a set of loaded SAEs (a `model_setup.SAESetup`)."""
  return like(x, name, "an SAESetup", ("params", "layers", "description", "select"),
              "saes = xj.load_saes(model, ...)")
