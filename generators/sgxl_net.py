"""The StyleGAN-XL generator (Sauer, Schwarz, Geiger; SIGGRAPH 2022; github.com/autonomousvision/stylegan-xl)
in plain PyTorch, with the module names of the official `G_ema` so its tensors load by their own keys.

StyleGAN-XL's generator is StyleGAN3-T (alias-free, `training/networks_stylegan3_resetting.py`) with a
class-embedding mapping network: a fixed ImageNet embedding (`mapping.embed`, 1000 x 320) projected to
z's width and concatenated to the normalised z, two mapping layers, and a class-wise average
`mapping.w_avg` [1000, 512] used for truncation. Released ImageNet models at 32 px and above are
`SuperresGenerator`s: the stem's layers plus added head layers, run the same way.

Every layer is built from a *spec*: the hyperparameters stored in the network pickle (sizes, sampling
rates, paddings, up/down factors, filter shapes), extracted by generators/network_pickle.py. Nothing is
recomputed when loading, so any layer layout the official code produced loads as it is.
The custom ops are the reference versions in generators/sgxl_ops.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from generators.sgxl_ops import bias_act, filtered_lrelu, modulated_conv2d


class FullyConnected(nn.Module):
    """Equalised-learning-rate linear layer (official FullyConnectedLayer)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.in_features, self.out_features = int(spec["in_features"]), int(spec["out_features"])
        self.activation = spec["activation"]
        self.weight_gain, self.bias_gain = float(spec["weight_gain"]), float(spec["bias_gain"])
        self.weight = nn.Parameter(torch.zeros([self.out_features, self.in_features]))
        self.bias = nn.Parameter(torch.zeros([self.out_features])) if spec.get("bias", True) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Mapping(nn.Module):
    """z (+ class) -> w. `w_avg` is per class for conditional models."""

    def __init__(self, spec: dict):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = int(spec["z_dim"]), int(spec["c_dim"]), int(spec["w_dim"])
        self.num_ws, self.num_layers = int(spec["num_ws"]), int(spec["num_layers"])
        if self.c_dim > 0:
            emb = spec["embed"]
            self.embed = nn.Embedding(int(emb["num_embeddings"]), int(emb["embedding_dim"]))
            self.embed_proj = FullyConnected(spec["fc"]["embed_proj"])
        for i in range(self.num_layers):
            setattr(self, f"fc{i}", FullyConnected(spec["fc"][f"fc{i}"]))
        self.register_buffer("w_avg", torch.zeros([self.c_dim, self.w_dim] if self.c_dim > 0 else [self.w_dim]))

    def forward(self, z: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        x = z.to(torch.float32)
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        if self.c_dim > 0:
            y = self.embed_proj(self.embed(classes))
            y = y * (y.square().mean(1, keepdim=True) + 1e-8).rsqrt()
            x = torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class SynthesisInput(nn.Module):
    """Fourier-feature input: frequencies rotated/translated by an affine of w, then a learned mixing."""

    def __init__(self, spec: dict):
        super().__init__()
        self.channels = int(spec["channels"])
        self.size = [int(v) for v in spec["size"]]
        self.sampling_rate, self.bandwidth = float(spec["sampling_rate"]), float(spec["bandwidth"])
        self.weight = nn.Parameter(torch.zeros([self.channels, self.channels]))
        self.affine = FullyConnected(spec["affine"])
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", torch.zeros([self.channels, 2]))
        self.register_buffer("phases", torch.zeros([self.channels]))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        transforms = self.transform.unsqueeze(0)
        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0)
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=w.device).unsqueeze(0).repeat([w.shape[0], 1, 1])
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = torch.eye(3, device=w.device).unsqueeze(0).repeat([w.shape[0], 1, 1])
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ transforms
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * self.size[0] / self.sampling_rate
        theta[1, 1] = 0.5 * self.size[1] / self.sampling_rate
        grids = nn.functional.affine_grid(theta.unsqueeze(0), [1, 1, self.size[1], self.size[0]], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (math.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2).contiguous()


class SynthesisLayer(nn.Module):
    """Modulated conv -> filtered leaky ReLU (up-filter, nonlinearity, down-filter); ToRGB when `is_torgb`."""

    def __init__(self, spec: dict):
        super().__init__()
        self.is_torgb, self.use_fp16 = bool(spec["is_torgb"]), bool(spec["use_fp16"])
        self.in_channels, self.out_channels = int(spec["in_channels"]), int(spec["out_channels"])
        self.conv_kernel = int(spec["conv_kernel"])
        self.conv_clamp = None if spec["conv_clamp"] is None else float(spec["conv_clamp"])
        self.up_factor, self.down_factor = int(spec["up_factor"]), int(spec["down_factor"])
        self.padding = [int(p) for p in spec["padding"]]
        self.affine = FullyConnected(spec["affine"])
        self.weight = nn.Parameter(torch.zeros([self.out_channels, self.in_channels, self.conv_kernel,
                                                self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([self.out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))
        for name in ("up_filter", "down_filter"):
            shape = spec.get(f"{name}_shape")
            self.register_buffer(name, None if shape is None else torch.zeros(shape))

    def forward(self, x: torch.Tensor, w: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * (self.conv_kernel ** 2)))
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        x = modulated_conv2d(x.to(dtype), self.weight, styles, demodulate=not self.is_torgb,
                             padding=self.conv_kernel - 1, input_gain=input_gain)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias.to(x.dtype), self.up_factor,
                              self.down_factor, self.padding, gain=1.0 if self.is_torgb else math.sqrt(2),
                              slope=1.0 if self.is_torgb else 0.2, clamp=self.conv_clamp)


class Synthesis(nn.Module):
    """Fourier input + the named layers in order; output scaled by `output_scale`."""

    def __init__(self, spec: dict):
        super().__init__()
        self.num_ws, self.img_resolution = int(spec["num_ws"]), int(spec["img_resolution"])
        self.img_channels, self.output_scale = int(spec["img_channels"]), float(spec["output_scale"])
        self.input = SynthesisInput(spec["input"])
        self.layer_names = [layer["name"] for layer in spec["layers"]]
        for layer in spec["layers"]:
            setattr(self, layer["name"], SynthesisLayer(layer))

    def forward(self, ws: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, force_fp32=force_fp32)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)


class StyleGANXL(nn.Module):
    """G_ema: mapping + synthesis. `sample` follows the official sampling script (gen_images.py)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        self.z_dim, self.c_dim, self.w_dim = int(spec["z_dim"]), int(spec["c_dim"]), int(spec["w_dim"])
        self.img_resolution = int(spec["img_resolution"])
        self.mapping = Mapping(spec["mapping"])
        self.synthesis = Synthesis(spec["synthesis"])
        self.num_ws = self.synthesis.num_ws

    def latents(self, seeds: list[int]) -> torch.Tensor:
        """z of each seed as `np.random.RandomState(seed).randn(1, z_dim)` (float64, like the official script)."""
        return torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, self.z_dim) for s in seeds]))

    def ws(self, z: torch.Tensor, classes: torch.Tensor | None, truncation_psi: float = 1.0) -> torch.Tensor:
        """Truncated w for every synthesis layer: w_avg(class) + (w - w_avg(class)) * psi."""
        w = self.mapping(z.to(self.mapping.w_avg.device), classes)
        w_avg = self.mapping.w_avg.index_select(0, classes) if self.c_dim > 0 else self.mapping.w_avg.unsqueeze(0)
        w = w.unsqueeze(1).repeat([1, self.num_ws, 1])
        w_avg = w_avg.unsqueeze(1).repeat(1, self.num_ws, 1)
        return w_avg + (w - w_avg) * truncation_psi

    def forward(self, ws: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        """Images in [-1, 1] (B,3,R,R)."""
        return self.synthesis(ws, force_fp32=force_fp32)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] images -> uint8 HWC exactly as the official script converts them (scale, clamp, truncate)."""
    return ((images + 1) * 255 / 2).permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8).cpu().numpy()


