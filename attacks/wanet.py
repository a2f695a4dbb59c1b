"""WaNet: an imperceptible, smooth warping field as the trigger."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks.base import BackdoorAttack, check_number


class WaNet(BackdoorAttack):
    r"""WaNet, "WaNet - Imperceptible Warping-based Backdoor Attack" (Nguyen & Tran, ICLR 2021,
    https://arxiv.org/abs/2102.10369).

    Threat model: training-set poisoning with a warping trigger; poisoned samples are relabelled to
    `target_class` (dirty-label). The field: a k x k grid of uniform offsets in [-1, 1] drawn from `seed`,
    divided by its mean absolute value, upsampled (bicubic) to the image size, scaled by
    `strength` / size and added to the identity sampling grid (clamped to the image); the image is
    resampled bilinearly on that grid.

    Arguments:
        grid_size (int): k, control points per side, >= 2. Default 4.
        strength (float): s, warping strength, > 0. Default 0.5.
        seed (int): seed of the field (the trigger is the field, so it must be fixed). Default 0.
        target_class (int): label the victim is taught for triggered inputs (recorded). Default 0.

    Shape: images (B, 3, H, W) in [0, 1]; output like images.

    Example::
        >>> attack = WaNet(grid_size=4, strength=0.5, seed=0)
        >>> poisoned = attack(images)
    """

    def __init__(self, model=None, grid_size: int = 4, strength: float = 0.5, seed: int = 0, target_class: int = 0):
        super().__init__("wanet", model)
        check_number("wanet.grid_size", grid_size, 2, 512, integer=True)
        check_number("wanet.strength", strength, 0.0, None, lo_open=True)
        check_number("wanet.seed", seed, 0, None, integer=True)
        check_number("wanet.target_class", target_class, 0, None, integer=True)
        self.grid_size, self.strength, self.seed, self.target_class = grid_size, strength, seed, target_class
        gen = torch.Generator().manual_seed(seed)
        field = torch.rand((1, 2, grid_size, grid_size), generator=gen) * 2 - 1
        self.field = field / field.abs().mean()

    def sampling_grid(self, height: int, width: int, device=None) -> torch.Tensor:
        """The (1, H, W, 2) grid_sample grid (x, y in [-1, 1], align_corners=True) of the warp."""
        up = F.interpolate(self.field, size=(height, width), mode="bicubic", align_corners=True)
        ys = torch.linspace(-1, 1, height)
        xs = torch.linspace(-1, 1, width)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack([gx, gy], dim=-1)[None]
        offset = up.permute(0, 2, 3, 1) * self.strength / torch.tensor([width, height], dtype=up.dtype)
        return (identity + offset).clamp(-1, 1).to(device)

    def apply_trigger(self, images):
        grid = self.sampling_grid(images.shape[-2], images.shape[-1], images.device).to(images.dtype)
        return F.grid_sample(images, grid.expand(len(images), -1, -1, -1), mode="bilinear",
                             padding_mode="border", align_corners=True)

    def trigger_present(self, poisoned, clean):
        expected = self.apply_trigger(clean)
        err = (poisoned - expected).abs().flatten(1).amax(1)
        grid = self.sampling_grid(clean.shape[-2], clean.shape[-1])
        h, w = clean.shape[-2:]
        disp = ((grid[..., 0] + 1) / 2 * (w - 1) - torch.arange(w)).abs().amax().item()
        disp = max(disp, ((grid[..., 1] + 1) / 2 * (h - 1) - torch.arange(h)[:, None]).abs().amax().item())
        return [bool(e <= 1.01 / 255) for e in err], {"warp_error": [float(e) for e in err],
                                                     "warp_max_displacement_px": [round(disp, 3)] * len(err)}
