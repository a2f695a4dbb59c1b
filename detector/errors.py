"""The detector side's error type (a leaf module: everything that reads or writes checkpoints raises it)."""
from __future__ import annotations

from fakeforge.config import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used here: wrong format, another detector or backbone, bad tensors."""
