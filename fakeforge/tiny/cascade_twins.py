"""Tiny random-weight twin of the DeepFloyd IF cascade, one diffusers folder per stage.

  deepfloyd_if/stage_I    IFPipeline: T5 encoder + pixel UNet (3 -> 6 channels: epsilon + learned
                          variance range), text added-embedding, simple cross-attention blocks, 16 px
  deepfloyd_if/stage_II   IFSuperResolutionPipeline: UNet on [noisy image, upscaled low-res] (6 channels)
                          with the noise level as a timestep class embedding, 32 px; same T5 weights
  deepfloyd_if/stage_III  StableDiffusionUpscalePipeline (the sd_x4_upscaler twin), 32 -> 128 px
Stages I and II are saved with plain and "fp16"-variant weight files, like the real repositories.

The stage names are the sub-folders the `cascade` generator looks for when --tiny sets model_id to this folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fakeforge.tiny.tokenizers import t5_tokenizer


def tiny_t5_encoder(tokenizer, d_model: int = 32, seed: int = 0):
    """A one-layer T5EncoderModel (the real IF uses T5 v1.1 XXL, width 4096)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, is_encoder_decoder=False,
                                   use_cache=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                   feed_forward_proj="gated-gelu"))


def tiny_if_unet(in_channels: int, sample_size: int, text_width: int, super_resolution: bool, seed: int = 0):
    """An IF-style pixel UNet: learned-variance output (6 channels), T5 states projected by encoder_hid_dim."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=6, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), cross_attention_dim=32,
        encoder_hid_dim=text_width, attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        resnet_time_scale_shift="scale_shift", norm_num_groups=8, act_fn="gelu",
        class_embed_type="timestep" if super_resolution else None)


def if_scheduler():
    """IF's DDPM scheduler: cosine betas, learned variance range, dynamic thresholding."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                         thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
                         prediction_type="epsilon", clip_sample=True)


def _save_both(pipe, folder: Path) -> None:
    """Plain and `variant="fp16"` weight files, as the real IF repositories hold (the presets ask for fp16)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.save_pretrained(folder, safe_serialization=True, variant="fp16")


def build_deepfloyd_if(out_dir: Path) -> None:
    """DeepFloyd/IF-I-XL-v1.0 + IF-II-L-v1.0 + stabilityai/stable-diffusion-x4-upscaler layouts, one sub-folder each."""
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline

    from fakeforge.tiny.editing_twins import build_sd_x4_upscaler

    out_dir = Path(out_dir)
    tok = t5_tokenizer()
    encoder = tiny_t5_encoder(tok)
    width = encoder.config.d_model
    stage1 = IFPipeline(tokenizer=tok, text_encoder=encoder, unet=tiny_if_unet(3, 16, width, False),
                        scheduler=if_scheduler(), safety_checker=None, feature_extractor=None, watermarker=None,
                        requires_safety_checker=False)
    _save_both(stage1, out_dir / "stage_I")
    stage2 = IFSuperResolutionPipeline(tokenizer=tok, text_encoder=encoder,
                                       unet=tiny_if_unet(6, 32, width, True, seed=1), scheduler=if_scheduler(),
                                       image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
                                       safety_checker=None, feature_extractor=None, watermarker=None,
                                       requires_safety_checker=False)
    _save_both(stage2, out_dir / "stage_II")
    (out_dir / "stage_III").mkdir()
    build_sd_x4_upscaler(out_dir / "stage_III")
