"""Today's generator presets (FLUX, SD3.5, PixArt-Sigma, turbo, SDXL + refiner, Kandinsky 2.2, Sana, LCM-LoRA)
on their tiny twins, and the options every diffusers generator takes: LoRA adapters, memory, compile, dtypes."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from fakeforge.config import ConfigError
from fakeforge.twins import build_tiny
from generators import generator_config, load_preset
from generators.base import GenRequest
from generators.diffusers_options import LoraMismatchError

TODAY = ["flux_schnell", "flux_dev", "sd35_large", "sd35_large_turbo", "sd35_medium", "pixart_sigma", "sd_turbo",
         "sdxl_turbo", "sdxl_refiner", "kandinsky22", "sana", "lcm_sd15", "lcm_sdxl", "sd15", "ldm"]

# (steps, guidance) each preset carries for real weights: the model cards' recommended settings
CARD = {"flux_schnell": (4, 0.0), "flux_dev": (50, 3.5), "sd35_large": (28, 3.5), "sd35_large_turbo": (4, 0.0),
        "sd35_medium": (40, 4.5), "pixart_sigma": (20, 4.5), "sd_turbo": (1, 0.0), "sdxl_turbo": (1, 0.0),
        "kandinsky22": (100, 4.0), "sana": (20, 4.5), "lcm_sd15": (4, 1.0), "lcm_sdxl": (4, 1.0), "sd15": (50, 7.5),
        "ldm": (50, 6.0)}


def _gen(raw, tiny_dir):
    build_tiny(raw["tiny_twin"], tiny_dir)
    cls, cfg = generator_config(raw, tiny=True, tiny_root=tiny_dir)
    gen = cls(cfg, device="cpu")
    gen.load()
    return gen


def _requests(n):
    return [GenRequest(key=f"k{i}", prompt=f"a red cat number {i}", seed=i) for i in range(n)]


def _arr(result):
    assert result.error is None, result.error
    return np.asarray(result.image, dtype=np.int16)


@pytest.mark.parametrize("preset", TODAY)
def test_preset_makes_images_on_its_twin(preset, tiny_dir):
    gen = _gen(load_preset(preset), tiny_dir)
    results = gen.generate_safe(_requests(2))
    a, b = (_arr(r) for r in results)
    assert a.shape == b.shape == (64, 64, 3)
    assert np.abs(a - b).mean() > 0.5, "different seeds must give different images"
    again = _arr(gen.generate_safe(_requests(2)[1:])[0])
    assert np.abs(again - b).max() <= 2, "a sample depends on its own seed, not on its batch"


def test_presets_carry_the_model_cards_settings():
    for name, (steps, guidance) in CARD.items():
        raw = load_preset(name)
        assert (raw["num_inference_steps"], raw["guidance_scale"]) == (steps, guidance), name
    assert load_preset("lcm_sd15")["scheduler"] == load_preset("lcm_sdxl")["scheduler"] == "LCMScheduler"
    refiner = {s["name"]: s for s in load_preset("sdxl_refiner")["stages"]}
    assert refiner["refiner"]["pipeline"] == "StableDiffusionXLImg2ImgPipeline"
    _, cfg = generator_config(load_preset("flux_dev"))  # real settings validate without loading weights
    assert cfg.call_kwargs == {"max_sequence_length": 512} and cfg.height == 1024


def test_lora_is_fused_scaled_and_recorded(tiny_dir):
    raw = load_preset("lcm_sd15")
    with_lora = _gen(raw, tiny_dir)
    base = _gen(dict(raw, lora=[]), tiny_dir)
    zero = _gen(dict(raw, lora=[dict(raw["lora"][0], scale=0.0)]), tiny_dir)
    unfused = _gen(dict(raw, fuse_lora=False), tiny_dir)
    req = _requests(1)
    img, plain = _arr(with_lora.generate_safe(req)[0]), _arr(base.generate_safe(req)[0])
    assert np.abs(img - plain).mean() > 1.0, "the LoRA must change the images"
    assert np.abs(_arr(zero.generate_safe(req)[0]) - plain).max() <= 2, "scale 0 = the base model"
    assert np.abs(_arr(unfused.generate_safe(req)[0]) - img).max() <= 2, "fusing must not change the images"
    assert not with_lora.pipe.get_list_adapters(), "fused adapters are unloaded (no per-step LoRA layers)"
    rec = with_lora.settings()["lora"]
    assert rec == [{"id": "tiny-twin:lcm_lora_sd15", "weight_name": "pytorch_lora_weights.safetensors",
                    "scale": 1.0, "adapter": "lora_0", "fused": True}]
    assert type(with_lora.pipe.scheduler).__name__ == "LCMScheduler"


def test_lora_that_does_not_fit_its_base_names_both_ids(tiny_dir):
    raw = load_preset("lcm_sd15")
    raw = dict(raw, lora=[{"id": "latent-consistency/lcm-lora-sdxl", "tiny_twin": "lcm_lora_sdxl",
                           "weight_name": "pytorch_lora_weights.safetensors"}])
    with pytest.raises(LoraMismatchError) as err:
        _gen(raw, tiny_dir)
    msg = str(err.value)
    assert "lcm_lora_sdxl" in msg and "sd15" in msg and "does not fit base model" in msg and "\n" not in msg


def test_bad_options_fail_before_loading():
    raw = load_preset("sd_turbo")
    with pytest.raises(ConfigError, match=r"'generator.memory.offload' = 'gpu' is not one of"):
        generator_config(dict(raw, memory={"offload": "gpu"}))
    with pytest.raises(ConfigError, match=r"generator.dtypes.vae = 'float8'"):
        generator_config(dict(raw, dtypes={"vae": "float8"}))
    with pytest.raises(ConfigError, match=r"lora.scale = 99"):
        generator_config(dict(raw, lora=[{"id": "x", "scale": 99}]))
    with pytest.raises(ConfigError, match="adapter names must be unique"):
        generator_config(dict(raw, lora=[{"id": "x"}, {"id": "y", "adapter_name": "lora_0"}]))


def test_memory_options_apply_or_are_recorded_as_unused_on_cpu(tiny_dir, caplog):
    raw = dict(load_preset("sd_turbo"), memory={"offload": "model", "vae_tiling": True, "vae_slicing": True,
                                                "attention_slicing": True})
    plain = _gen(load_preset("sd_turbo"), tiny_dir)
    with caplog.at_level(logging.INFO, logger="generators.diffusers_options"):
        gen = _gen(raw, tiny_dir)
        _gen(raw, tiny_dir)
    notes = [r.getMessage() for r in caplog.records if "memory.offload" in r.getMessage()]
    assert len(notes) <= 1 and all("unused on device 'cpu'" in n for n in notes)
    settings = gen.settings()
    assert settings["memory_unused"] == ["offload=model"]
    assert settings["memory_applied"] == ["vae_tiling", "vae_slicing", "attention_slicing"]
    assert settings["memory"]["offload"] == "model"  # the resolved config keeps what was asked for
    assert gen.pipe.vae.use_tiling and gen.pipe.vae.use_slicing and gen.pipe.device.type == "cpu"
    req = _requests(2)
    for a, b in zip(gen.generate_safe(req), plain.generate_safe(req)):
        assert np.abs(_arr(a) - _arr(b)).max() <= 2, "memory options must not change the images"


def test_compile_and_component_dtypes(tiny_dir):
    gen = _gen(dict(load_preset("flux_schnell"), compile=True, dtypes={"vae": "bfloat16"}), tiny_dir)
    import torch

    assert gen.pipe.transformer._compiled_call_impl is not None  # torch.compile'd in place, class kept
    assert gen.settings()["compiled"] == "transformer"
    assert gen.pipe.vae.dtype == torch.bfloat16 and gen.pipe.transformer.dtype == torch.float32
    with pytest.raises(ConfigError, match="has no model component 'unet'"):
        _gen(dict(load_preset("flux_schnell"), dtypes={"unet": "float16"}), tiny_dir)


def _build(tmp_path, sets, tiny_dir):
    from builder_helpers import write_build_config

    from fakeforge.cli import main as cli_main

    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", sets, {"kind": "demo", "limit": 2})
    return cli_main(["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"])


def test_lora_set_builds_verified_shards_recording_the_adapter(tmp_path, tiny_dir):
    import json
    import tarfile

    from fakeforge.shards.verify import verify_dataset

    assert _build(tmp_path, [{"name": "lcm", "generator": "lcm_sd15"}], tiny_dir) == 0
    assert verify_dataset(tmp_path / "out")["sets"] == {"lcm": 2}
    with tarfile.open(tmp_path / "out" / "lcm" / "000000.tar") as tf:
        metas = [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    assert len(metas) == 2
    for meta in metas:
        assert meta["settings"]["lora"][0]["id"] == "tiny-twin:lcm_lora_sd15"
        assert meta["settings"]["lora"][0]["scale"] == 1.0 and meta["settings"]["scheduler"] == "LCMScheduler"


def test_lora_mismatch_is_the_sets_one_line_failure_naming_both_ids(tmp_path, tiny_dir, capsys):
    bad = {"preset": "lcm_sd15", "lora": [{"id": "latent-consistency/lcm-lora-sdxl", "tiny_twin": "lcm_lora_sdxl"}]}
    assert _build(tmp_path, [{"name": "lcm", "generator": bad}], tiny_dir) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fakeforge build: error: set 'lcm': lora_mismatch: LoRA '")
    assert "lcm_lora_sdxl" in err[0] and "sd15" in err[0]


def test_memory_options_keep_the_set_hash_and_a_lora_changes_it(tmp_path, tiny_dir):
    import yaml

    from fakeforge.builder.config import resolve_build, set_settings

    def settings(gen):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "source": {"kind": "demo", "limit": 2},
                                        "sets": [{"name": "s", "generator": gen}]}))
        resolved = resolve_build(str(path), [], tiny=True, tiny_root=tiny_dir)
        return set_settings(resolved.sets[0], resolved.config, True)

    plain = settings("sd_turbo")
    assert settings({"preset": "sd_turbo", "memory": {"offload": "model", "vae_tiling": True}, "compile": True}) == plain
    assert "lora" not in plain["generator"], "no LoRA: the hash of sets built before LoRA support is unchanged"
    with_lora = settings({"preset": "sd_turbo", "lora": [{"id": "x/y", "tiny_twin": "lcm_lora_sd15"}]})
    assert with_lora != plain and with_lora["generator"]["lora"][0]["id"] == "tiny-twin:lcm_lora_sd15"


def test_cascade_stages_take_the_memory_options(tiny_dir):
    raw = dict(load_preset("sdxl_refiner"), memory={"offload": "sequential", "vae_slicing": True})
    gen = _gen(raw, tiny_dir)
    assert all(p.vae.use_slicing for p in gen.pipes.values())
    stages = gen.settings()["stage_options"]
    assert set(stages) == {"base", "refiner"}
    assert all(s["memory_unused"] == ["offload=sequential"] and s["memory_applied"] == ["vae_slicing"]
               for s in stages.values())


def test_twins_keep_the_architecture_traits_their_presets_depend_on(tiny_dir):
    import json
    from pathlib import Path

    def config(twin, part):
        return json.loads((Path(build_tiny(twin, tiny_dir)) / part / "config.json").read_text())

    assert config("flux_dev", "transformer")["guidance_embeds"] is True
    assert config("flux_schnell", "transformer")["guidance_embeds"] is False
    assert config("sd35_large", "transformer")["qk_norm"] == "rms_norm"
    assert list(config("sd35_medium", "transformer")["dual_attention_layers"]) == [0]
    refiner = json.loads((Path(build_tiny("sdxl_refiner", tiny_dir)) / "refiner" / "model_index.json").read_text())
    assert refiner["requires_aesthetics_score"] is True and refiner["text_encoder"] == [None, None]
    index = json.loads((Path(build_tiny("kandinsky22", tiny_dir)) / "model_index.json").read_text())
    assert index["_class_name"] == "KandinskyV22CombinedPipeline"


def test_validate_checks_lora_ids_like_model_ids(tmp_path, monkeypatch):
    from fakeforge.builder.validate import model_id_checks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    _, cfg = generator_config(dict(load_preset("lcm_sd15"), model_id=str(tmp_path)))
    problems, _ = model_id_checks("generator", cfg, tiny=False)
    assert problems == [p for p in problems if "generator.lora.0.id = 'latent-consistency/lcm-lora-sdv1-5'" in p]
    assert len(problems) == 1 and "not in the local hub cache" in problems[0]
    _, cfg = generator_config(load_preset("lcm_sd15"), tiny=True, tiny_root=str(tmp_path / "twins"))
    problems, notes = model_id_checks("generator", cfg, tiny=True)
    assert not problems and any("lora.0.id = tiny twin 'lcm_lora_sd15'" in n for n in notes)
