"""Generators: the registry of generator classes and the named presets under configs/generators/.

`GENERATORS` maps a generator *type* (the `type:` key of a preset) to its class, imported lazily so
that importing this package never imports diffusers or torch. A *preset* is one YAML file per
named generator (configs/generators/sd2.yaml, ...); build configs refer to presets by name.
"""
from __future__ import annotations

from pathlib import Path

from fakeforge.config import CONFIG_ROOT, ConfigError, deep_merge, load_yaml
from fakeforge.registry import Registry, UnknownNameError

GENERATORS = Registry("generator type")
GENERATORS.register("real", "generators.real:RealImage", "the real source image itself (real sets)")
GENERATORS.register("text2image", "generators.text2image:Text2Image",
                    "any diffusers text-to-image pipeline (SD1.x/2.x, SDXL, SD3, PixArt, FLUX, ...)")

# editing and super-resolution generators (start from a real image)
GENERATORS.register("inpaint", "generators.inpaint:Inpaint", "diffusers inpainting (SD2 inpainting = SD2IP)")
GENERATORS.register("lama", "generators.lama:LamaInpaint", "LaMa TorchScript checkpoint (big-lama.pt)")
GENERATORS.register("upscale", "generators.superres:DiffusersUpscale", "SD x4 upscaler / SD latent x2 upscaler")
GENERATORS.register("liif", "generators.liif:LiifSuperRes", "LIIF arbitrary-scale super-resolution")
GENERATORS.register("img2img", "generators.img2img:Img2Img", "SDEdit image-to-image with a strength")
GENERATORS.register("controlnet", "generators.controlnet:ControlNetCanny", "ControlNet on canny edges + caption")
# the paper's remaining test-set generators and download-only sets
GENERATORS.register("cascade", "generators.cascade:Cascade",
                    "a chain of diffusers pipelines, each stage's image feeding the next (DeepFloyd IF)")
GENERATORS.register("lte", "generators.lte:LteSuperRes", "LTE (local texture estimator) super-resolution")
GENERATORS.register("download", "generators.download:DownloadedImage",
                    "a downloaded set plugged in as is (label from the source: DALLE, DiffusionDB, DFDC, ...)")
GENERATORS.register("stylegan_xl", "generators.stylegan_xl:StyleGANXLGenerator",
                    "StyleGAN-XL class-conditional ImageNet generator (official network pickles, read safely)")
GENERATORS.register("reconstruct", "generators.reconstruct:Reconstruct",
                    "the real image reconstructed (VAE round trip, DRCT empty-mask inpainting, img2img), same size")
GENERATORS.register("attack", "generators.attack:AttackGenerator",
                    "adversarial / backdoor / poisoning attack of the real image (presets in configs/attacks/)")
GENERATORS.register("degrade", "generators.degrade:DegradeSet",
                    "degraded copies of an earlier set of the build (jpeg, blur, resize, ...; docs/robustness.md)")
GENERATORS.register("zoo", "generators.zoo:ZooGenerator",
                    "many generators in one set: samples shared among models by weight (docs/zoo.md)")

PRESET_DIR = CONFIG_ROOT / "generators"
ATTACK_PRESET_DIR = CONFIG_ROOT / "attacks"  # attack presets resolve like generator presets (after them)


def attack_preset_names() -> list[str]:
    """Names of the attack presets shipped in configs/attacks/."""
    return sorted(p.stem for p in ATTACK_PRESET_DIR.glob("*.yaml"))


def preset_names() -> list[str]:
    """Names of the generator presets shipped in configs/generators/."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    """The raw YAML of preset `name`; unknown names list the valid ones."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        path = ATTACK_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        import difflib

        names = preset_names() + attack_preset_names()
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown generator '{name}'.{hint} Valid generators: {', '.join(names)}")
    return load_yaml(path)


def resolve_generator_spec(spec: str | dict) -> dict:
    """A build config's `generator:` entry -> full raw generator config.

    Accepts a preset name ("sd2"), a mapping with `preset:` plus overrides, or a full mapping with `type:`.
    Precedence with --tiny: preset < the preset's `tiny:` block < keys set explicitly in `spec`.
    """
    if isinstance(spec, str):
        return load_preset(spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"'generator' must be a preset name or a mapping, got {spec!r}")
    spec = dict(spec)
    preset = spec.pop("preset", None)
    base = load_preset(preset) if preset else {}
    merged = deep_merge(base, spec)
    if isinstance(merged.get("tiny"), dict):  # what the user set explicitly wins over the preset's tiny block
        merged["tiny"] = {k: v for k, v in merged["tiny"].items() if k not in spec or k in (spec.get("tiny") or {})}
    if "type" not in merged:
        raise ConfigError(f"generator config {spec!r} needs a 'type' (one of {', '.join(GENERATORS.names())}) "
                          f"or a 'preset' (one of {', '.join(preset_names())})")
    return merged


def generator_config(raw: dict, tiny: bool = False, tiny_root: str | Path | None = None, path: str = "generator"):
    """Validate raw generator data into its config dataclass; with `tiny`, swap in the tiny twin.
    `path` is the dotted key that error messages name (e.g. "sets.1.generator")."""
    from fakeforge.config import from_dict

    from generators.sampling import split_space

    kind = raw.get("type")
    GENERATORS.check(kind)
    if kind == "zoo":
        from generators.zoo import resolve_zoo

        return resolve_zoo(raw, tiny=tiny, tiny_root=tiny_root, path=path)
    cls = GENERATORS.get(kind)
    if tiny:
        if not isinstance(raw.get("tiny") or {}, dict):
            raise ConfigError(f"'{path}.tiny' = {raw.get('tiny')!r} must be a mapping")
        raw = deep_merge(raw, raw.get("tiny") or {})
    raw = split_space(raw, cls.config_class, path)
    cfg = from_dict(cls.config_class, raw, path)
    if tiny and cfg.tiny_twin:
        from fakeforge.twins import TWINS
        from fakeforge.twins import tiny_root as default_root

        TWINS.check(cfg.tiny_twin)
        root = Path(tiny_root) if tiny_root else default_root()
        cfg.model_id = str(root / cfg.tiny_twin)
    if tiny and getattr(cfg, "lora", None):
        from generators.diffusers_options import swap_tiny_loras

        swap_tiny_loras(cfg.lora, tiny_root)
    cfg.check()
    return cls, cfg
