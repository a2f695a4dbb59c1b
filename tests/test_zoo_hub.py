"""`fakeforge zoo list`: the models file written from a hub listing, and the one-line refusal offline."""
from __future__ import annotations

import yaml
from huggingface_hub.hf_api import ModelInfo

from fakeforge.cli import main as cli_main
from fakeforge.zoo_cli import models_yaml


def test_offline_listing_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert cli_main(["zoo", "list", "--limit", "3"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and len(err.err.strip().splitlines()) == 1 and "offline" in err.err


def test_models_file_pins_revisions_and_comments_out_what_cannot_run(tmp_path):
    infos = [ModelInfo(id="org/good", sha="a" * 40, downloads=10, tags=["diffusers", "license:openrail"]),
             ModelInfo(id="org/gated", sha="b" * 40, downloads=5, tags=[], gated="auto"),
             ModelInfo(id="org/exotic", sha="c" * 40, downloads=1, tags=[])]
    text = models_yaml(infos, {"org/good": ("StableDiffusionPipeline", None),
                               "org/gated": (None, "gated: GatedRepoError: 401"),
                               "org/exotic": ("NoSuchPipeline", None)}, "fakeforge zoo list --limit 3")
    models = yaml.safe_load(text)["models"]
    assert models == [{"name": "org/good", "model_id": "org/good", "revision": "a" * 40,
                       "pipeline": "StableDiffusionPipeline", "weight": 1}]
    assert "# skipped (gated: GatedRepoError: 401)" in text and "unsupported pipeline: NoSuchPipeline" in text
    path = tmp_path / "models.yaml"
    path.write_text(text)
    from generators.zoo import _read_models_file

    assert _read_models_file(str(path), "g") == models  # what a build consumes
