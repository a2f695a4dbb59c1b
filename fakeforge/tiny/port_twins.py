"""Tiny random-weight twins of the ported (non-diffusers) generators, written in the official file layouts.

  lte          out_dir/lte.pth: {'model': {'name': 'lte', 'args', 'sd'}, 'epoch'} as jaewon-lee-b/lte saves it
               (EDSR-baseline encoder of 2 blocks x 8 features, 16 Fourier channels, MLP 16-16)
Every builder takes the output folder and writes the twin there; fixed seeds make twins reproducible.
"""
from __future__ import annotations

from pathlib import Path

import torch

#: official-layout args of the tiny LTE (the real edsr-baseline-lte: 16 blocks, 64 features, hidden 256, MLP 3 x 256)
TINY_LTE_ARGS = {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 2, "n_feats": 8,
                                                                     "no_upsampling": True}},
                 "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}},
                 "hidden_dim": 16}


def build_lte(out_dir: Path) -> None:
    """A small LTE saved as the official checkpoint dict."""
    from generators.lte_net import build_from_args

    torch.manual_seed(0)
    model = build_from_args(TINY_LTE_ARGS)
    torch.save({"model": {"name": "lte", "args": TINY_LTE_ARGS, "sd": model.state_dict()}, "epoch": 0},
               Path(out_dir) / "lte.pth")
