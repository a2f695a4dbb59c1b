"""The LIIF network (Chen, Liu, Wang; CVPR 2021; github.com/yinboc/liif), written so the official
checkpoints load by their own state-dict keys.

Official checkpoints (e.g. `edsr-baseline-liif.pth`) are `torch.save`d dicts
`{'model': {'name': 'liif', 'args': {...}, 'sd': state_dict}, 'optimizer': ..., 'epoch': ...}` whose
`sd` keys are `encoder.sub_mean.*`, `encoder.add_mean.*`, `encoder.head.0.*`,
`encoder.body.<i>.body.{0,2}.*` (residual blocks), `encoder.body.<n>.*` (last conv) and
`imnet.layers.{0,2,...}.*` (the MLP). The module tree below reproduces exactly those names:
EDSR(-baseline) encoder without upsampling, an MLP `imnet` fed with the 3x3-unfolded feature (feature
unfolding), the relative coordinate and the cell size (cell decoding), and the area-weighted blend of
the four nearest latent codes (local ensemble). Inputs are normalised to [-1, 1] as in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_DEFAULTS = {"edsr-baseline": {"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0},
                    "edsr": {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1}}


class MeanShift(nn.Conv2d):
    """EDSR's fixed 1x1 RGB mean shift. LIIF's encoder keeps it (it is in the state dict) but never calls it."""

    def __init__(self, sign: int = -1, rgb_mean=(0.4488, 0.4371, 0.4040)):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * torch.tensor(rgb_mean)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """conv-ReLU-conv with a scaled residual (EDSR)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(True),
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.res_scale + x


class EDSREncoder(nn.Module):
    """EDSR trunk without the upsampling tail: image (B,3,h,w) -> features (B,n_feats,h,w)."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)],
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x


class MLP(nn.Module):
    """Linear-ReLU stack named `layers` like the official `mlp`."""

    def __init__(self, in_dim: int, out_dim: int, hidden_list: list[int]):
        super().__init__()
        layers, last = [], in_dim
        for hidden in hidden_list:
            layers += [nn.Linear(last, hidden), nn.ReLU()]
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def make_coord(shape, device=None, dtype=torch.float32, flatten: bool = True) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1] for a (H, W) grid, last dim = (y, x)."""
    seqs = [(-1 + 1 / n) + (2 / n) * torch.arange(n, device=device, dtype=dtype) for n in shape]
    ret = torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1)
    return ret.view(-1, 2) if flatten else ret


