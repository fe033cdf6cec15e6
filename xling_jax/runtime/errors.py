"""Errors a user can cause, shared by the loaders (kept apart so readers can import them without
importing each other)."""


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable or disagrees with the model config."""


class NonFiniteError(FloatingPointError):
  """NaN/inf where a number was computed from the user's weights or data."""
