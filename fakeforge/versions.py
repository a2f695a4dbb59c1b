"""Library versions recorded beside what fakeforge writes (sample metadata, checkpoints, reports)."""
from __future__ import annotations

import importlib.metadata as md
import platform
from typing import Iterable


def library_versions(packages: Iterable[str], missing: str | None = None) -> dict[str, str | None]:
    """`{"python": X.Y.Z, package: version}` for each of `packages` in order; `missing` for one not installed."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = missing
    return out


#: the libraries recorded in every built sample's metadata
BUILD_LIBRARIES = ("fakeforge", "torch", "diffusers", "transformers", "webdataset", "pillow")
#: the libraries that shape a detector's numbers, recorded in every checkpoint
DETECTOR_LIBRARIES = ("fakeforge", "torch", "transformers", "tokenizers", "accelerate", "timm", "open_clip_torch",
                      "scikit-learn", "safetensors", "webdataset")
