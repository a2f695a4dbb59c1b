"""SIGTERM and SIGINT during `fakeforge eval` (start-up, mid-scoring): one line, exit 143 / 130, no
results.json left behind, and the rerun writes the results.json of an uninterrupted run."""
from __future__ import annotations

import shutil
import signal
import time

import pytest
import torch
from fault_helpers import ROOT, hurt, one_line_stop, past_interpreter_start, run, start

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
def ckpt(tiny_instructblip, tmp_path):
    """An AntifakePrompt checkpoint with fixed random rows (scores vary across samples)."""
    from detector.families.antifakeprompt.checkpoint import save_checkpoint
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig

    det = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip"), device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in det.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    save_checkpoint(det, tmp_path / "ckpt", {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    return tmp_path / "ckpt"


def _hurt_mid_scoring(proc, sig, after: float = 0.3) -> tuple[int, str]:
    """Send `sig` `after` seconds past the line eval prints as scoring begins; returns (exit code, output)."""
    seen = []
    for raw in proc.stdout:
        seen.append(raw.decode(errors="replace"))
        if seen[-1].startswith("scoring:"):
            time.sleep(after)
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=240)
    return proc.returncode, "".join(seen) + rest.decode(errors="replace")


def test_eval_signals_at_start_up_and_mid_scoring_then_rerun_gives_the_same_results(tmp_path, ckpt):
    from detector_helpers import write_dataset

    data = write_dataset(tmp_path / "data", n_real=300, n_fake=300, shards=4)
    out = tmp_path / "eval"
    args = [str(ROOT / "fakeforge" / "cli.py"), "eval", "--checkpoint", str(ckpt), "--sets", str(data),
            "--out", str(out)]
    code, log = run(args)
    assert code == 0, log[-3000:]
    clean = next(out.rglob("results.json")).read_bytes()
    shutil.rmtree(out)
    proc = start(args)
    code, log = hurt(proc, signal.SIGTERM, when=past_interpreter_start(proc), after=0.2)    # start-up
    one_line_stop(code, log, signal.SIGTERM)
    assert not list(out.rglob("results.json"))
    for sig in (signal.SIGINT, signal.SIGTERM):                                          # mid-scoring
        code, log = _hurt_mid_scoring(start(args, PYTHONUNBUFFERED="1"), sig)
        one_line_stop(code, log, sig)
        assert not list(out.rglob("results.json")), f"the {sig!r} came too late: {log[-2000:]}"
        time.sleep(0.1)
    code, log = run(args)
    assert code == 0, log[-3000:]
    assert next(out.rglob("results.json")).read_bytes() == clean
