"""Tiny random-weight twin of DIRE's unconditional diffusion model, built offline.

`ddpm_uncond`: a diffusers `DDPMPipeline` (an unconditional `UNet2DModel`, 32 px, two levels of 16/32 channels,
attention in the lower one, + a `DDPMScheduler` of 1000 linear-beta steps), saved with `save_pretrained` and loaded
back by `DDPMPipeline.from_pretrained(DIR)`, the same code as `google/ddpm-bedroom-256`.
"""
from __future__ import annotations

from pathlib import Path


def build_ddpm_uncond(out_dir: Path, seed: int = 0) -> None:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out_dir)
