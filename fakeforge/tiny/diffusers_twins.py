"""Tiny random-weight diffusers pipelines (SD2, SDXL, SD3), saved with `save_pretrained`.

Shapes keep what calling code depends on: the VAE downsamples by 8 (4 blocks), SD2 uses linear
projections in its transformer blocks, SDXL has two text encoders and text-time embeddings, SD3 has
two CLIP encoders with projection plus a T5 encoder and a flow-matching scheduler. The default image
size of every twin is 64x64. Helpers here are reused by the editing/SR twins.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fakeforge.tiny.tokenizers import clip_tokenizer, t5_tokenizer


def clip_text_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32, act: str = "gelu"):
    """A 2-layer CLIP text config of width `hidden`."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                          hidden_act=act, projection_dim=projection_dim, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, layer_norm_eps=1e-5)


def tiny_vae(blocks: int = 4, latent_channels: int = 4, scaling_factor: float = 0.18215, seed: int = 0, **kw):
    """AutoencoderKL with 2**(blocks-1) downsampling (8x for 4 blocks, like the real SD VAE)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=[8] * (blocks - 1) + [16], layers_per_block=1,
                         down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
                         norm_num_groups=4, sample_size=64, scaling_factor=scaling_factor, **kw)


def tiny_unet(in_channels: int = 4, cross_attention_dim: int = 32, seed: int = 0, **kw):
    """A two-level UNet2DConditionModel (16/32 channels) with cross-attention in the lower level."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    args = dict(sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
                attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    args.update(kw)
    return UNet2DConditionModel(**args)


def tiny_clip_text(tokenizer, seed: int = 0, with_projection: bool = False, **kw):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(clip_text_config(len(tokenizer), **kw))


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def sd2_components(unet_in_channels: int = 4) -> dict:
    """Components of an SD2-layout pipeline (shared by text2image, img2img, inpainting twins)."""
    tok = clip_tokenizer(pad_token="!")  # SD2's tokenizer pads with "!"
    return dict(vae=tiny_vae(), text_encoder=tiny_clip_text(tok), tokenizer=tok,
                unet=tiny_unet(in_channels=unet_in_channels), scheduler=ddim_scheduler(),
                safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def build_sd2(out_dir: Path) -> None:
    """stabilityai/stable-diffusion-2-1 layout: StableDiffusionPipeline, DDIM, no safety checker."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**sd2_components()).save_pretrained(out_dir, safe_serialization=True)


def build_sdxl(out_dir: Path) -> None:
    """stabilityai/stable-diffusion-xl-base-1.0 layout: two CLIP encoders, text-time conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tok, tok2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
    te = tiny_clip_text(tok, seed=0)
    te2 = tiny_clip_text(tok2, seed=1, with_projection=True)
    # cross-attention width = hidden(te) + hidden(te2); added-cond input = 6 * time-embed dim + proj(te2)
    unet = tiny_unet(cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + 32, transformer_layers_per_block=(1, 2))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(force_upcast=False), text_encoder=te, text_encoder_2=te2,
                                     tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=scheduler,
                                     image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def build_sd3(out_dir: Path, **transformer_kw) -> None:
    """stabilityai/stable-diffusion-3-medium-diffusers layout: MMDiT, 2 CLIP + T5, flow matching.
    `transformer_kw` extends the SD3Transformer2DModel config (the SD3.5 twins: qk_norm, dual attention)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(pad_token="!"), t5_tokenizer()
    te = tiny_clip_text(tok, seed=0, with_projection=True)
    te2 = tiny_clip_text(tok2, seed=1, with_projection=True)
    torch.manual_seed(2)
    te3 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=64, d_kv=16, d_ff=64, num_layers=1, num_heads=4,
                                  relative_attention_num_buckets=8, is_encoder_decoder=False, use_cache=False,
                                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    torch.manual_seed(0)
    # joint_attention_dim = T5 width (>= 2 x CLIP width); pooled dim = sum of the CLIP projections
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=32,
                                        **transformer_kw)
    vae = tiny_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                   use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
                                    text_encoder_3=te3, tokenizer_3=tok3, image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(out_dir, safe_serialization=True)
