"""Attack configs: presets resolve like generator presets, bad input gets one clear message naming the
value, the optional extra is named when missing, importing `attacks` stays light."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from attack_helpers import pil

from fakeforge.cli import main as cli_main
from fakeforge.config import ConfigError
from generators import attack_preset_names, generator_config, resolve_generator_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_py(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_importing_attacks_imports_no_heavy_library():
    out = _run_py("""
        import sys, attacks
        from attacks import ATTACKS
        ATTACKS.check("vnifgsm")
        heavy = {"torch", "timm", "torchattacks", "art", "diffusers", "transformers"}
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_an_attack_module_does_not_import_diffusers_or_transformers():
    out = _run_py("""
        import sys
        from attacks import ATTACKS
        for name in ATTACKS.names():
            ATTACKS.get(name)
        import generators.attack
        print(sorted(m for m in sys.modules if m.split(".")[0] in {"diffusers", "transformers"}))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_torchattacks_names_the_extra_and_the_rest_still_works():
    """torchattacks really fails to import here (sys.modules entry None), no mock of any model."""
    out = _run_py("""
        import sys
        sys.modules["torchattacks"] = None
        from fakeforge.config import ConfigError
        from generators import generator_config, resolve_generator_spec
        for preset in ("adv_vnifgsm", "adv_pgd"):
            try:
                generator_config(resolve_generator_spec(preset))
                print("NO ERROR")
            except ConfigError as exc:
                print("ERR", exc)
        import torch
        from attacks.pgd import PGD
        try:
            PGD(torch.nn.Linear(1, 1))(torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long))
        except ImportError as exc:
            print("CALL", exc)
        cls, cfg = generator_config(resolve_generator_spec("backdoor_badnets"))
        print("BADNETS OK", cls.__name__)
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    errs = [ln for ln in lines if ln.startswith("ERR")]
    assert len(errs) == 2 and all("pip install 'fakeforge[attacks]'" in ln and "torchattacks" in ln for ln in errs)
    assert any(ln.startswith("CALL") and "fakeforge[attacks]" in ln for ln in lines)
    assert "BADNETS OK AttackGenerator" in lines


def test_ls_lists_attack_presets_and_attacks(capsys):
    assert cli_main(["ls", "attacks"]) == 0
    out = capsys.readouterr().out
    for name in attack_preset_names() + ["vnifgsm", "issba", "feature_collision", "gradient_matching", "wanet"]:
        assert name in out
    assert {"adv_fgsm", "adv_pgd", "adv_mifgsm", "adv_nifgsm", "adv_vnifgsm", "backdoor_badnets", "backdoor_blended",
            "backdoor_wanet", "backdoor_issba", "poison_feature_collision", "poison_gradient_matching"} <= set(
                attack_preset_names())


def test_validate_checks_every_attack_preset_without_weights(capsys):
    """Validate loads no model: with --tiny every preset passes on twins it has not even built; without,
    the real weights this offline machine lacks are named, with where to get them."""
    presets = [os.path.join(REPO, "configs", "attacks", f"{n}.yaml") for n in attack_preset_names()]
    assert cli_main(["validate", "--tiny", *presets]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   preset") == len(presets)
    assert cli_main(["validate", *presets]) == 1
    err = capsys.readouterr().err
    assert "python -m attacks.stegastamp" in err  # ISSBA without encoder weights says how to make them
    assert "generator.model_id = 'resnet50' is not in the local hub cache" in err


def test_set_overrides_and_tiny_reach_attack_presets(tmp_path, tiny_dir):
    from fakeforge.builder.config import resolve_build

    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "o"), "sets": [
        {"name": "adversarial", "generator": "adv_vnifgsm"}, {"name": "real", "generator": "real"}]}))
    r = resolve_build(str(cfg), ["sets.0.generator.params.eps=0.02", "sets.0.generator.params.steps=3"],
                      tiny=True, tiny_root=tiny_dir)
    gcfg = r.sets[0].generator_cfg
    assert gcfg.params["eps"] == 0.02 and gcfg.params["steps"] == 3 and gcfg.params["N"] == 5
    assert gcfg.model_id.endswith("surrogate_resnet50") and gcfg.batch_size == 4
    assert r.sets[0].image.format == "png" and r.sets[1].image.format == "jpeg"
    lossy = resolve_build(str(cfg), ["sets.0.generator.lossless=false"], tiny=True, tiny_root=tiny_dir)
    assert lossy.sets[0].image.format == "jpeg" and lossy.hash != r.hash


