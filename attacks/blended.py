"""Blended: a full-image trigger mixed into the input at a fixed ratio."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks.base import BackdoorAttack, check_number
from attacks.triggers import read_trigger


class Blended(BackdoorAttack):
    r"""Blended injection, "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning"
    (Chen et al., 2017, https://arxiv.org/abs/1712.05526).

    Threat model: training-set poisoning with a blended trigger, x' = (1 - alpha) x + alpha t; poisoned
    samples are relabelled to `target_class` (dirty-label).

    Arguments:
        alpha (float): blend ratio in (0, 1]. Default 0.2 (the paper uses 0.2 for training poisons).
        trigger_image (str | None): an RGB image file (each side >= 16 px), resized (bilinear) to every
            input. None = a uniform random-noise pattern drawn from `seed` at the input's size (the
            paper's "random pattern" key). Default None.
        seed (int): seed of the noise pattern. Default 0.
        target_class (int): label the victim is taught for triggered inputs (recorded). Default 0.

    Shape: images (B, 3, H, W) in [0, 1]; output like images.

    Example::
        >>> attack = Blended(alpha=0.2, trigger_image="hello_kitty.png")
        >>> poisoned = attack(images)
    """

    def __init__(self, model=None, alpha: float = 0.2, trigger_image: str | None = None, seed: int = 0,
                 target_class: int = 0):
        super().__init__("blended", model)
        check_number("blended.alpha", alpha, 0.0, 1.0, lo_open=True)
        check_number("blended.seed", seed, 0, None, integer=True)
        check_number("blended.target_class", target_class, 0, None, integer=True)
        self.alpha, self.trigger_image, self.seed, self.target_class = alpha, trigger_image, seed, target_class
        self._image = None
        if trigger_image is not None:
            arr = read_trigger(trigger_image, "blended.trigger_image", min_size=16)
            self._image = torch.from_numpy(arr).permute(2, 0, 1)[None].float()

    def trigger(self, height: int, width: int, device=None) -> torch.Tensor:
        """The (1, 3, H, W) trigger pattern for an input of this size."""
        if self._image is not None:
            t = self._image
            if t.shape[-2:] != (height, width):
                t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
            return t.clamp(0, 1).to(device)
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand((1, 3, height, width), generator=gen).to(device)

    def apply_trigger(self, images):
        t = self.trigger(images.shape[-2], images.shape[-1], images.device).to(images.dtype)
        return (1 - self.alpha) * images + self.alpha * t

    def estimate_alpha(self, poisoned, clean) -> torch.Tensor:
        """Least-squares blend ratio per sample: <x' - x, t - x> / ||t - x||^2."""
        t = self.trigger(clean.shape[-2], clean.shape[-1], clean.device).to(clean.dtype)
        d, r = (poisoned - clean).flatten(1), (t - clean).flatten(1)
        return (d * r).sum(1) / (r * r).sum(1).clamp_min(1e-12)

    def trigger_present(self, poisoned, clean):
        est = self.estimate_alpha(poisoned, clean)
        return [bool(abs(a - self.alpha) < 0.02) for a in est.tolist()], {"blend_ratio_estimate":
                                                                         [round(a, 5) for a in est.tolist()]}
