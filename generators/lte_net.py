"""The LTE network (Local Texture Estimator; Lee & Jin, CVPR 2022; github.com/jaewon-lee-b/lte), written so
the official checkpoints load by their own state-dict keys.

Official checkpoints (`edsr-baseline-lte.pth`, `rdn-lte.pth`, ...) are `torch.save`d dicts
`{'model': {'name': 'lte', 'args': {...}, 'sd': state_dict}, 'optimizer': ..., 'epoch': ...}` whose `sd`
keys are `encoder.*` (EDSR: as in LIIF; RDN: `SFENet1`, `SFENet2`, `RDBs.<i>.convs.<c>.conv.0`,
`RDBs.<i>.LFF`, `GFF.{0,1}`), `coef.*` and `freq.*` (3x3 convs: amplitude and frequency estimators),
`phase.weight` (a bias-free linear layer on the cell size) and `imnet.layers.{0,2,...}.*` (the MLP).

Per query pixel and for each of the four nearest latent codes (local ensemble): the frequencies are
paired (x, y) and dotted with the relative coordinate, the phase of the cell size is added, the
result goes through cos/sin and is scaled by the amplitudes; the MLP turns that into RGB. The four
predictions are blended by the area of the opposite cell, and a bilinear upsampling of the input
(border padding) is added. Inputs are normalised to [-1, 1] as in training. SwinIR encoders are not
ported (loading one names the supported encoders).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from generators.liif_net import ENCODER_DEFAULTS as EDSR_DEFAULTS
from generators.liif_net import MLP, EDSREncoder, make_coord

#: RDN presets of the official code: blocks D, convs per block C, growth rate G
RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}
SUPPORTED_ENCODERS = (*EDSR_DEFAULTS, "rdn")


class RDBConv(nn.Module):
    """conv-ReLU whose output is concatenated to its input (dense connection); official name `RDB_Conv`."""

    def __init__(self, in_channels: int, growth: int, ksize: int = 3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, growth, ksize, padding=(ksize - 1) // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class RDB(nn.Module):
    """Residual dense block: C dense convs, then a 1x1 local feature fusion plus the input."""

    def __init__(self, g0: int, growth: int, n_convs: int):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(g0 + c * growth, growth) for c in range(n_convs)])
        self.LFF = nn.Conv2d(g0 + n_convs * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDNEncoder(nn.Module):
    """RDN trunk without the upsampling net: image (B,3,h,w) -> features (B,G0,h,w)."""

    def __init__(self, G0: int = 64, RDNkSize: int = 3, RDNconfig: str = "B"):  # official argument names
        super().__init__()
        n_blocks, n_convs, growth = RDN_CONFIGS[RDNconfig]
        pad = (RDNkSize - 1) // 2
        self.SFENet1 = nn.Conv2d(3, G0, RDNkSize, padding=pad)
        self.SFENet2 = nn.Conv2d(G0, G0, RDNkSize, padding=pad)
        self.RDBs = nn.ModuleList([RDB(G0, growth, n_convs) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(n_blocks * G0, G0, 1), nn.Conv2d(G0, G0, RDNkSize, padding=pad))
        self.out_dim = G0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return self.GFF(torch.cat(outs, 1)) + f1


class LTE(nn.Module):
    """Local texture estimator: encoder features -> (amplitude, frequency, phase) -> Fourier features -> MLP."""

    def __init__(self, encoder: nn.Module, imnet_hidden: list[int], hidden_dim: int = 256, out_dim: int = 3):
        super().__init__()
        self.encoder = encoder
        self.coef = nn.Conv2d(encoder.out_dim, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(encoder.out_dim, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = MLP(hidden_dim, out_dim, imnet_hidden)

    def gen_feat(self, inp: torch.Tensor) -> tuple:
        """Encode a normalised image (B,3,h,w) once; returns the state `query_rgb` reads."""
        feat = self.encoder(inp)
        return inp, feat, self.coef(feat), self.freq(feat)

    def query_rgb(self, state: tuple, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """RGB at `coord` (B,Q,2; (y, x) in [-1, 1]) for cell sizes `cell` (B,Q,2)."""
        inp, feat, coef, freq = state
        h, w = feat.shape[-2:]
        rx, ry = 2 / h / 2, 2 / w / 2
        feat_coord = make_coord(inp.shape[-2:], inp.device, inp.dtype, flatten=False).permute(2, 0, 1)
        feat_coord = feat_coord.unsqueeze(0).expand(inp.shape[0], 2, *inp.shape[-2:])
        b, q = coord.shape[:2]
        rel_cell = cell.clone()
        rel_cell[:, :, 0] *= h
        rel_cell[:, :, 1] *= w
        phase = self.phase(rel_cell.view(b * q, -1)).view(b, q, -1)
        preds, areas = [], []
        for vx, vy in [(-1, -1), (-1, 1), (1, -1), (1, 1)]:
            c = coord.clone()
            c[:, :, 0] += vx * rx + 1e-6
            c[:, :, 1] += vy * ry + 1e-6
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            grid = c.flip(-1).unsqueeze(1)
            q_coef = F.grid_sample(coef, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            q_freq = F.grid_sample(freq, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            rel = coord - q_coord
            rel[:, :, 0] *= h
            rel[:, :, 1] *= w
            # channels (2k, 2k+1) are the (y, x) frequency of Fourier basis k: dot them with the offset
            wave = (q_freq.view(b, q, -1, 2) * rel.unsqueeze(-2)).sum(dim=-1) + phase
            basis = torch.cat((torch.cos(math.pi * wave), torch.sin(math.pi * wave)), dim=-1)
            preds.append(self.imnet((q_coef * basis).contiguous().view(b * q, -1)).view(b, q, -1))
            areas.append(torch.abs(rel[:, :, 0] * rel[:, :, 1]) + 1e-9)
        total = torch.stack(areas).sum(dim=0)
        out = 0
        for pred, area in zip(preds, areas[::-1]):  # weight = area of the diagonally opposite cell
            out = out + pred * (area / total).unsqueeze(-1)
        skip = F.grid_sample(inp, coord.flip(-1).unsqueeze(1), mode="bilinear", padding_mode="border",
                             align_corners=False)[:, :, 0, :].permute(0, 2, 1)
        return out + skip

    def forward(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.query_rgb(self.gen_feat(inp), coord, cell)


def build_encoder(spec: dict) -> nn.Module:
    """The encoder of an official `encoder_spec` ({'name', 'args'})."""
    name = spec.get("name", "edsr-baseline")
    args = dict(spec.get("args") or {})
    if not args.pop("no_upsampling", True):
        raise ValueError("LTE encoder_spec.args.no_upsampling must be true")
    args.pop("scale", None)
    args.pop("rgb_range", None)
    if name in EDSR_DEFAULTS:
        a = {**EDSR_DEFAULTS[name], **args}
        return EDSREncoder(int(a["n_resblocks"]), int(a["n_feats"]), float(a["res_scale"]))
    if name == "rdn":
        a = {"G0": 64, "RDNkSize": 3, "RDNconfig": "B", **args}
        if a["RDNconfig"] not in RDN_CONFIGS:
            raise ValueError(f"RDNconfig '{a['RDNconfig']}' is not one of {', '.join(RDN_CONFIGS)}")
        return RDNEncoder(int(a["G0"]), int(a["RDNkSize"]), str(a["RDNconfig"]))
    raise ValueError(f"LTE encoder '{name}' is not supported (supported: {', '.join(SUPPORTED_ENCODERS)}; "
                     "SwinIR-LTE is not ported)")


def build_from_args(args: dict) -> LTE:
    """An LTE from the official `model['args']` spec (encoder_spec / imnet_spec / hidden_dim)."""
    imnet_args = (args.get("imnet_spec") or {}).get("args") or {}
    return LTE(build_encoder(args.get("encoder_spec") or {}), list(imnet_args.get("hidden_list", [256, 256, 256])),
               int(args.get("hidden_dim", 256)), int(imnet_args.get("out_dim", 3)))


def infer_args(sd: dict) -> dict:
    """Recover the official `args` spec from a bare state dict's shapes. EDSR trunks of 32 blocks x 256
    features are read as 'edsr' (residual scale 0.1), every other EDSR as 'edsr-baseline'."""
    if "encoder.head.0.weight" in sd:
        n_feats = int(sd["encoder.head.0.weight"].shape[0])
        n_blocks = 0
        while f"encoder.body.{n_blocks}.body.0.weight" in sd:
            n_blocks += 1
        name = "edsr" if (n_blocks, n_feats) == (32, 256) else "edsr-baseline"
        enc = {"name": name, "args": {"n_resblocks": n_blocks, "n_feats": n_feats, "no_upsampling": True}}
    elif "encoder.SFENet1.weight" in sd:
        g0, ksize = int(sd["encoder.SFENet1.weight"].shape[0]), int(sd["encoder.SFENet1.weight"].shape[-1])
        n_blocks = len({k.split(".")[2] for k in sd if k.startswith("encoder.RDBs.")})
        n_convs = len({k.split(".")[4] for k in sd if k.startswith("encoder.RDBs.0.convs.")})
        config = next((n for n, (d, c, _) in RDN_CONFIGS.items() if (d, c) == (n_blocks, n_convs)), None)
        if config is None:
            raise ValueError(f"RDN with {n_blocks} blocks of {n_convs} convs matches no official RDNconfig")
        enc = {"name": "rdn", "args": {"G0": g0, "RDNkSize": ksize, "RDNconfig": config, "no_upsampling": True}}
    else:
        raise KeyError("no encoder.head.0.weight (EDSR) or encoder.SFENet1.weight (RDN) key; SwinIR-LTE is not "
                       "ported")
    linear = sorted(int(k.split(".")[2]) for k in sd if k.startswith("imnet.layers.") and k.endswith(".weight"))
    hidden = [int(sd[f"imnet.layers.{i}.weight"].shape[0]) for i in linear[:-1]]
    return {"encoder_spec": enc,
            "imnet_spec": {"name": "mlp", "args": {"out_dim": int(sd[f"imnet.layers.{linear[-1]}.weight"].shape[0]),
                                                   "hidden_list": hidden}},
            "hidden_dim": int(sd["coef.weight"].shape[0])}
