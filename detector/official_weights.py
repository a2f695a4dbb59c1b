"""Published weight files (`.pth`) of CNNSpot, NPR and UnivFD as detectors, reading tensors only.

`--checkpoint FILE.pth` (detect, eval, the side-by-side eval) opens such a file:

* CNNSpot `blur_jpg_prob0.5.pth`, `blur_jpg_prob0.1.pth`: `{'model': resnet50 state dict, 'optimizer': ...,
  'total_steps': n}` -> `cnnspot`;
* NPR `NPR.pth`, `model_epoch_last_3090.pth`: the truncated ResNet's plain state dict (`conv1`, `bn1`,
  `layer1-2`, `fc1`) -> `npr`;
* UnivFD `fc_weights.pth`: the linear head's state dict `{'weight': [1, 768], 'bias': [1]}` on CLIP ViT-L/14 ->
  `linear_probe`.

The file is read with `torch.load(weights_only=True)`: a pickle that would build any object other than tensors
and plain containers is refused in one line, before anything runs. A `module.` prefix (DataParallel) is removed;
the family is recognised from the key names; the tensors must then be exactly the detector's (missing, unexpected
and wrongly shaped tensors are refused, naming the first few; BatchNorm `num_batches_tracked` counters, absent from
files saved by old torch versions, are the only tensors that may be missing).
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from detector.errors import CheckpointError

SUFFIXES = (".pth", ".pt")
_COUNTERS = "num_batches_tracked"


def is_weight_file(path) -> bool:
    """True for an existing `.pth`/`.pt` file (not a checkpoint folder)."""
    p = Path(str(path))
    return p.suffix.lower() in SUFFIXES and p.is_file()


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside an official file: tensors only, unwrapped from {'model': ...} / {'state_dict': ...},
    without a `module.` prefix."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "unsupported global"
        raise CheckpointError(f"'{path}' is refused: the pickle holds code or objects other than tensors "
                              f"({first})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read '{path}' as a torch weight file: {str(exc).strip()[:200]}") from None
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"'{path}' holds a {type(data).__name__}, not a state dict of tensors")
    odd = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"'{path}': entries {odd[:5]} are not named tensors")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def family_of(state: dict[str, torch.Tensor]) -> str | None:
    """The detector a state dict's key names belong to (None: none of the known layouts)."""
    keys = set(state)
    if keys == {"weight", "bias"}:
        return "linear_probe"
    if "fc1.weight" in keys and "layer2.0.conv1.weight" in keys:
        return "npr"
    if "fc.weight" in keys and "layer4.0.conv1.weight" in keys:
        return "cnnspot"
    return None


def official_detector_name(path: str | Path) -> str | None:
    """The detector name of an official weight file, or None when its keys match no known layout (a LAVIS
    AntifakePrompt checkpoint, another model)."""
    return family_of(read_weight_file(path))


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str,
                  detector: str) -> None:
    """Refuse missing, unexpected or wrongly shaped tensors, naming the first few of each."""
    missing = sorted(k for k in set(expected) - set(tensors) if not k.endswith(_COUNTERS))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k} {tuple(tensors[k].shape)} (needs {tuple(expected[k].shape)})" for k in sorted(tensors)
              if k in expected and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:3]}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                           ("wrong shapes", shapes)) if items]
        raise CheckpointError(f"{source} does not fit {detector!r}: {'; '.join(parts)}")


def load_official_into(detector, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Copy an official CNNSpot/NPR/DIRE file's tensors into a built detector of that family (strict, see above)."""
    state = read_weight_file(path) if state is None else state
    source = f"official weight file '{path}'"
    found = family_of(state)
    layout = getattr(detector, "official_layout", detector.name)  # DIRE's files have CNNSpot's layout
    if found != layout:
        raise CheckpointError(f"{source} has the key layout of {found or 'no known detector'!r}, not "
                              f"{detector.name!r}")
    tensors = type(detector).official_keys(state)
    expected = detector.checkpoint_state()
    check_tensors(tensors, expected, source, detector.name)
    merged = {**{k: v for k, v in expected.items() if k.endswith(_COUNTERS)}, **tensors}
    detector.load_checkpoint_state({k: v.to(expected[k].dtype) for k, v in merged.items()}, source=source)


def load_official(cls, path: str | Path, device=None, tiny: bool = False):
    """Build `cls` from its default config (`tiny`: on the tiny twin) and load the official file's tensors."""
    state = read_weight_file(path)
    found = family_of(state)
    source = f"official weight file '{path}'"
    if found != cls.name:
        raise CheckpointError(f"{source} has the key layout of {found or 'no known detector'!r}, not {cls.name!r}")
    config = cls.config_class()
    if tiny:
        config = config.to_tiny()
    if cls.name == "linear_probe":
        detector = cls.from_config(config, device=device)
        tensors = {"head.weight": state["weight"], "head.bias": state["bias"]}
        expected = {k: v for k, v in detector.checkpoint_state().items() if k.startswith("head.")}
        check_tensors(tensors, expected, source, cls.name)
        detector.head.load_state_dict({"weight": tensors["head.weight"], "bias": tensors["head.bias"]})
        # UnivFD applies its head to the raw CLIP features: standardisation stays identity (mean 0, std 1)
    else:
        detector = cls.from_config(config, device=device, pretrained=False, init=False)
        load_official_into(detector, path, state)
    detector.eval()
    detector.checkpoint_meta = {"format": "official .pth", "file": str(path), "detector": cls.name,
                                "trainable_parameters": detector.num_trainable(),
                                "training": {"source": f"converted from official checkpoint {Path(path).name}"}}
    return detector
