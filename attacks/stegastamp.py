"""A StegaStamp-style encoder/decoder pair (Tancik et al., CVPR 2020, https://arxiv.org/abs/1904.05343):
the network ISSBA uses to hide a code in an image as a sample-specific, invisible residual.

  encoder: secret bits -> dense -> (3, S/8, S/8) -> x8 upsample, concatenated with the image - 0.5,
           -> U-Net (stride-2 convolutions down, nearest upsampling + skip connections up) -> residual
  decoder: spatial-transformer (identity-initialised affine) -> stride-2 convolutions -> dense -> bit logits

Weights live in a folder: `config.json` (the `StegaStampConfig` fields) + `model.safetensors` (keys
`encoder.*`, `decoder.*`), loaded without pickle. No PyTorch StegaStamp weights are published in a
standard layout (ISSBA's release is a TensorFlow SavedModel), so `train_stegastamp` (also
`python -m attacks.stegastamp --images DIR --out DIR`) trains a pair on your own photos; the tiny
twin is the same architecture trained for a few seconds on synthetic images.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class StegaStampConfig:
    """secret_size: bits hidden per image. image_size: working resolution S of both networks (a multiple
    of 8 and of 2**len(encoder_widths)-1 downsamplings). Widths: channels per U-Net level / decoder stage."""

    secret_size: int = 100
    image_size: int = 224
    encoder_widths: list[int] = field(default_factory=lambda: [32, 32, 64, 128, 256])
    decoder_widths: list[int] = field(default_factory=lambda: [32, 32, 64, 64, 128])
    decoder_hidden: int = 512


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


class StegaStampEncoder(nn.Module):
    """(images in [0,1] at S x S, bits in {0,1}) -> residual (B, 3, S, S)."""

    def __init__(self, cfg: StegaStampConfig):
        super().__init__()
        s8 = cfg.image_size // 8
        self.cfg = cfg
        self.secret_dense = nn.Linear(cfg.secret_size, 3 * s8 * s8)
        w = cfg.encoder_widths
        self.inc = _conv(6, w[0])
        self.downs = nn.ModuleList(_conv(a, b, stride=2) for a, b in zip(w[:-1], w[1:]))
        self.ups = nn.ModuleList(_conv(b, a) for a, b in zip(w[:-1], w[1:]))
        self.merges = nn.ModuleList(_conv(2 * a, a) for a in w[:-1])
        self.out = nn.Conv2d(w[0], 3, 1)

    def forward(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        s8 = self.cfg.image_size // 8
        secret = F.relu(self.secret_dense(bits.float())).view(-1, 3, s8, s8)
        secret = F.interpolate(secret, scale_factor=8, mode="nearest")
        x = self.inc(torch.cat([secret.expand(len(images), -1, -1, -1), images - 0.5], 1))
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, merge in zip(reversed(self.ups), reversed(self.merges)):
            skip = skips.pop()
            x = up(F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
            x = merge(torch.cat([skip, x], 1))
        return self.out(x)


class StegaStampDecoder(nn.Module):
    """images in [0,1] at S x S -> bit logits (B, secret_size)."""

    def __init__(self, cfg: StegaStampConfig):
        super().__init__()
        w = cfg.decoder_widths
        self.loc = nn.Sequential(_conv(3, w[0], 2), _conv(w[0], w[0], 2), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                 nn.Linear(16 * w[0], 6))
        nn.init.zeros_(self.loc[-1].weight)
        with torch.no_grad():
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.convs = nn.Sequential(*[_conv(a, b, 2) for a, b in zip([3] + w[:-1], w)])
        side = cfg.image_size // 2 ** len(w)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * side * side, cfg.decoder_hidden),
                                  nn.ReLU(inplace=True), nn.Linear(cfg.decoder_hidden, cfg.secret_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images - 0.5
        theta = self.loc(x).view(-1, 2, 3)
        x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
        return self.head(self.convs(x))


class StegaStamp(nn.Module):
    """The encoder/decoder pair with its config; `encode`/`decode` work at any image size."""

    def __init__(self, cfg: StegaStampConfig):
        super().__init__()
        if cfg.image_size % 8 or cfg.image_size % 2 ** (len(cfg.encoder_widths) - 1):
            raise ValueError(f"StegaStamp image_size {cfg.image_size} must be a multiple of 8 and of "
                             f"2**{len(cfg.encoder_widths) - 1}")
        self.cfg = cfg
        self.encoder = StegaStampEncoder(cfg)
        self.decoder = StegaStampDecoder(cfg)

    def _working(self, images: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        if images.shape[-2:] == (s, s):
            return images
        return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def residual(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """The residual at the images' own size (computed at S x S, resized back bilinearly)."""
        res = self.encoder(self._working(images), bits)
        if res.shape[-2:] != images.shape[-2:]:
            res = F.interpolate(res, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return res

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """Bit logits of images of any size."""
        return self.decoder(self._working(images))


def secret_bits(text: str, n: int) -> torch.Tensor:
    """A fixed n-bit code derived from `text` (SHA-256 bits, repeated if n > 256)."""
    digest = hashlib.sha256(text.encode()).digest()
    bits = [(byte >> (7 - i)) & 1 for byte in digest for i in range(8)]
    return torch.tensor((bits * (n // 256 + 1))[:n], dtype=torch.float32)


def save_stegastamp(model: StegaStamp, folder: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps({"architecture": "stegastamp", **asdict(model.cfg)}, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_NAME))
    return folder


def load_stegastamp(folder: str | Path, device: str = "cpu") -> StegaStamp:
    """Load a folder written by `save_stegastamp` (safetensors; strict key match); eval mode, no grads."""
    from safetensors.torch import load_file

    folder = Path(folder)
    raw = json.loads((folder / CONFIG_NAME).read_text())
    raw.pop("architecture", None)
    model = StegaStamp(StegaStampConfig(**raw))
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    return model.to(device).eval().requires_grad_(False)


def train_stegastamp(model: StegaStamp, images: torch.Tensor, steps: int = 300, batch_size: int = 32,
                     lr: float = 3e-3, residual_rms: float = 0.03, residual_weight: float = 100.0, seed: int = 0,
                     log_every: int = 0) -> dict:
    """Train encoder and decoder together: decode the code from the encoded image under 8-bit
    quantisation noise, while a hinge penalty keeps each residual's RMS under `residual_rms` (0.03 is about
    8/255, PSNR ~30 dB). `images`: (N, 3, S, S) in [0, 1].

    Curriculum (it makes a small pair learn in a few hundred steps): image contrast ramps from flat
    grey to full over the first third, so the decoder first finds the code without interference, and
    the residual budget shrinks from 0.25 to `residual_rms` over the first half; the encoded image is
    clamped to [0, 1] in the last 30% (earlier, the clamp would cut the gradient of a large residual).
    Returns bit accuracy and residual RMS on `images`."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n_bits = model.cfg.secret_size
    for step in range(steps):
        progress = step / max(1, steps - 1)
        contrast = min(1.0, 3 * progress)
        budget = residual_rms + (0.25 - residual_rms) * max(0.0, 1 - 2 * progress)
        x = 0.5 + contrast * (images[torch.randint(len(images), (batch_size,), generator=gen)] - 0.5)
        bits = torch.randint(0, 2, (batch_size, n_bits), generator=gen).float()
        res = model.encoder(x, bits)
        encoded = x + res
        if progress > 0.7:  # clamp only once the code is learnt (early on it cuts the gradient everywhere)
            encoded = encoded.clamp(0, 1)
        noisy = encoded + (torch.rand(x.shape, generator=gen) - 0.5) / 255  # noise stands in for 8-bit rounding
        logits = model.decoder(noisy)
        excess = F.relu(res.pow(2).mean((1, 2, 3)).sqrt() - budget)
        loss = F.binary_cross_entropy_with_logits(logits, bits) + residual_weight * excess.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log_every and step % log_every == 0:
            acc = ((logits > 0).float() == bits).float().mean().item()
            print(f"step {step}: loss {loss.item():.4f} bit accuracy {acc:.3f} residual rms "
                  f"{res.pow(2).mean().sqrt().item():.4f}")
    model.eval()
    with torch.no_grad():
        bits = torch.randint(0, 2, (len(images), n_bits), generator=gen).float()
        res = model.encoder(images, bits)
        encoded = torch.round((images + res).clamp(0, 1) * 255) / 255
        acc = ((model.decoder(encoded) > 0).float() == bits).float().mean().item()
    return {"bit_accuracy": acc, "residual_rms": res.pow(2).mean().sqrt().item()}


def _load_folder_images(folder: Path, size: int, limit: int) -> torch.Tensor:
    from PIL import Image

    from fakeforge.images import find_images, load_rgb

    out = []
    for path in find_images(folder)[:limit]:
        img = load_rgb(path).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(__import__("numpy").asarray(img)).permute(2, 0, 1).float() / 255)
    if not out:
        raise SystemExit(f"no images under '{folder}'")
    return torch.stack(out)


def main(argv: list[str] | None = None) -> int:
    """Train a StegaStamp pair on a folder of photos and save it for ISSBA (`model_id: <out>`)."""
    p = argparse.ArgumentParser(prog="python -m attacks.stegastamp", description=main.__doc__)
    p.add_argument("--images", required=True, help="folder of training photos (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    p.add_argument("--secret-size", type=int, default=100)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--limit", type=int, default=20000, help="at most this many training images")
    args = p.parse_args(argv)
    model = StegaStamp(StegaStampConfig(secret_size=args.secret_size, image_size=args.image_size))
    images = _load_folder_images(Path(args.images), args.image_size, args.limit)
    print(train_stegastamp(model, images, steps=args.steps, log_every=500))
    save_stegastamp(model, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