@pytest.mark.parametrize("override, needle", [
    ({"params": {"eps": 1.5}}, "vnifgsm.eps = 1.5 must be within [0.0, 1.0]"),
    ({"params": {"eps": -0.1}}, "vnifgsm.eps = -0.1 must be within [0.0, 1.0]"),
    ({"params": {"eps": "8/255"}}, "vnifgsm.eps = '8/255' must be a number"),
    ({"params": {"alpha": 2}}, "vnifgsm.alpha = 2 must be within [0.0, 1.0]"),
    ({"params": {"steps": 0}}, "vnifgsm.steps = 0 must be within [1, 100000]"),
    ({"params": {"epsilon": 0.1}}, "unknown generator.params of 'vnifgsm' hyperparameter(s) ['epsilon']"),
    ({"model_id": "resnet5O"}, "unknown surrogate 'resnet5O'"),
    ({"attack": "vnifgsn"}, "unknown attack 'vnifgsn'. Did you mean 'vnifgsm'"),
])
def test_bad_adversarial_values_name_the_value(override, needle):
    raw = resolve_generator_spec({"preset": "adv_vnifgsm", **override})
    with pytest.raises((ConfigError, KeyError)) as exc:
        generator_config(raw)
    assert needle in str(exc.value)


def test_unknown_surrogate_lists_close_matches():
    raw = resolve_generator_spec({"preset": "adv_pgd", "model_id": "vit_base_patch16_24"})
    with pytest.raises(ConfigError) as exc:
        generator_config(raw)
    assert "close matches:" in str(exc.value) and "vit_base_patch16_224" in str(exc.value)


def test_trigger_images_of_wrong_size_or_mode_are_refused(tmp_path):
    pil(np.zeros((4, 4, 3))).save(tmp_path / "4x4.png")
    pil(np.zeros((3, 3, 3))).save(tmp_path / "3x3.png")
    from PIL import Image

    Image.new("L", (3, 3)).save(tmp_path / "gray.png")
    Image.new("RGBA", (32, 32)).save(tmp_path / "rgba.png")
    cases = [("backdoor_badnets", {"patch_size": 3, "trigger_image": str(tmp_path / "4x4.png")},
              f"badnets.trigger_image = '{tmp_path / '4x4.png'}' is 4x4; it must be exactly 3x3 pixels"),
             ("backdoor_badnets", {"patch_size": 3, "trigger_image": str(tmp_path / "gray.png")},
              "has mode L; the trigger must be an RGB image"),
             ("backdoor_blended", {"trigger_image": str(tmp_path / "rgba.png")}, "has mode RGBA"),
             ("backdoor_blended", {"trigger_image": str(tmp_path / "3x3.png")}, "is 3x3; each side must be >= 16"),
             ("backdoor_blended", {"trigger_image": str(tmp_path / "nope.png")}, "nope.png': file not found"),
             ("backdoor_blended", {"alpha": 1.5}, "blended.alpha = 1.5 must be within (0.0, 1.0]"),
             ("backdoor_wanet", {"grid_size": 1}, "wanet.grid_size = 1 must be within [2, 512]"),
             ("backdoor_badnets", {"position": "middle"}, "badnets.position = 'middle' must be one of")]
    for preset, params, needle in cases:
        with pytest.raises(ConfigError) as exc:
            generator_config(resolve_generator_spec({"preset": preset, "params": params}))
        assert needle in str(exc.value), (needle, str(exc.value))
    Image.new("RGB", (3, 3)).save(tmp_path / "ok.png")
    generator_config(resolve_generator_spec({"preset": "backdoor_badnets", "params": {
        "trigger_image": str(tmp_path / "ok.png")}}))


def test_missing_issba_weights_say_where_to_get_them(tmp_path):
    from generators.checkpoint_file import MissingCheckpointError

    with pytest.raises(MissingCheckpointError) as exc:
        generator_config(resolve_generator_spec({"preset": "backdoor_issba", "model_id": str(tmp_path / "w")}))
    msg = str(exc.value)
    assert f"'{tmp_path / 'w'}' lacks config.json, model.safetensors" in msg
    assert "python -m attacks.stegastamp --images DIR --out DIR" in msg and "issba_stegastamp" in msg


def test_build_refuses_missing_issba_weights_before_loading(tmp_path, capsys):
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "o"),
                                   "sets": [{"name": "b", "generator": "backdoor_issba"}]}))
    assert cli_main(["build", "--config", str(cfg), "--no-progress"]) == 2
    assert "ISSBA has no encoder weights configured" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_backdoor_without_model_refuses_a_model_id():
    with pytest.raises(ConfigError, match="attack 'badnets' uses no model"):
        generator_config(resolve_generator_spec({"preset": "backdoor_badnets", "model_id": "resnet50"}))