class LIIF(nn.Module):
    """Local implicit image function: encoder features + an MLP queried at continuous coordinates."""

    def __init__(self, encoder: EDSREncoder, imnet_hidden: list[int], out_dim: int = 3, local_ensemble: bool = True,
                 feat_unfold: bool = True, cell_decode: bool = True):
        super().__init__()
        self.local_ensemble, self.feat_unfold, self.cell_decode = local_ensemble, feat_unfold, cell_decode
        self.encoder = encoder
        in_dim = encoder.out_dim * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
        self.imnet = MLP(in_dim, out_dim, imnet_hidden)

    def gen_feat(self, inp: torch.Tensor) -> torch.Tensor:
        """Encode a normalised image (B,3,h,w) once; queries reuse the features."""
        feat = self.encoder(inp)
        if self.feat_unfold:
            feat = F.unfold(feat, 3, padding=1).view(feat.shape[0], feat.shape[1] * 9, *feat.shape[2:])
        return feat

    def query_rgb(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """RGB at query coordinates `coord` (B,Q,2; (y, x) in [-1, 1]) with cell sizes `cell` (B,Q,2)."""
        if self.local_ensemble:
            shifts, eps = [(-1, -1), (-1, 1), (1, -1), (1, 1)], 1e-6
        else:
            shifts, eps = [(0, 0)], 0.0
        h, w = feat.shape[-2:]
        rx, ry = 1 / h, 1 / w  # half a latent cell in [-1, 1] units (official names)
        feat_coord = make_coord((h, w), feat.device, feat.dtype, flatten=False).permute(2, 0, 1)
        feat_coord = feat_coord.unsqueeze(0).expand(feat.shape[0], 2, h, w)
        preds, areas = [], []
        for vx, vy in shifts:
            c = coord.clone()
            c[:, :, 0] += vx * rx + eps
            c[:, :, 1] += vy * ry + eps
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            grid = c.flip(-1).unsqueeze(1)
            q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            rel = coord - q_coord
            rel[:, :, 0] *= h
            rel[:, :, 1] *= w
            inp = torch.cat([q_feat, rel], dim=-1)
            if self.cell_decode:
                rel_cell = cell.clone()
                rel_cell[:, :, 0] *= h
                rel_cell[:, :, 1] *= w
                inp = torch.cat([inp, rel_cell], dim=-1)
            b, q = coord.shape[:2]
            preds.append(self.imnet(inp.view(b * q, -1)).view(b, q, -1))
            areas.append(torch.abs(rel[:, :, 0] * rel[:, :, 1]) + 1e-9)
        total = torch.stack(areas).sum(dim=0)
        if self.local_ensemble:  # each prediction is weighted by the area of the diagonally opposite cell
            areas = areas[::-1]
        return sum(p * (a / total).unsqueeze(-1) for p, a in zip(preds, areas))

    def forward(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.query_rgb(self.gen_feat(inp), coord, cell)


@torch.no_grad()
def upsample(model: nn.Module, img: torch.Tensor, out_h: int, out_w: int, bsize: int = 30000,
             cell_factor: float = 1.0) -> torch.Tensor:
    """Render images (B,3,h,w in [0,1]) at out_h x out_w, querying `bsize` pixels at a time. Returns [0,1].

    Works for any network with `gen_feat(img) -> state` and `query_rgb(state, coord, cell)` (LIIF, LTE);
    `cell_factor` scales the cell size (LTE clips it to the training range above x4)."""
    b = img.shape[0]
    feat = model.gen_feat((img - 0.5) / 0.5)
    coord = make_coord((out_h, out_w), img.device, img.dtype).unsqueeze(0).expand(b, -1, -1)
    cell = torch.empty_like(coord)
    cell[..., 0], cell[..., 1] = 2 / out_h, 2 / out_w
    if cell_factor != 1.0:
        cell = cell * cell_factor
    chunks = [model.query_rgb(feat, coord[:, i:i + bsize], cell[:, i:i + bsize])
              for i in range(0, coord.shape[1], bsize)]
    pred = torch.cat(chunks, dim=1) * 0.5 + 0.5
    return pred.clamp(0, 1).view(b, out_h, out_w, -1).permute(0, 3, 1, 2)


def build_from_args(args: dict) -> LIIF:
    """A LIIF from the official `model['args']` spec (encoder_spec / imnet_spec / flags)."""
    enc_spec = args.get("encoder_spec") or {}
    name = enc_spec.get("name", "edsr-baseline")
    if name not in ENCODER_DEFAULTS:
        raise ValueError(f"LIIF encoder '{name}' is not supported (supported: {', '.join(ENCODER_DEFAULTS)})")
    enc_args = {**ENCODER_DEFAULTS[name], **(enc_spec.get("args") or {})}
    if not enc_args.pop("no_upsampling", True):
        raise ValueError("LIIF encoder_spec.args.no_upsampling must be true")
    enc_args.pop("scale", None)
    enc_args.pop("rgb_range", None)
    encoder = EDSREncoder(int(enc_args["n_resblocks"]), int(enc_args["n_feats"]), float(enc_args["res_scale"]))
    imnet_args = (args.get("imnet_spec") or {}).get("args") or {}
    return LIIF(encoder, list(imnet_args.get("hidden_list", [256, 256, 256, 256])), int(imnet_args.get("out_dim", 3)),
                bool(args.get("local_ensemble", True)), bool(args.get("feat_unfold", True)),
                bool(args.get("cell_decode", True)))


def infer_args(sd: dict) -> dict:
    """Recover the official `args` spec from a bare state dict's shapes (widths, depths, flags)."""
    n_feats = int(sd["encoder.head.0.weight"].shape[0])
    n_blocks = 0
    while f"encoder.body.{n_blocks}.body.0.weight" in sd:
        n_blocks += 1
    linear = sorted(int(k.split(".")[2]) for k in sd if k.startswith("imnet.layers.") and k.endswith(".weight"))
    hidden = [int(sd[f"imnet.layers.{i}.weight"].shape[0]) for i in linear[:-1]]
    in_dim = int(sd[f"imnet.layers.{linear[0]}.weight"].shape[1])
    flags = {(u, c): n_feats * (9 if u else 1) + 2 + (2 if c else 0) for u in (True, False) for c in (True, False)}
    match = [k for k, v in flags.items() if v == in_dim]
    if not match:
        raise ValueError(f"imnet input width {in_dim} does not fit an encoder of width {n_feats}")
    unfold, cell = match[0]
    return {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": n_blocks, "n_feats": n_feats,
                                                                "no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": int(sd[f"imnet.layers.{linear[-1]}.weight"].shape[0]),
                                                   "hidden_list": hidden}},
            "feat_unfold": unfold, "cell_decode": cell}
