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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from fakeforge.config import ConfigError
from generators.base import Generator, GenRequest, GenResult, SampleError
from generators.checkpoint_file import RUN_DTYPE, CheckpointFileConfig
from generators.source_image import (
    PREPARE_ERRORS,
    check_min_size,
    check_size_limits,
    describe,
    group_by_size,
    source_rgb,
)
from generators.superres import output_to_result, plan_sr

LIIF_ENV = "FAKEFORGE_LIIF_MODEL"
LIIF_HELP = ("LIIF needs an official LIIF checkpoint such as edsr-baseline-liif.pth: download it from the "
             "'Pre-trained models' links of https://github.com/yinboc/liif (README) and point "
             f"generator.model_path or ${LIIF_ENV} at it")


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state dict, official args spec) from an official .pth, a bare state dict, or .safetensors.
    Any file of the wrong kind raises ConfigError naming the file."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            args = json.loads(meta["liif_args"]) if "liif_args" in meta else {}
        except Exception as exc:  # noqa: BLE001 - wrong kind of file
            raise ConfigError(f"'{path}' is not a readable LIIF safetensors file: {exc}") from None
        return sd, args
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles with code, text files, truncated files
        raise ConfigError(f"'{path}' is not a LIIF checkpoint: torch.load(weights_only=True) failed "
                          f"({type(exc).__name__}: {str(exc)[:200]}). {LIIF_HELP}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "sd" in obj["model"]:
        spec = obj["model"]
        if spec.get("name", "liif") != "liif":
            raise ConfigError(f"'{path}' holds a '{spec.get('name')}' model, not 'liif'")
        return dict(spec["sd"]), dict(spec.get("args") or {})
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    raise ConfigError(f"'{path}' is not a LIIF checkpoint: expected {{'model': {{'name': 'liif', 'args': ..., "
                      f"'sd': state_dict}}}} or a state dict, got {type(obj).__name__}. {LIIF_HELP}")


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
class LiifConfig(CheckpointFileConfig):
    """LIIF settings.

    model_path: the .pth/.safetensors checkpoint (or a folder holding liif.pth); model_id (set by --tiny
        to the twin folder) takes precedence, $FAKEFORGE_LIIF_MODEL is the fallback. dtype: auto or
        float32 (LIIF runs in float32).
    scale: super-resolution factor (any value > 1; x4 as in the AntifakePrompt "SR" sets).
    eval_bsize: pixels queried per MLP call (bounds memory; the official demo uses 30000).
    min_size / max_size: skip sources whose shorter side is below min_size; downscale sources whose
        longer side exceeds max_size before degrading.
    """

    checkpoint_env: ClassVar[str] = LIIF_ENV
    checkpoint_name: ClassVar[str] = "liif.pth"
    checkpoint_help: ClassVar[str] = LIIF_HELP
    scale: float = 4.0
    eval_bsize: int = 30000
    min_size: int = 16
    max_size: int = 2048

    def validate(self) -> None:
        super().validate()
        if not self.scale > 1.0:
            raise ConfigError(f"generator.scale = {self.scale} must be > 1")
        if self.eval_bsize < 1:
            raise ConfigError(f"generator.eval_bsize = {self.eval_bsize} must be >= 1")
        check_size_limits(self.min_size, self.max_size)


class LiifSuperRes(Generator):
    """Degrade-and-restore super-resolution with LIIF (not text-conditioned: the prompt is unused)."""

    config_class = LiifConfig
    needs_source_image = True

    def load(self) -> None:
        path = self.config.checkpoint_path()
        self.model_file = path
        self.model, self.model_args = load_liif(path, self.device)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        import torch

        from generators.liif_net import upsample

        cfg = self.config
        results: list[GenResult | None] = [None] * len(requests)
        plans = []
        for i, req in enumerate(requests):
            try:
                src = source_rgb(req)
                check_min_size(src, cfg.min_size)
                plan = plan_sr(src, cfg.scale, 1, cfg.max_size)
                plan.extra["source_image_id"] = req.source_image_id or str(req.meta.get("image_id", ""))
                plans.append((i, plan))
            except PREPARE_ERRORS as exc:
                results[i] = GenResult(error=describe(exc))
        for idx in group_by_size(plans, lambda item: (item[1].lr.size, item[1].out_size)):
            group = [plans[j] for j in idx]
            lr = torch.stack([torch.from_numpy(np.array(p.lr)).permute(2, 0, 1) for _, p in group])
            lr = lr.to(self.device, torch.float32) / 255.0
            ow, oh = group[0][1].out_size
            out = upsample(self.model, lr, oh, ow, cfg.eval_bsize).permute(0, 2, 3, 1).cpu().numpy()
            for (i, plan), arr in zip(group, out):
                try:
                    results[i] = output_to_result(arr, plan)
                except SampleError as exc:
                    results[i] = GenResult(error=str(exc))
        return results  # type: ignore[return-value]

    def settings(self) -> dict:
        data = super().settings()
        data["model_file"] = str(getattr(self, "model_file", "")) or None
        data["dtype_resolved"] = RUN_DTYPE
        return data
