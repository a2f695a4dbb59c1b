"""Plain-PyTorch versions of the StyleGAN3 custom ops that StyleGAN-XL uses (no CUDA kernels).

They follow the official reference implementations (`torch_utils/ops/{bias_act,upfirdn2d,filtered_lrelu}.py`,
the `_ref` functions the official code itself runs on CPU) operation by operation, so results on CPU are
bit-identical to the official code; on GPU the official code switches to fused CUDA kernels whose
rounding differs slightly, while these stay the reference math.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", alpha: float | None = None,
             gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply `act` ("linear" or "lrelu"), scale by `gain`, clamp to +-clamp."""
    if act not in ("linear", "lrelu"):
        raise ValueError(f"activation '{act}' is not used by StyleGAN-XL's generator")
    alpha = float(alpha if alpha is not None else (0.2 if act == "lrelu" else 0.0))
    gain = float(gain if gain is not None else (math.sqrt(2) if act == "lrelu" else 1.0))
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), FIR-filter (separable 1-D or 2-D `f`, a
    convolution, i.e. the filter is flipped), downsample by keeping every `down`-th pixel."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    x = x.reshape([n, c, h, 1, w, 1])
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape([n, c, h * up, w * up])
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype).flip(list(range(f.ndim)))
    f = f[None, None].repeat([c, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=c)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=c)
        x = F.conv2d(x, f.unsqueeze(3), groups=c)
    return x[:, :, ::down, ::down]


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None, b: torch.Tensor | None,
                   up: int, down: int, padding: list[int], gain: float, slope: float, clamp: float | None
                   ) -> torch.Tensor:
    """Bias -> upsample (fu, gain up^2) -> leaky ReLU x gain, clamp -> downsample (fd): the alias-free nonlinearity."""
    x = bias_act(x, b)
    x = upfirdn2d(x, fu, up=up, padding=tuple(padding), gain=up ** 2)
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn2d(x, fd, down=down)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, padding: int,
                     input_gain: torch.Tensor | None) -> torch.Tensor:
    """Style-modulated (and demodulated) convolution as one grouped convolution over the batch.

    The official code pre-normalises the styles by their mean square over the *whole batch*; here it is
    per sample, so a sample does not depend on its batch neighbours (identical for a batch of one,
    which is how the official `gen_images.py` samples)."""
    n = x.shape[0]
    _, in_ch, kh, kw = weight.shape
    w = weight
    s = styles
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        # one full reduction per sample: the exact op the official code runs for a batch of one
        s = s * torch.stack([si.square().mean() for si in s]).rsqrt().unsqueeze(1)
    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().unsqueeze(2).unsqueeze(3).unsqueeze(4)
    if input_gain is not None:
        w = w * input_gain.expand(n, in_ch).unsqueeze(1).unsqueeze(3).unsqueeze(4)
    x = x.reshape(1, -1, *x.shape[2:])
    x = F.conv2d(x, w.reshape(-1, in_ch, kh, kw).to(x.dtype), padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])