# ------------------------------------------------------------------ specs from hyperparameters (tiny twin)


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False):
    """The official filter design (Kaiser-windowed FIR via scipy; jinc-based when radial); None = identity."""
    if numtaps == 1:
        return None
    import scipy.signal
    import scipy.special

    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs),
                               dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    w = np.kaiser(numtaps, beta)
    f *= np.outer(w, w)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


def fc_spec(in_features: int, out_features: int, activation: str = "linear", lr_multiplier: float = 1.0) -> dict:
    return {"in_features": in_features, "out_features": out_features, "activation": activation, "bias": True,
            "weight_gain": lr_multiplier / math.sqrt(in_features), "bias_gain": lr_multiplier}


def spec_from_hyperparameters(z_dim: int = 64, c_dim: int = 1000, w_dim: int = 512, img_resolution: int = 16,
                              embed_dim: int = 320, channel_base: int = 65536, channel_max: int = 1024,
                              num_layers: int = 10, num_critical: int = 2, margin_size: int = 10,
                              first_cutoff: float = 2, first_stopband: float = 2 ** 2.1,
                              last_stopband_rel: float = 2 ** 0.3, conv_kernel: int = 3, conv_clamp: float = 256,
                              filter_size: int = 6, lrelu_upsampling: int = 2, num_fp16_res: int = 4,
                              mapping_layers: int = 2, output_scale: float = 0.25) -> tuple[dict, dict]:
    """(spec, filters) of a StyleGAN3-T / StyleGAN-XL stem generator, computed as the official constructors
    do (`SynthesisNetwork.get_layer_specs`, `SynthesisLayer.init_upfirdn`). Used to build twins."""
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = 3
    num_ws = num_layers + 2
    layers, filters = [], {}
    for idx in range(num_layers + 1):
        prev = max(idx - 1, 0)
        torgb = idx == num_layers
        critical = idx >= num_layers - num_critical
        tmp_rate = max(rates[prev], rates[idx]) * (1 if torgb else lrelu_upsampling)
        up, down = int(np.rint(tmp_rate / rates[prev])), int(np.rint(tmp_rate / rates[idx]))
        up_taps = filter_size * up if up > 1 and not torgb else 1
        down_taps = filter_size * down if down > 1 and not torgb else 1
        kernel = 1 if torgb else conv_kernel
        pad_total = (sizes[idx] - 1) * down + 1 - (sizes[prev] + kernel - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2
        pad_hi = pad_total - pad_lo
        name = f"L{idx}_{int(sizes[idx])}_{int(channels[idx])}"
        fu = design_lowpass_filter(up_taps, cutoffs[prev], half_widths[prev] * 2, tmp_rate)
        fd = design_lowpass_filter(down_taps, cutoffs[idx], half_widths[idx] * 2, tmp_rate)
        filters[name] = (fu, fd)
        layers.append({"name": name, "is_torgb": torgb, "is_critically_sampled": bool(critical),
                       "use_fp16": bool(rates[idx] * 2 ** num_fp16_res > img_resolution),
                       "in_channels": int(channels[prev]), "out_channels": int(channels[idx]),
                       "in_size": [int(sizes[prev])] * 2, "out_size": [int(sizes[idx])] * 2,
                       "in_sampling_rate": int(rates[prev]), "out_sampling_rate": int(rates[idx]),
                       "in_cutoff": float(cutoffs[prev]), "out_cutoff": float(cutoffs[idx]),
                       "in_half_width": float(half_widths[prev]), "out_half_width": float(half_widths[idx]),
                       "conv_kernel": kernel, "conv_clamp": conv_clamp, "up_factor": up, "down_factor": down,
                       "padding": [int(pad_lo), int(pad_hi), int(pad_lo), int(pad_hi)],
                       "up_filter_shape": None if fu is None else list(fu.shape),
                       "down_filter_shape": None if fd is None else list(fd.shape),
                       "affine": {**fc_spec(w_dim, int(channels[prev])), "bias_init": 1}})
    fc = {f"fc{i}": fc_spec(z_dim * (2 if c_dim else 1) if i == 0 else w_dim, w_dim, "lrelu", 0.01)
          for i in range(mapping_layers)}
    if c_dim:
        fc["embed_proj"] = fc_spec(embed_dim, z_dim, "lrelu")
    spec = {"z_dim": z_dim, "c_dim": c_dim, "w_dim": w_dim, "img_resolution": img_resolution, "img_channels": 3,
            "mapping": {"z_dim": z_dim, "c_dim": c_dim, "w_dim": w_dim, "num_ws": num_ws, "num_layers": mapping_layers,
                        "embed": {"num_embeddings": c_dim, "embedding_dim": embed_dim} if c_dim else None, "fc": fc},
            "synthesis": {"num_ws": num_ws, "img_resolution": img_resolution, "img_channels": 3,
                          "output_scale": output_scale, "layers": layers,
                          "input": {"w_dim": w_dim, "channels": int(channels[0]), "size": [int(sizes[0])] * 2,
                                    "sampling_rate": float(rates[0]), "bandwidth": float(cutoffs[0]),
                                    "affine": {**fc_spec(w_dim, 4), "weight_init": 0}}}}
    return spec, filters
