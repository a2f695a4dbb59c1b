"""LTE x4 super-resolution fakes: the "SR-LTE" column of AntifakePrompt v1 (folder `lte_SR4_224`).

The network is in generators/lte_net.py; the degrade-and-restore recipe, output-size rule and batching
are the ones LIIF and the diffusers upscalers use (generators/superres.py): centre crop so the output
is exactly `scale` x the low-res size, bicubic downscale by `scale`, LTE renders the cropped size.
As in the official demo/test code, the cell size is multiplied by max(scale / scale_max, 1)
(`scale_max` = 4, the largest training scale), which only matters above x4.

Checkpoint: an official LTE file (github.com/jaewon-lee-b/lte, README "Pre-trained models": EDSR-baseline-LTE,
RDN-LTE; SwinIR-LTE is not ported), loaded with `torch.load(weights_only=True)`; a bare state dict or a
`.safetensors` file (official `args` as JSON under "lte_args" in its metadata) works too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fakeforge.config import ConfigError
from generators.superres import ImplicitSRConfig, ImplicitSuperRes, key_mismatch_message, read_official_checkpoint

LTE_ENV = "FAKEFORGE_LTE_MODEL"
LTE_HELP = ("LTE needs an official LTE checkpoint such as edsr-baseline-lte.pth or rdn-lte.pth: download it from "
            "the 'Pre-trained models' links of https://github.com/jaewon-lee-b/lte (README) and point "
            f"generator.model_path or ${LTE_ENV} at it")


def load_lte(path: Path, device: str = "cpu"):
    """Build the LTE a checkpoint describes and load its weights strictly; wrong keys name expected and found."""
    from generators.lte_net import build_from_args, infer_args

    sd, args = read_official_checkpoint(path, "lte", LTE_HELP, "lte_args")
    try:
        inferred = infer_args(sd)
    except (KeyError, IndexError, ValueError) as exc:
        found = ", ".join(list(sd)[:6]) + (" ..." if len(sd) > 6 else "")
        raise ConfigError(f"'{path}' does not hold LTE weights: {exc}. Expected keys such as encoder.head.0.weight "
                          f"or encoder.SFENet1.weight, coef.weight, freq.weight, phase.weight, imnet.layers.0.weight; "
                          f"found {found or 'no keys'}") from None
    enc = dict(args.get("encoder_spec") or inferred["encoder_spec"])  # official args omit widths/depths
    if enc.get("name") == inferred["encoder_spec"]["name"]:
        enc["args"] = {**inferred["encoder_spec"]["args"], **(enc.get("args") or {})}
    args["encoder_spec"] = enc
    imnet = dict(args.get("imnet_spec") or {"name": "mlp"})
    args["imnet_spec"] = {**imnet, "args": {**inferred["imnet_spec"]["args"], **(imnet.get("args") or {})}}
    args.setdefault("hidden_dim", inferred["hidden_dim"])
    try:
        model = build_from_args(args)
    except ValueError as exc:
        raise ConfigError(f"'{path}': {exc}") from None
    expected = list(model.state_dict())
    if sorted(expected) != sorted(sd):
        raise ConfigError(key_mismatch_message(path, "LTE", expected, list(sd)))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"'{path}': weights do not fit the LTE network: {str(exc)[:400]}") from None
    return model.to(device).eval(), args


@dataclass
class LteConfig(ImplicitSRConfig):
    """LTE settings (see ImplicitSRConfig) plus `scale_max`, the largest scale seen in training (cell clipping)."""

    checkpoint_env: ClassVar[str] = LTE_ENV
    checkpoint_name: ClassVar[str] = "lte.pth"
    checkpoint_help: ClassVar[str] = LTE_HELP
    scale_max: float = 4.0

    def validate(self) -> None:
        super().validate()
        if not self.scale_max > 1.0:
            raise ConfigError(f"generator.scale_max = {self.scale_max} must be > 1")


class LteSuperRes(ImplicitSuperRes):
    """Degrade-and-restore super-resolution with LTE (not text-conditioned: the prompt is unused)."""

    config_class = LteConfig

    def load(self) -> None:
        path = self.config.checkpoint_path()
        self.model_file = path
        self.model, self.model_args = load_lte(path, self.device)

    def render(self, lr, out_h: int, out_w: int):
        from generators.liif_net import upsample

        cfg = self.config
        return upsample(self.model, lr, out_h, out_w, cfg.eval_bsize, cell_factor=max(cfg.scale / cfg.scale_max, 1.0))
