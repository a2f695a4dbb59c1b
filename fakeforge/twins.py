"""Tiny random-weight twins of every model family, built offline in the normal Hugging Face folder format.

A twin is a real diffusers/transformers/timm class (or a TorchScript file with the real call contract)
built small from a config, saved with `save_pretrained`, and loaded back by the same
`from_pretrained(path)` code a user's real weights take. `--tiny` swaps each config's model id for
the path of its twin (see `ensure_tiny`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from fakeforge.registry import Registry

TWINS = Registry("tiny twin")
# name -> "module:builder"; a builder takes the output folder and writes the twin into it.
TWINS.register("sd2", "fakeforge.tiny.diffusers_twins:build_sd2", "StableDiffusionPipeline (SD2.1 layout)")
TWINS.register("sdxl", "fakeforge.tiny.diffusers_twins:build_sdxl", "StableDiffusionXLPipeline")
TWINS.register("sd3", "fakeforge.tiny.diffusers_twins:build_sd3", "StableDiffusion3Pipeline with T5")
TWINS.register("instructblip", "fakeforge.tiny.instructblip:build_instructblip",
               "InstructBlipForConditionalGeneration + processor")
# editing and super-resolution twins
for _name, _help in [("sd2_inpaint", "StableDiffusionInpaintPipeline (9-channel UNet)"),
                     ("sd_x4_upscaler", "StableDiffusionUpscalePipeline (x4)"),
                     ("sd_latent_upscaler", "StableDiffusionLatentUpscalePipeline (x2)"),
                     ("controlnet_canny", "StableDiffusionControlNetPipeline with a canny ControlNet"),
                     ("liif", "LIIF (EDSR-baseline encoder + implicit MLP) state dict"),
                     ("lama", "TorchScript model with big-lama.pt's call contract")]:
    TWINS.register(_name, f"fakeforge.tiny.editing_twins:build_{_name}", _help)
# detector backbones
for _name, _help in [("timm_vit", "timm VisionTransformer (ViT-B/16 class), local-dir folder"),
                     ("timm_resnet", "timm ResNet (ResNet-50 Bottleneck class), local-dir folder"),
                     ("open_clip_vit", "open_clip CLIP with a ViT image tower, local-dir folder"),
                     ("hf_clip_vit", "transformers CLIPVisionModelWithProjection + CLIPImageProcessor")]:
    TWINS.register(_name, f"fakeforge.tiny.backbone_twins:build_{_name}", _help)

# cascade and ported generators
TWINS.register("deepfloyd_if", "fakeforge.tiny.cascade_twins:build_deepfloyd_if",
               "IF stage I (IFPipeline, T5) + stage II (IFSuperResolutionPipeline) + SD x4 upscaler, one folder each")
TWINS.register("lte", "fakeforge.tiny.port_twins:build_lte", "LTE (EDSR-baseline encoder) in the official .pth layout")
TWINS.register("stylegan_xl", "fakeforge.tiny.port_twins:build_stylegan_xl",
               "StyleGAN-XL (16 px, 1000 classes) as an official-layout network pickle")

# attack models
TWINS.register("surrogate_resnet50", "fakeforge.tiny.attack_twins:build_surrogate_resnet50",
               "timm resnet50 at toy size (attack surrogate), timm local-dir format")
TWINS.register("issba_stegastamp", "fakeforge.tiny.attack_twins:build_issba_stegastamp",
               "StegaStamp encoder/decoder for ISSBA, briefly trained so the code is recoverable")

# DE-FAKE: two-tower CLIP and BLIP captioner
TWINS.register("hf_clip", "fakeforge.tiny.defake_twins:build_hf_clip",
               "transformers CLIPModel (image + text towers) + CLIPProcessor (CLIP ViT-B/32 layout)")
TWINS.register("blip_captioner", "fakeforge.tiny.defake_twins:build_blip_captioner",
               "transformers BlipForConditionalGeneration + BlipProcessor (BLIP captioner)")
TWINS.register("ddpm_uncond", "fakeforge.tiny.dire_twins:build_ddpm_uncond",
               "diffusers DDPMPipeline with an unconditional UNet2DModel (DIRE's diffusion model)")

# today's text-to-image families and their LoRA adapters
for _name, _help in [("flux_schnell", "FluxPipeline (FLUX.1-schnell: no guidance embedding)"),
                     ("flux_dev", "FluxPipeline (FLUX.1-dev: guidance embedding, dynamic shift)"),
                     ("sd35_large", "StableDiffusion3Pipeline, MMDiT with RMS q/k-norm (SD3.5 large / turbo)"),
                     ("sd35_medium", "StableDiffusion3Pipeline, MMDiT-X dual attention (SD3.5 medium)"),
                     ("pixart_sigma", "PixArtSigmaPipeline (T5, DiT)"),
                     ("sdxl_refiner", "SDXL base + StableDiffusionXLImg2ImgPipeline refiner, one folder each"),
                     ("kandinsky22", "KandinskyV22CombinedPipeline (CLIP prior + MoVQ decoder)"),
                     ("sana", "SanaPipeline (Gemma-2 text encoder, DC-AE)"),
                     ("sd15", "StableDiffusionPipeline (SD1.5 layout, PNDM)"),
                     ("ldm", "LDMTextToImagePipeline (LDMBert text encoder, KL autoencoder, DDIM)"),
                     ("sdxl_inpaint", "StableDiffusionXLInpaintPipeline (9-channel SDXL UNet)"),
                     ("lcm_lora_sd15", "UNet LoRA adapter fitting the sd15 twin (LCM-LoRA SD1.5 layout)"),
                     ("lcm_lora_sdxl", "UNet LoRA adapter fitting the sdxl twin (LCM-LoRA SDXL layout)")]:
    TWINS.register(_name, f"fakeforge.tiny.today_twins:build_{_name}", _help)


MARKER = "fakeforge_tiny.json"


def builder_version(name: str) -> int:
    """Version of twin `name`'s builder (its `twin_version` attribute, 1 if unset); recorded in the marker."""
    return int(getattr(TWINS.get(name), "twin_version", 1))


def _is_current(target: Path, name: str) -> bool:
    """True if `target` holds a finished twin built by the current version of its builder."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return int(marker.get("version", 1)) == builder_version(name)


def tiny_root() -> Path:
    """Where twins live: $FAKEFORGE_TINY_DIR, else ~/.cache/fakeforge/tiny."""
    env = os.environ.get("FAKEFORGE_TINY_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fakeforge" / "tiny"


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _quiet() -> None:
    """Silence the per-file progress bars of save_pretrained while twins are written."""
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def build_tiny(name: str, root: str | Path | None = None, force: bool = False) -> Path:
    """Build twin `name` under `root` (temp folder, then rename); return its folder."""
    TWINS.check(name)
    root = Path(root) if root else tiny_root()
    target = root / name
    with _locked(root):
        if not force and _is_current(target, name):
            return target
        tmp = root / f".{name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.time()
        _quiet()
        TWINS.get(name)(tmp)
        (tmp / MARKER).write_text(json.dumps({"twin": name, "of": TWINS.help(name), "version": builder_version(name),
                                              "build_seconds": round(time.time() - start, 2)}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def ensure_tiny(name: str, root: str | Path | None = None) -> Path:
    """Path of twin `name`, building it first if it is missing or was built by an older version of its
    builder (safe across concurrent processes)."""
    root = Path(root) if root else tiny_root()
    if _is_current(root / name, name):
        return root / name
    return build_tiny(name, root)
