"""Tiny twins of the attack models, in the folder formats their real weights use.

  surrogate_resnet50  timm `resnet50` (Bottleneck ResNet, ImageNet-1k head, ImageNet mean/std) at toy
                      width/depth with random weights, saved by `timm.models.save_for_hf` (config.json +
                      model.safetensors) and loaded back through `timm.create_model("local-dir:...")`
  issba_stegastamp    the StegaStamp encoder/decoder of `attacks.stegastamp` (8-bit code, 32 px working
                      size), trained for a few hundred steps on synthetic images so the decoder really
                      recovers the code; the build fails if it does not
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

#: toy resnet50 (real class and block type; 1 block per stage, narrow): ~0.4M parameters
TINY_RESNET_ARGS = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}


def build_surrogate_resnet50(out_dir: Path) -> None:
    """timm resnet50 at toy size, 64 px input, saved in timm's local folder format."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=1000, **TINY_RESNET_ARGS)
    with torch.no_grad():  # timm zero-inits each block's last norm; give the random twin input-dependent logits
        for name, module in model.named_modules():
            if name.endswith("bn3"):
                module.weight.fill_(1.0)
        model.fc.weight.normal_(0, 0.5)
    timm.models.save_for_hf(model, str(out_dir), model_args=dict(TINY_RESNET_ARGS), safe_serialization=True,
                            data_config={"input_size": (3, 64, 64)})


def synthetic_photos(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1]: half smooth random colour fields with a little texture, half flat
    scenes (a horizon and a saturated box, like the demo source's drawings)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=gen)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = (img + 0.1 * torch.rand((n, 3, size, size), generator=gen)).clamp(0, 1)
    rows = torch.arange(size).view(1, size, 1)
    cols = torch.arange(size).view(1, 1, size)
    for i in range(n // 2):
        sky, ground, obj = (torch.randint(0, 256, (3, 3, 1, 1), generator=gen).float() / 255).unbind(0)
        horizon = int(torch.randint(size // 3, size, (1,), generator=gen))
        img[i] = torch.where(rows < horizon, sky, ground)
        x0, y0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        side = int(torch.randint(size // 6, size // 2, (1,), generator=gen))
        box = (rows >= y0) & (rows < y0 + side) & (cols >= x0) & (cols < x0 + side)
        img[i] = torch.where(box, obj, img[i])
    return img


def build_issba_stegastamp(out_dir: Path) -> None:
    """A StegaStamp pair trained briefly; refuses to save one whose decoder cannot read the code."""
    from attacks.stegastamp import StegaStamp, StegaStampConfig, save_stegastamp, train_stegastamp

    torch.manual_seed(0)
    cfg = StegaStampConfig(secret_size=8, image_size=32, encoder_widths=[8, 16, 32], decoder_widths=[16, 32],
                           decoder_hidden=64)
    model = StegaStamp(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only add overhead on a shared CPU
    try:
        stats = train_stegastamp(model, synthetic_photos(512, cfg.image_size), steps=400, batch_size=16, lr=3e-3,
                                 residual_rms=0.03, seed=0)
    finally:
        torch.set_num_threads(threads)
    if stats["bit_accuracy"] < 0.95:
        raise RuntimeError(f"tiny StegaStamp did not learn to hide its code (bit accuracy {stats['bit_accuracy']:.3f})")
    save_stegastamp(model, out_dir)
