"""InstructBLIP + LoRA through the generic trainer and eval: it learns against its own init/ on held-out data, only the
adapter tensors change and are saved, save -> load scores identically, foreign checkpoints are refused, the
official LoRA layout gives 4,194,304 parameters on Vicuna-7B, and beside AntifakePrompt on one base the vision
encoder runs once per batch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detector_helpers import write_dataset
from family_helpers import load_tensors, one_thread  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from fakeforge.cli import main as fakeforge_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {"root": root, "train": write_dataset(root / "train", 48, 48, shards=2, seed=0),
            "val": write_dataset(root / "val", 12, 12, seed=50),
            "test": write_dataset(root / "test", 24, 24, seed=100)}


@pytest.fixture(scope="module")
def run(data, tiny_dir):
    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    torch.set_num_threads(1)
    out = data["root"] / "run"
    cfg = load_train_config("instructblip_lora", [f"data.train=[{data['train']}]", f"data.val=[{data['val']}]"],
                            tiny=True, out=str(out))
    trainer = Trainer(cfg)
    trainer.fit()
    return {"out": out, "trainer": trainer}


def _accuracy(folder: Path) -> float:
    return json.loads((folder / "results.json").read_text())["average_accuracy"]


def test_best_beats_its_own_init_on_held_out_data(run, data, tmp_path):
    out = run["out"]
    assert fakeforge_main(["eval", "--checkpoint", str(out / "init"), str(out / "best"), "--sets", str(data["test"]),
                           "--out", str(tmp_path), "--no-plots"]) == 0
    before, after = _accuracy(tmp_path / "init"), _accuracy(tmp_path / "best")
    assert after >= 0.9 and after >= before + 0.3, (before, after)
    table = (tmp_path / "comparison.md").read_text()
    assert "| 2.69K |" in table  # the #params column counts the adapter


def test_only_the_adapter_changes_and_only_the_adapter_is_saved(run, tiny_dir):
    from detector.families.instructblip_lora import InstructBlipLora

    det = run["trainer"].detector
    fresh = InstructBlipLora.from_config(run["trainer"].cfg.model, "cpu")
    mine, base = det.state_dict(), fresh.state_dict()
    adapter = {k for k in mine if ".lora_" in k}
    assert adapter and set(det.named_trainable_parameters()) == adapter
    assert all(".language_model." in k and (".q_proj." in k or ".v_proj." in k) for k in adapter)
    assert [k for k in mine if k not in adapter and not torch.equal(mine[k], base[k])] == []
    for folder in ("init", "best", "last"):
        saved = load_file(str(run["out"] / folder / "weights.safetensors"))
        assert set(saved) == adapter, folder
    init = load_file(str(run["out"] / "init" / "weights.safetensors"))
    assert all(torch.equal(init[k], base[k]) for k in init)  # init/ is the freshly built detector
    changed = {k for k in adapter if not torch.equal(mine[k], init[k])}
    assert {k.split(".lora_")[1].split(".")[0] for k in changed} == {"A", "B"}
    assert all(mine[k].dtype == torch.float32 for k in adapter)
    meta = json.loads((run["out"] / "best" / "detector.json").read_text())
    assert meta["trainable_parameters"] == 2688 == det.num_trainable()
    assert meta["identity"]["lora"] == {"r": 8, "alpha": 32, "targets": ["q_proj", "v_proj"]}


def test_saved_checkpoint_loads_with_identical_scores(run, data):
    from detector.checkpoint import load_detector

    det = run["trainer"].detector
    back = load_detector(run["out"] / "last", device="cpu")
    x, _ = load_tensors(data["test"], det.preprocess)
    for method in ("logits", "loss"):
        assert torch.equal(det.score(x, method), back.score(x, method)), method
    assert back.preprocess == det.preprocess


def test_foreign_checkpoints_are_refused_naming_both(run, tmp_path, tiny_dir):
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig
    from detector.base import CheckpointError
    from detector.families.antifakeprompt.checkpoint import save_checkpoint
    from detector.families.instructblip_lora import InstructBlipLora, InstructBlipLoraConfig
    from detector.checkpoint import load_detector, load_detector_state

    afp = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip"), device="cpu")
    afp_dir = save_checkpoint(afp, tmp_path / "afp", {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    with pytest.raises(CheckpointError, match="'antifakeprompt' detector, but 'instructblip_lora' was asked for"):
        load_detector(afp_dir, expect="instructblip_lora")
    with pytest.raises(CheckpointError, match="is a 'antifakeprompt' detector, not 'instructblip_lora'"):
        InstructBlipLora.load(afp_dir)
    rank4 = InstructBlipLora.from_config(InstructBlipLoraConfig(model_id="tiny:instructblip", lora_r=4), "cpu")
    with pytest.raises(CheckpointError, match=r"made for instructblip_lora on base model 'tiny:instructblip'.*"
                                              r"differ in lora"):
        load_detector_state(rank4, run["out"] / "best")
    state = run["trainer"].detector.checkpoint_state()
    state[next(iter(state))] = torch.full_like(state[next(iter(state))], float("nan"))
    with pytest.raises(CheckpointError, match="NaN/inf"):
        rank4.__class__.from_config(InstructBlipLoraConfig(model_id="tiny:instructblip"), "cpu") \
            .load_checkpoint_state(state)


def test_the_official_layout_counts_4194304_on_vicuna_7b():
    """peft with the config's LoRA layout on a Vicuna-7B-shaped LLaMA (meta device, no weights)."""
    from peft import inject_adapter_in_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from detector.families.instructblip_lora import InstructBlipLoraConfig, lora_parameter_count, peft_lora_config

    vicuna = LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        llm = LlamaForCausalLM(vicuna)
        inject_adapter_in_model(peft_lora_config(InstructBlipLoraConfig()), llm)
    count = sum(p.numel() for n, p in llm.named_parameters() if ".lora_" in n)
    assert count == lora_parameter_count(4096, 32, 8) == 4_194_304


