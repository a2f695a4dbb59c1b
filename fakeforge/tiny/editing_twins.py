"""Tiny random-weight twins of the editing and super-resolution models, in their normal file formats.

  sd2_inpaint         StableDiffusionInpaintPipeline, SD2 layout, 9-channel UNet (4 latent + 1 mask + 4 masked)
  sd_x4_upscaler      StableDiffusionUpscalePipeline: 3-block VAE (x4, scaling 0.08333), 7-channel UNet
                      (4 latent + 3 low-res RGB) with noise-level class embeddings, DDPM low-res scheduler
  sd_latent_upscaler  StableDiffusionLatentUpscalePipeline: K-block UNet (channels >= 32: groups = ch // 32)
  controlnet_canny    StableDiffusionControlNetPipeline with its ControlNet inside (one folder)
  liif                out_dir/liif.pth in the official LIIF checkpoint layout and key names (small widths in 'args')
  lama                out_dir/big-lama.pt, a TorchScript module with big-lama's contract model(image, mask) -> image
Every builder takes the output folder and writes the twin there; fixed seeds make twins reproducible.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fakeforge.tiny.diffusers_twins import sd2_components, tiny_clip_text, tiny_unet, tiny_vae
from fakeforge.tiny.tokenizers import clip_tokenizer

#: official-layout args of the tiny LIIF (the real edsr-baseline-liif uses 16 blocks, 64 features, MLP 4 x 256)
TINY_LIIF_ARGS = {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 2, "n_feats": 8,
                                                                      "no_upsampling": True}},
                  "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}}


def build_sd2_inpaint(out_dir: Path) -> None:
    """stabilityai/stable-diffusion-2-inpainting layout."""
    from diffusers import StableDiffusionInpaintPipeline

    StableDiffusionInpaintPipeline(**sd2_components(unet_in_channels=9)).save_pretrained(out_dir,
                                                                                        safe_serialization=True)


def build_sd_x4_upscaler(out_dir: Path) -> None:
    """stabilityai/stable-diffusion-x4-upscaler layout (output = 4 x input)."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    tok = clip_tokenizer(pad_token="!")
    unet = tiny_unet(in_channels=7, num_class_embeds=1000, class_embed_type=None)
    pipe = StableDiffusionUpscalePipeline(
        vae=tiny_vae(blocks=3, scaling_factor=0.08333), text_encoder=tiny_clip_text(tok), tokenizer=tok, unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.0001,
                                beta_end=0.02, clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, watermarker=None, max_noise_level=350)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def build_sd_latent_upscaler(out_dir: Path) -> None:
    """stabilityai/sd-x2-latent-upscaler layout (output = 2 x input)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel

    tok = clip_tokenizer()
    text = tiny_clip_text(tok, act="quick_gelu")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None, block_out_channels=[32, 32, 64, 64],
        time_cond_proj_dim=128 + 32, conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=32,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
        in_channels=8, mid_block_type=None, only_cross_attention=False, out_channels=5,
        resnet_time_scale_shift="scale_shift", time_embedding_type="fourier", timestep_post_act="gelu",
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
        sample_size=16)
    pipe = StableDiffusionLatentUpscalePipeline(vae=tiny_vae(), text_encoder=text, tokenizer=tok, unet=unet,
                                                scheduler=EulerDiscreteScheduler(prediction_type="sample"))
    pipe.save_pretrained(out_dir, safe_serialization=True)


def build_controlnet_canny(out_dir: Path) -> None:
    """lllyasviel/sd-controlnet-canny on an SD base, saved as one StableDiffusionControlNetPipeline folder."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    comps = sd2_components()
    torch.manual_seed(0)
    controlnet = ControlNetModel(
        in_channels=4, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, norm_num_groups=8,
        conditioning_embedding_out_channels=(8, 8, 16, 16))  # 3 stride-2 convs: control image / 8 = latent size
    pipe = StableDiffusionControlNetPipeline(controlnet=controlnet, **comps)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def build_liif(out_dir: Path) -> None:
    """A small LIIF saved as the official checkpoint dict {'model': {'name', 'args', 'sd'}, 'epoch'}."""
    from generators.liif_net import build_from_args

    torch.manual_seed(0)
    model = build_from_args(TINY_LIIF_ARGS)
    ckpt = {"model": {"name": "liif", "args": TINY_LIIF_ARGS, "sd": model.state_dict()}, "epoch": 0}
    torch.save(ckpt, Path(out_dir) / "liif.pth")


class TinyLama(nn.Module):
    """Random conv net with big-lama's contract: known pixels are copied from the input."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(4, ch, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(ch, ch, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(ch, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(image.dtype)
        pred = self.net(torch.cat([image * (1 - mask), mask], dim=1))
        return mask * pred + (1 - mask) * image


def build_lama(out_dir: Path) -> None:
    """out_dir/big-lama.pt: a scripted TinyLama (loads with torch.jit.load like the real file)."""
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch >= 2.14 marks torch.jit as deprecated; big-lama.pt is TorchScript
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        torch.jit.save(torch.jit.script(TinyLama().eval()), str(Path(out_dir) / "big-lama.pt"))
