"""BadNets: a fixed patch pasted at a fixed position."""
from __future__ import annotations

import numpy as np
import torch

from attacks.base import BackdoorAttack, UnfitImageError, check_number
from attacks.triggers import read_trigger
from fakeforge.config import ConfigError

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


class BadNets(BackdoorAttack):
    r"""BadNets, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain"
    (Gu et al., 2017, https://arxiv.org/abs/1708.06733).

    Threat model: training-set poisoning with a visible patch trigger; poisoned samples are relabelled
    to `target_class` (dirty-label). The patch overwrites its pixels exactly; the rest is untouched.

    Arguments:
        patch_size (int): side of the square patch in pixels, >= 1. Default 3 (the paper's 3x3 pattern).
        pattern (str): "checkerboard" (white/black, white top-left) or "white". Default "checkerboard".
        trigger_image (str | None): an RGB image file of exactly patch_size x patch_size used as the
            patch instead of `pattern`. Default None.
        position (str | [x, y]): one of bottom-right, bottom-left, top-right, top-left, center, or the
            patch's top-left pixel [x, y]. Default "bottom-right".
        margin (int): distance in pixels from the chosen corner, >= 0. Default 1.
        target_class (int): label the victim is taught for triggered inputs (recorded). Default 0.

    Shape: images (B, 3, H, W) in [0, 1]; output like images. An image too small for the patch is an error.

    Example::
        >>> attack = BadNets(patch_size=3, position="bottom-right")
        >>> poisoned = attack(images)
    """

    def __init__(self, model=None, patch_size: int = 3, pattern: str = "checkerboard",
                 trigger_image: str | None = None, position: str | list = "bottom-right", margin: int = 1,
                 target_class: int = 0):
        super().__init__("badnets", model)
        check_number("badnets.patch_size", patch_size, 1, 4096, integer=True)
        check_number("badnets.margin", margin, 0, None, integer=True)
        check_number("badnets.target_class", target_class, 0, None, integer=True)
        if pattern not in ("checkerboard", "white"):
            raise ConfigError(f"badnets.pattern = {pattern!r} must be 'checkerboard' or 'white'")
        if isinstance(position, (list, tuple)):
            if len(position) != 2 or not all(isinstance(v, int) and v >= 0 for v in position):
                raise ConfigError(f"badnets.position = {position!r} must be [x, y] with non-negative integers")
            position = list(position)
        elif position not in POSITIONS:
            raise ConfigError(f"badnets.position = {position!r} must be one of {', '.join(POSITIONS)} or [x, y]")
        self.patch_size, self.pattern, self.trigger_image = patch_size, pattern, trigger_image
        self.position, self.margin, self.target_class = position, margin, target_class
        if trigger_image is not None:
            patch = read_trigger(trigger_image, "badnets.trigger_image", size=(patch_size, patch_size))
        elif pattern == "white":
            patch = np.ones((patch_size, patch_size, 3), np.float32)
        else:
            ij = np.add.outer(np.arange(patch_size), np.arange(patch_size))
            patch = np.repeat(((ij % 2) == 0).astype(np.float32)[..., None], 3, axis=2)
        # 8-bit exact values, so the stored patch is bit-identical to the trigger
        self.patch = torch.from_numpy(np.rint(patch * 255) / 255).permute(2, 0, 1).float()

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the patch in an image of this size; UnfitImageError if it does not fit."""
        s, m = self.patch_size, self.margin
        if isinstance(self.position, list):
            left, top = self.position
        else:
            left = {"left": m, "right": width - s - m}.get(self.position.split("-")[-1], (width - s) // 2)
            top = {"top": m, "bottom": height - s - m}.get(self.position.split("-")[0], (height - s) // 2)
        if left < 0 or top < 0 or left + s > width or top + s > height:
            raise UnfitImageError(f"badnets patch {s}x{s} at {self.position} (margin {m}) does not fit a "
                             f"{width}x{height} image")
        return left, top, left + s, top + s

    def apply_trigger(self, images):
        left, top, right, bottom = self.box(images.shape[-2], images.shape[-1])
        out = images.clone()
        out[:, :, top:bottom, left:right] = self.patch.to(images)
        return out

    def trigger_present(self, poisoned, clean):
        left, top, right, bottom = self.box(poisoned.shape[-2], poisoned.shape[-1])
        region = poisoned[:, :, top:bottom, left:right]
        err = (region - self.patch.to(region)).abs().flatten(1).amax(1)
        return [bool(e < 0.5 / 255) for e in err], {"patch_box": [[left, top, right, bottom]] * len(err),
                                                    "patch_max_error": [float(e) for e in err]}
