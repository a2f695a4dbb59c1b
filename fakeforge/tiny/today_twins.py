"""Tiny random-weight twins of today's text-to-image families, built offline from the real diffusers classes.

FLUX.1 (schnell and dev share one builder: dev adds the guidance embedding and dynamic shifting),
SD3.5 (large/turbo and medium share the SD3 builder: RMS q/k-norm, medium adds MMDiT-X dual attention),
PixArt-Sigma, SDXL + refiner (a cascade folder), Kandinsky 2.2 (saved as its combined prior + decoder
pipeline), Sana (Gemma-2 text encoder, DC-AE), SD1.5 for the LCM-LoRA preset,
and the LCM-LoRA adapters themselves (peft LoRA layers on the twin's UNet, saved with diffusers'
`save_lora_weights`). Every twin makes 64x64 images; what calling code depends on is kept (latent packing
for FLUX, the VAE factor, two/three text encoders, the refiner's aesthetic-score conditioning).
"""
from __future__ import annotations

from pathlib import Path

import torch

from fakeforge.tiny.diffusers_twins import build_sd3, build_sdxl, sd2_components, tiny_clip_text, tiny_unet, tiny_vae
from fakeforge.tiny.tokenizers import caption_corpus, clip_tokenizer, t5_tokenizer

LORA_FILE = "pytorch_lora_weights.safetensors"


def tiny_t5(tok, d_model: int = 32, seed: int = 2):
    """A one-layer T5 encoder of width `d_model`."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, is_encoder_decoder=False,
                                   use_cache=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def _flux(out_dir: Path, guidance: bool) -> None:
    """black-forest-labs/FLUX.1 layout: CLIP (pooled) + T5, 16-channel VAE, 2x2-packed latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    te = tiny_clip_text(tok, seed=0)
    te2 = tiny_t5(tok2)
    torch.manual_seed(0)
    # in_channels = 4 x the VAE's 16 latent channels (2x2 packing); RoPE axes sum to the head width
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance)
    vae = tiny_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                   use_post_quant_conv=False)
    if guidance:  # FLUX.1-dev's scheduler config
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:  # FLUX.1-schnell's
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
                 transformer=transformer).save_pretrained(out_dir, safe_serialization=True)


def build_flux_schnell(out_dir: Path) -> None:
    """FLUX.1-schnell: no guidance embedding, fixed shift."""
    _flux(out_dir, guidance=False)


def build_flux_dev(out_dir: Path) -> None:
    """FLUX.1-dev: guidance-distilled (guidance embedding), dynamic shifting."""
    _flux(out_dir, guidance=True)


def build_sd35_large(out_dir: Path) -> None:
    """stabilityai/stable-diffusion-3.5-large(-turbo) layout: SD3 MMDiT with RMS q/k normalisation."""
    build_sd3(out_dir, qk_norm="rms_norm")


def build_sd35_medium(out_dir: Path) -> None:
    """stabilityai/stable-diffusion-3.5-medium layout: MMDiT-X (dual attention in the first layer)."""
    build_sd3(out_dir, qk_norm="rms_norm", dual_attention_layers=(0,))


def build_pixart_sigma(out_dir: Path) -> None:
    """PixArt-alpha/PixArt-Sigma-XL-2-1024-MS layout: DiT with adaLN-single, T5 captions, DPM-Solver."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tok = t5_tokenizer()
    te = tiny_t5(tok)
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    PixArtSigmaPipeline(tokenizer=tok, text_encoder=te, vae=tiny_vae(scaling_factor=0.13025), transformer=transformer,
                        scheduler=DPMSolverMultistepScheduler()).save_pretrained(out_dir, safe_serialization=True)


def build_sdxl_refiner(out_dir: Path) -> None:
    """SDXL base + refiner as a cascade folder: `base/` (the SDXL twin) and `refiner/`
    (StableDiffusionXLImg2ImgPipeline with only the second text encoder and aesthetic-score conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    build_sdxl(Path(out_dir) / "base")
    tok2 = clip_tokenizer(pad_token="!")
    te2 = tiny_clip_text(tok2, seed=1, with_projection=True)
    # refiner: cross-attention = te2 width only; added cond = 5 time ids (aesthetic score instead of the
    # target size) x 8 + the pooled projection
    unet = tiny_unet(cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=5 * 8 + 32, seed=3)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    StableDiffusionXLImg2ImgPipeline(vae=tiny_vae(force_upcast=False), text_encoder=None, text_encoder_2=te2,
                                     tokenizer=None, tokenizer_2=tok2, unet=unet, scheduler=scheduler,
                                     requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
                                     add_watermarker=False).save_pretrained(Path(out_dir) / "refiner",
                                                                            safe_serialization=True)


def build_kandinsky22(out_dir: Path) -> None:
    """kandinsky-community/kandinsky-2-2-{prior,decoder} as KandinskyV22CombinedPipeline: CLIP prior
    (text -> image embedding) + image-embedding-conditioned UNet + MoVQ decoder."""
    from diffusers import (
        DDIMScheduler,
        KandinskyV22CombinedPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tok = clip_tokenizer()
    te = tiny_clip_text(tok, seed=0, with_projection=True)
    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))  # zero std would zero every embedding
    torch.manual_seed(1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, image_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
        num_channels=3, num_hidden_layers=2, patch_size=8))
    processor = CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True, do_normalize=True, do_resize=True,
                                   image_mean=[0.48145466, 0.4578275, 0.40821073],
                                   image_std=[0.26862954, 0.26130258, 0.27577711], resample=3)
    prior_scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0)
    torch.manual_seed(2)
    unet = UNet2DConditionModel(in_channels=4, out_channels=8, addition_embed_type="image",
                                down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                                up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                                mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(16, 32),
                                layers_per_block=1, encoder_hid_dim=32, encoder_hid_dim_type="image_proj",
                                cross_attention_dim=32, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
                                class_embed_type=None, norm_num_groups=8)
    torch.manual_seed(3)
    movq = VQModel(block_out_channels=[32] * 4, in_channels=3, out_channels=3, latent_channels=4,
                   down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
                   up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, layers_per_block=1,
                   norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12, vq_embed_dim=4)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    KandinskyV22CombinedPipeline(unet=unet, scheduler=scheduler, movq=movq, prior_prior=prior,
                                 prior_image_encoder=image_encoder, prior_text_encoder=te, prior_tokenizer=tok,
                                 prior_scheduler=prior_scheduler,
                                 prior_image_processor=processor).save_pretrained(out_dir, safe_serialization=True)


