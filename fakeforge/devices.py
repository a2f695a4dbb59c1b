"""Device and dtype choice shared by every model-running component."""
from __future__ import annotations

import torch

from fakeforge.config import ConfigError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """"auto"/None: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 (or fp16) on CUDA, fp32 on CPU; else the named dtype."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"dtype = {name!r} must be one of {['auto', *table]}")
    return table[name]
