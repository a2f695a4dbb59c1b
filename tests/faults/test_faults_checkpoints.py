"""Single files given where a checkpoint is wanted (`eval`/`detect --checkpoint`, the LAVIS converter): each
is named for what it is, refused in one line, with no library warning and nothing from it executed."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from fakeforge.cli import main as fakeforge_main

pytestmark = pytest.mark.faults

LAVIS_QF = "Qformer.bert.embeddings.train_word_embeddings.weight"
LAVIS_LM = "llm_model.model.train_embed_tokens.weight"


class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def odd_files(folder: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Each odd file and the words that must describe it."""
    folder.mkdir(parents=True, exist_ok=True)
    f = {name: folder / name for name in ("wrong_keys.pt", "plain.pt", "code.pt", "torch_code.pth", "notes.pt",
                                          "empty.pt", "legacy.pth", "rows.safetensors", "noise.bin")}
    torch.save({"model": {"visual_encoder.weight": torch.zeros(2, 2)}}, f["wrong_keys.pt"])
    f["plain.pt"].write_bytes(pickle.dumps({"epoch": 3, "rows": [1.0, 2.0]}, protocol=4))
    f["code.pt"].write_bytes(pickle.dumps(Payload(str(marker)), protocol=4))
    torch.save({"model": {LAVIS_QF: torch.zeros(1, 4), LAVIS_LM: torch.zeros(1, 4)}, "x": Payload(str(marker))},
               f["torch_code.pth"])
    f["notes.pt"].write_text("my training notes\n")
    f["empty.pt"].write_bytes(b"")
    torch.save({"model": {"a": torch.zeros(1)}}, f["legacy.pth"], _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file({"lm_row": torch.zeros(1, 4)}, str(f["rows.safetensors"]))
    f["noise.bin"].write_bytes(bytes(range(256)) * 4)
    return {
        "wrong_keys.pt": (f["wrong_keys.pt"], "a PyTorch checkpoint (zip format) without the AntifakePrompt LAVIS rows"),
        "plain.pt": (f["plain.pt"], "a plain Python pickle, not a PyTorch checkpoint"),
        "code.pt": (f["code.pt"], "would import posix.system when loaded (code; it is not run)"),
        "torch_code.pth": (f["torch_code.pth"], "PyTorch checkpoint (zip format) whose pickle would import posix.system"),
        "notes.pt": (f["notes.pt"], "a text file (starting 'my training notes')"),
        "empty.pt": (f["empty.pt"], "an empty file (0 bytes)"),
        "legacy.pth": (f["legacy.pth"], "a PyTorch checkpoint (legacy format) without"),
        "rows.safetensors": (f["rows.safetensors"], "a safetensors file"),
        "noise.bin": (f["noise.bin"], "binary file of no known checkpoint format"),
    }


def _quiet_call(argv: list[str]) -> tuple[int, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = fakeforge_main(argv)
    return code, [str(w.message) for w in caught]


def test_eval_names_what_an_odd_file_is_and_refuses_it_in_one_line(tmp_path, capsys):
    from detector_helpers import write_dataset

    data = write_dataset(tmp_path / "data", n_real=2, n_fake=2)
    marker = tmp_path / "executed"
    for name, (path, words) in odd_files(tmp_path / "in", marker).items():
        code, caught = _quiet_call(["eval", "--checkpoint", str(path), "--sets", str(data / "coco"),
                                    "--out", str(tmp_path / "ev" / name)])
        err = capsys.readouterr().err
        assert code == 2 and not caught, (name, err, caught)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert f"'{path}' is not a detector checkpoint: it is " in err and words in err, (name, err)
        assert "official AntifakePrompt LAVIS checkpoint" not in err, (name, err)
        assert not (tmp_path / "ev" / name / "results.json").exists()
    assert not marker.exists(), "a pickle's payload ran"


def test_only_a_real_lavis_file_is_called_one(tmp_path, capsys):
    src = tmp_path / "afp.pth"
    torch.save({"model": {LAVIS_QF: torch.zeros(1, 4), LAVIS_LM: torch.zeros(1, 4)}}, src)
    assert fakeforge_main(["detect", "--checkpoint", str(src), "--img_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"'{src}' is an official AntifakePrompt LAVIS checkpoint" in err and "convert-antifakeprompt" in err, err
    assert len(err.strip().splitlines()) == 1


def test_converter_refuses_non_pytorch_files_without_library_noise(tmp_path, capsys):
    marker = tmp_path / "executed"
    files = odd_files(tmp_path / "in", marker)
    for name in ("plain.pt", "code.pt", "torch_code.pth", "notes.pt", "rows.safetensors", "noise.bin"):
        path, words = files[name]
        code, caught = _quiet_call(["convert-antifakeprompt", str(path), "--out", str(tmp_path / "out" / name)])
        err = capsys.readouterr().err
        assert code == 2 and not caught, (name, err, caught)
        assert len(err.strip().splitlines()) == 1 and words in err and str(path) in err, (name, err)
        assert ("refusing to load" in err) == ("code" in name), (name, err)
        assert not (tmp_path / "out" / name).exists()
    assert not marker.exists(), "a pickle's payload ran"
