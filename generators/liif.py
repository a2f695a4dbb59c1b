"""LIIF arbitrary-scale super-resolution fakes (the network is in generators/liif_net.py).

Same degrade-and-restore recipe and output-size rule as the diffusers upscalers
(generators/superres.py): the source is centre-cropped so the low-res size is an integer and the
output exactly `scale` x low-res (for x4: the source cropped to a multiple of 4), downscaled by
`scale` (bicubic, as LIIF's own benchmarks do) and rendered back by LIIF at the cropped size.
Sources longer than `max_size` are downscaled first (recorded as `sr_resized_from`).

Checkpoint: the official `edsr-baseline-liif.pth` (github.com/yinboc/liif, README "Pre-trained
models", Google Drive), loaded with `torch.load(weights_only=True)`: it holds only dicts, tensors and
strings. A bare state dict, or a `.safetensors` file (optionally with the official `args` as JSON
in its metadata under "liif_args"), works too; widths/depths missing from `args` are read off the
tensor shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fakeforge.config import ConfigError
from generators.superres import ImplicitSRConfig, ImplicitSuperRes, read_official_checkpoint

LIIF_ENV = "FAKEFORGE_LIIF_MODEL"
LIIF_HELP = ("LIIF needs an official LIIF checkpoint such as edsr-baseline-liif.pth: download it from the "
             "'Pre-trained models' links of https://github.com/yinboc/liif (README) and point "
             f"generator.model_path or ${LIIF_ENV} at it")


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state dict, official args spec) from an official .pth, a bare state dict, or .safetensors.
    Any file of the wrong kind raises ConfigError naming the file."""
    return read_official_checkpoint(path, "liif", LIIF_HELP, "liif_args")


def load_liif(path: Path, device: str = "cpu"):
    """Build the LIIF described by a checkpoint and load its weights strictly (key names must match)."""
    from generators.liif_net import build_from_args, infer_args

    sd, args = read_checkpoint(path)
    try:
        inferred = infer_args(sd)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"'{path}' does not hold LIIF weights (encoder.head / imnet.layers): {exc}") from None
    enc = dict(args.get("encoder_spec") or {"name": "edsr-baseline"})  # official args omit widths/depths:
    depth = {k: inferred["encoder_spec"]["args"][k] for k in ("n_resblocks", "n_feats")}  # read them off the shapes
    args["encoder_spec"] = {**enc, "args": {**depth, **(enc.get("args") or {})}}
    imnet = dict(args.get("imnet_spec") or {"name": "mlp"})
    args["imnet_spec"] = {**imnet, "args": {**inferred["imnet_spec"]["args"], **(imnet.get("args") or {})}}
    for flag in ("feat_unfold", "cell_decode"):
        args.setdefault(flag, inferred[flag])
    try:
        model = build_from_args(args)
        model.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"'{path}': weights do not fit the LIIF network: {str(exc)[:400]}") from None
    return model.to(device).eval(), args


@dataclass
class LiifConfig(ImplicitSRConfig):
    """LIIF settings (see ImplicitSRConfig): model_path, scale, eval_bsize, min_size, max_size."""

    checkpoint_env: ClassVar[str] = LIIF_ENV
    checkpoint_name: ClassVar[str] = "liif.pth"
    checkpoint_help: ClassVar[str] = LIIF_HELP


class LiifSuperRes(ImplicitSuperRes):
    """Degrade-and-restore super-resolution with LIIF (not text-conditioned: the prompt is unused)."""

    config_class = LiifConfig

    def load(self) -> None:
        path = self.config.checkpoint_path()
        self.model_file = path
        self.model, self.model_args = load_liif(path, self.device)