def test_config_errors_are_one_line_before_any_model_loads(data, tmp_path, capsys):
    import train

    for extra, words in ((["--set", "model.lora_r=0"], "model.lora_r = 0"),
                         (["--set", "model.lora_dropout=1.5"], "model.lora_dropout = 1.5"),
                         (["--set", "model.target_modules=[]"], "model.target_modules")):
        args = ["--config", "instructblip_lora", "--out", str(tmp_path / "run"), "--set",
                f"data.train=[{data['train']}]", "--set", f"model.model_id={tmp_path / 'no_such_blip'}", *extra]
        assert train.main(args) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "no_such_blip" not in err and len(err.strip().splitlines()) == 1, err


def test_beside_antifakeprompt_the_vision_encoder_runs_once_per_batch(run, data, tiny_dir, tmp_path):
    """Two LoRA checkpoints load ONE base; with an AntifakePrompt checkpoint on the same base and preprocessing,
    the vision encoder runs once per batch for all three, and each scores as it does alone."""
    from torch import nn

    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig
    from detector.families.antifakeprompt.checkpoint import save_checkpoint
    from detector.data import parse_set_specs
    from detector.checkpoint import load_detector, load_detectors
    from detector.eval.side_by_side import Entry, score_sets

    trained = load_detector(run["out"] / "best", device="cpu")
    pre = trained.preprocess
    afp = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip", dtype="float32"), "cpu")
    with torch.no_grad():
        for p in afp.trainable_parameters():
            nn.init.normal_(p, 0, 1.0, generator=torch.Generator().manual_seed(3))
    afp_dir = save_checkpoint(afp, tmp_path / "afp", {"image_size": pre.image_size, "mean": pre.mean,
                                                      "std": pre.std, "source": "test"})
    paths = [run["out"] / "best", run["out"] / "init", afp_dir]
    dets = load_detectors(paths, device="cpu")
    assert dets[0].base is dets[1].base
    keys = {d.shared_stage_key() for d in dets}
    assert len(keys) == 1
    calls = []
    for d in (dets[0].base, getattr(dets[2], "base", dets[2])):
        d.model.vision_model.register_forward_hook(lambda *_: calls.append(1))
    entries = [Entry(str(i), d) for i, d in enumerate(dets)]
    specs = parse_set_specs([str(data["test"])])
    timing = score_sets(entries, specs, batch_size=16, progress=False)
    assert len(calls) == 2 * 2 and timing["shared_stages"] == 1  # two sets of 24 in batches of 16
    for e, path in zip(entries, paths):
        alone = Entry("alone", load_detector(path, device="cpu"))
        score_sets([alone], specs, batch_size=16, progress=False)
        assert [r.scores for r in e.results] == [r.scores for r in alone.results], path
    assert entries[0].results[0].scores != entries[1].results[0].scores  # trained vs init differ


def test_resume_after_a_kill_equals_an_uninterrupted_run(run, data, tmp_path):
    """SIGKILL after epoch 1, then --resume: the adapter equals the uninterrupted run's (AdamW state, schedule and
    data order restored)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import train

    out = tmp_path / "run"
    state = out / "last" / "training_state.pt"
    args = ["--config", "instructblip_lora", "--tiny", "--out", str(out), "--set", f"data.train=[{data['train']}]",
            "--set", f"data.val=[{data['val']}]"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(Path(train.__file__)), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.is_file(), proc.stderr.read().decode()[-2000:]
    assert torch.load(state, weights_only=True)["epoch"] == 1, "the kill came too late to interrupt epoch 2"
    assert train.main([*args, "--resume"]) == 0
    resumed = load_file(str(out / "last" / "weights.safetensors"))
    straight = load_file(str(run["out"] / "last" / "weights.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.allclose(resumed[key], straight[key], atol=1e-6), key