def gemma_tokenizer(vocab_size: int = 400):
    """GemmaTokenizer (byte-fallback BPE, `<bos>`/`<eos>`/`<pad>`) trained on the caption corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    from fakeforge.tiny.tokenizers import _merges

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(caption_corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                  show_progress=False))
    return GemmaTokenizer(vocab=tok.get_vocab(), merges=_merges(tok), unk_token="<unk>", bos_token="<bos>",
                          eos_token="<eos>", pad_token="<pad>", model_max_length=512)


def build_sana(out_dir: Path) -> None:
    """Efficient-Large-Model/Sana_*_diffusers layout: linear-attention DiT, DC-AE (32x, here 2x), Gemma-2 encoder."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = gemma_tokenizer()
    torch.manual_seed(0)
    te = Gemma2Model(Gemma2Config(head_dim=16, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                  num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tok),
                                  max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    torch.manual_seed(1)
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                         num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                         cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=16,
                                         sample_size=32)
    torch.manual_seed(2)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=[1, 1], downsample_block_type="conv", upsample_block_type="interpolate",
                        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
    SanaPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(out_dir, safe_serialization=True)


def build_sd15(out_dir: Path) -> None:
    """runwayml/stable-diffusion-v1-5 layout: StableDiffusionPipeline, PNDM, 4-channel UNet
    (the SD1 twin differs from SD2's only where the tiny size cannot show it)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    parts = sd2_components()
    parts["scheduler"] = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       skip_prk_steps=True, steps_offset=1)
    StableDiffusionPipeline(**parts).save_pretrained(out_dir, safe_serialization=True)


def build_ldm(out_dir: Path) -> None:
    """CompVis/ldm-text2im-large-256 layout: LDMTextToImagePipeline (KL autoencoder saved as `vqvae`, LDMBert
    text encoder with a BERT WordPiece tokenizer, conditional UNet, DDIM)."""
    from diffusers import LDMTextToImagePipeline
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    from fakeforge.tiny.diffusers_twins import ddim_scheduler
    from fakeforge.tiny.tokenizers import bert_tokenizer

    tok = bert_tokenizer()
    torch.manual_seed(0)
    bert = LDMBertModel(LDMBertConfig(vocab_size=len(tok), max_position_embeddings=77, encoder_layers=2,
                                      encoder_ffn_dim=64, encoder_attention_heads=4, head_dim=8, d_model=32))
    LDMTextToImagePipeline(vqvae=tiny_vae(), bert=bert, tokenizer=tok, unet=tiny_unet(cross_attention_dim=32),
                           scheduler=ddim_scheduler()).save_pretrained(out_dir, safe_serialization=True)


def _lora_twin(out_dir: Path, base_unet, rank: int = 4, seed: int = 0) -> None:
    """A LoRA adapter for `base_unet` (peft LoRA layers on its attention projections, random B so it changes
    the output), saved in the diffusers/kohya-free format `load_lora_weights` reads."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base_unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in base_unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(base_unet))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=layers, weight_name=LORA_FILE,
                                              safe_serialization=True)


def build_lcm_lora_sd15(out_dir: Path) -> None:
    """latent-consistency/lcm-lora-sdv1-5 layout: a UNet LoRA fitting the sd15 twin (one safetensors file)."""
    _lora_twin(out_dir, sd2_components()["unet"], seed=0)


def build_lcm_lora_sdxl(out_dir: Path) -> None:
    """latent-consistency/lcm-lora-sdxl layout: a UNet LoRA fitting the sdxl twin."""
    unet = tiny_unet(cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + 32, transformer_layers_per_block=(1, 2))
    _lora_twin(out_dir, unet, seed=1)


def build_sdxl_inpaint(out_dir: Path) -> None:
    """diffusers/stable-diffusion-xl-1.0-inpainting-0.1 layout: the SDXL twin's components with a 9-channel UNet
    (latents + mask + masked-image latents) in StableDiffusionXLInpaintPipeline."""
    import tempfile

    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    with tempfile.TemporaryDirectory() as tmp:
        build_sdxl(Path(tmp))
        parts = dict(StableDiffusionXLPipeline.from_pretrained(tmp).components)
    parts["unet"] = tiny_unet(in_channels=9, cross_attention_dim=64, addition_embed_type="text_time",
                              addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                              transformer_layers_per_block=(1, 2))
    StableDiffusionXLInpaintPipeline(**parts, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False).save_pretrained(out_dir, safe_serialization=True)
