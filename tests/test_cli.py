"""The `fakeforge` console script: listing, tiny twins, help."""
from __future__ import annotations

import json
import subprocess
import sys

from fakeforge.cli import main


def _sections(text: str) -> dict[str, list[str]]:
    """`fakeforge ls` output -> section title -> the names in its rows."""
    sections: dict[str, list[str]] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("  "):
            sections[title].append(line.split()[0])
        else:
            title = line.rstrip(":").split(" (")[0]
            sections[title] = []
    return sections


def test_ls_lists_presets_types_builds_and_twins(capsys):
    from fakeforge.config import CONFIG_ROOT
    from fakeforge.tiny import TWINS
    from generators import GENERATORS, preset_names

    assert main(["ls"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert sections["generators"] == preset_names() and {"sd2", "sd3", "sdxl", "lama"} <= set(preset_names())
    assert sections["generator types"] == GENERATORS.names() and "text2image" in GENERATORS.names()
    assert sections["build configs"] == sorted(p.stem for p in (CONFIG_ROOT / "build").glob("*.yaml"))
    assert {"antifakeprompt_train", "default"} <= set(sections["build configs"])
    assert sections["tiny twins"] == TWINS.names() and "instructblip" in TWINS.names()
    assert main(["ls", "builds"]) == 0
    assert list(_sections(capsys.readouterr().out)) == ["build configs"]


def test_tiny_models_builds_loadable_twins(tmp_path, capsys):
    from diffusers import StableDiffusion3Pipeline

    assert main(["tiny-models", "--out", str(tmp_path), "--only", "sd3"]) == 0
    marker = json.loads((tmp_path / "sd3" / "fakeforge_tiny.json").read_text())
    assert marker["twin"] == "sd3"
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3")
    assert pipe.text_encoder_3 is not None and pipe.transformer.config.num_layers == 2
    assert main(["tiny-models", "--out", str(tmp_path), "--only", "sd99"]) == 2
    assert "unknown tiny twin 'sd99'" in capsys.readouterr().err


def test_help_does_not_import_model_libraries():
    code = ("import sys; from fakeforge.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"
