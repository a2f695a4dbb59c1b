"""ISSBA: an invisible, sample-specific trigger made by a StegaStamp-style encoder."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from attacks.base import BackdoorAttack, check_number
from attacks.stegastamp import CONFIG_NAME, WEIGHTS_NAME, load_stegastamp, secret_bits
from fakeforge.config import ConfigError, MissingCheckpointError

WEIGHTS_ENV = "FAKEFORGE_ISSBA_MODEL"
WEIGHTS_HELP = ("ISSBA needs a StegaStamp encoder/decoder folder (config.json + model.safetensors). No PyTorch "
                "weights are published in a standard layout (ISSBA's release is a TensorFlow SavedModel): train "
                "a pair on your photos with `python -m attacks.stegastamp --images DIR --out DIR` (see "
                "docs/attacks.md) and point model_id or $" + WEIGHTS_ENV + " at it; `--tiny` uses the tiny "
                "twin 'issba_stegastamp'")


class MissingWeightsError(MissingCheckpointError):
    """The encoder-weights folder is missing (the message says how to get it)."""


class ISSBA(BackdoorAttack):
    r"""ISSBA, "Invisible Backdoor Attack with Sample-Specific Triggers" (Li et al., ICCV 2021,
    https://arxiv.org/abs/2012.03816).

    Threat model: training-set poisoning; a StegaStamp encoder hides a fixed code in each image as an
    invisible residual that differs per image (sample-specific); poisoned samples are relabelled to
    `target_class` (dirty-label). AntifakePrompt's backdoor test set names this attack.
    The model is the encoder/decoder folder (`attacks.stegastamp`); the decoder checks the trigger.

    Arguments:
        model (StegaStamp): encoder/decoder pair (`load_model(folder)`).
        secret (str): text the fixed code is derived from (SHA-256 bits, the pair's secret_size of them).
            Default "fakeforge".
        residual_scale (float): multiplier of the encoder's residual, > 0. Default 1.0.
        min_bit_accuracy (float): share of code bits the decoder must recover for the trigger to count
            as present, in (0.5, 1]. Default 0.9.
        target_class (int): label the victim is taught for triggered inputs (recorded). Default 0.

    Shape: images (B, 3, H, W) in [0, 1] of any size (the encoder works at its own resolution; the
    residual is resized to the image); output like images.

    Example::
        >>> attack = ISSBA(ISSBA.load_model("weights/stegastamp", "cuda", torch.float32), secret="fakeforge")
        >>> poisoned = attack(images)
    """

    needs_model = True

    def __init__(self, model=None, secret: str = "fakeforge", residual_scale: float = 1.0,
                 min_bit_accuracy: float = 0.9, target_class: int = 0):
        super().__init__("issba", model)
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"issba.secret = {secret!r} must be a non-empty string")
        check_number("issba.residual_scale", residual_scale, 0.0, None, lo_open=True)
        check_number("issba.min_bit_accuracy", min_bit_accuracy, 0.5, 1.0, lo_open=True)
        check_number("issba.target_class", target_class, 0, None, integer=True)
        self.secret, self.residual_scale = secret, residual_scale
        self.min_bit_accuracy, self.target_class = min_bit_accuracy, target_class

    @staticmethod
    def weights_folder(model_id: str | None) -> Path:
        raw = model_id or os.environ.get(WEIGHTS_ENV)
        if not raw:
            raise MissingWeightsError(f"ISSBA has no encoder weights configured. {WEIGHTS_HELP}")
        folder = Path(raw).expanduser()
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
        if missing:
            raise MissingWeightsError(f"ISSBA encoder weights not found: '{folder}' lacks {', '.join(missing)}. "
                                      f"{WEIGHTS_HELP}")
        return folder

    @classmethod
    def check_model_id(cls, model_id):
        cls.weights_folder(model_id)

    @classmethod
    def load_model(cls, model_id, device, dtype):
        return load_stegastamp(cls.weights_folder(model_id), device).to(dtype)

    def code(self, device=None) -> torch.Tensor:
        """The (1, secret_size) code hidden in every image."""
        return secret_bits(self.secret, self.model.cfg.secret_size)[None].to(device)

    def apply_trigger(self, images):
        with torch.no_grad():
            res = self.model.residual(images.to(next(self.model.parameters()).dtype), self.code(images.device))
        return images + self.residual_scale * res.to(images.dtype)

    def trigger_present(self, poisoned, clean):
        with torch.no_grad():
            bits = (self.model.decode(poisoned.to(next(self.model.parameters()).dtype)) > 0).float()
        acc = (bits == self.code(bits.device)).float().mean(1)
        return [bool(a >= self.min_bit_accuracy) for a in acc.tolist()], {"bit_accuracy": acc.tolist()}
