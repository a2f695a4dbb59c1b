"""Evaluation reports (report.html / report.md) and the dataset card, on a real tiny build and eval."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.eval.tables import format_params
from fakeforge.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir, tiny_instructblip):
    """The default demo build (real + tiny SD2) and two evals of it: zero-shot with each scoring rule."""
    root = tmp_path_factory.mktemp("report")
    data = root / "demo"
    assert main(["build", "--tiny", "--no-progress", "--output", str(data)]) == 0
    evals = []
    for scoring in ("logits", "loss"):
        out = root / f"eval_{scoring}"
        assert main(["eval", "--tiny", "--checkpoint", "zero-shot", "--scoring", scoring, "--sets", str(data),
                     "--out", str(out), "--name", f"zero-shot-{scoring}", "--no-plots"]) == 0
        evals.append(out)
    return data, evals


def test_report_puts_detectors_side_by_side_with_everything_inlined(built, tmp_path, capsys):
    data, evals = built
    assert main(["report", *map(str, evals), "--sets", str(data), "--audit", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    results = [json.loads((e / "results.json").read_text()) for e in evals]
    columns = list(results[0]["sets"])  # the report's column order: the first eval's sets
    assert re.search(r"<tr><th>Method</th><th>Train set</th><th>#params</th>" + "".join(rf"<th>{c}</th>" for c in columns)
                     + "<th>Avg</th>", page)
    for r in results:  # one table row per detector, with its own numbers, each under its own set's column
        row = re.search(rf"<tr><td>{r['method']}</td>(.*?)</tr>", page).group(1)
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
        expected = [f"{100 * r['sets'][c]['accuracy']:.2f}" for c in columns] + [f"{100 * r['average_accuracy']:.2f}"]
        lead = [r.get("train_set") or "?", format_params(r.get("trainable_parameters"))]
        assert cells[:len(expected) + 2] == lead + expected, (r["method"], cells)
        assert f"| {r['method']} | {' | '.join(lead + expected[:-1])} | **{expected[-1]}** |" in md
        # the confusion matrix is its own plot (not the ROC again), a real PNG
        roc = re.search(rf'<img src="([^"]+)" alt="ROC {r["method"]}">', page).group(1)
        cm = re.search(rf'<img src="([^"]+)" alt="confusion {r["method"]}">', page).group(1)
        assert cm != roc and Image.open(io.BytesIO(base64.b64decode(cm.split(",", 1)[1]))).format == "PNG"
    # plots and the 2 sets x 2 grids x 6 thumbnails are inlined: nothing points outside the file
    assert page.count("data:image/png;base64,") >= 5
    assert page.count("data:image/jpeg;base64,") == 24
    assert not re.search(r'src="(?!data:)', page)
    assert "Shortcut audit" in page and "coco_demo" in page
    assert "Evaluation: zero-shot-logits" in page  # provenance of each row


def test_confidence_grids_show_the_extremes(built):
    from detector.eval.report import confidence_picks, load_eval_dir

    method = load_eval_dir(built[1][0])
    rows = method.samples["sd2"]
    picks = confidence_picks(rows, k=3)
    scores = sorted(p for _k, _y, p in rows)
    assert [p for _k, _y, p in picks["most_fake"]] == scores[::-1][:3]
    assert [p for _k, _y, p in picks["most_real"]] == scores[:3]


def test_empty_or_missing_eval_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "not an eval output folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.json").write_text(json.dumps({"sets": {}, "threshold": 0.5}))
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "nothing to report" in capsys.readouterr().err


def test_dataset_card_loads_with_hugging_face_datasets(built, tmp_path):
    from fakeforge.builder.card import write_dataset_card

    data = tmp_path / "demo"
    shutil.copytree(built[0], data)
    for generated in ("README.md", "_card"):  # the build wrote them; write them again here
        shutil.rmtree(data / generated) if (data / generated).is_dir() else (data / generated).unlink()
    assert write_dataset_card(data) == str(data / "README.md")
    text = (data / "README.md").read_text()
    assert text.startswith("---\n") and "config_name: sd2" in text and "tiny random-weight twins" in text
    grid = Image.open(data / "_card" / "sd2.png")
    assert grid.size == (4 * 128, 4 * 128) and np.asarray(grid).std() > 5  # 16 real tiles, not blank
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(data), "sd2", split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 16
    row = ds[0]
    assert row["json"]["label"] == "fake" and row["json"]["generator"] == "sd2"
    assert row["__key__"].startswith("sd2-") and row["jpg"].size == (64, 64)
    real = datasets.load_dataset(str(data), "coco_demo", split="train", cache_dir=str(tmp_path / "hf"))
    assert {r["json"]["label"] for r in real} == {"real"}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed (tools/render_report.sh "
                                                               "installs it)")
def test_report_renders_in_headless_chromium(built, tmp_path):
    data, evals = built
    assert main(["report", str(evals[0]), "--sets", str(data), "--out", str(tmp_path)]) == 0
    png = tmp_path / "shot.png"
    subprocess.run([str(ROOT / "tools" / "render_report.sh"), str(tmp_path / "report.html"), str(png), "1200x1600"],
                   check=True, capture_output=True, timeout=180)
    shot = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    assert shot.shape[:2] == (1600, 1200)
    assert shot.std() > 20  # a rendered page with tables and plots, not a blank or error page


def test_balanced_accuracy_does_not_reward_calling_everything_fake():
    from detector.eval.report import balanced_accuracy

    sets = {"coco": {"real": 10, "fake": 0, "accuracy": 0.0}}
    sets.update({f"fake{i}": {"real": 0, "fake": 10, "accuracy": 1.0} for i in range(5)})
    summary = {"sets": sets, "average_accuracy": 5 / 6}
    assert balanced_accuracy(summary) == 0.5  # the paper-style average says 83 %
    sets["coco"]["accuracy"] = 0.9
    sets["fake0"]["accuracy"] = 0.5
    assert abs(balanced_accuracy(summary) - 0.5 * (0.9 + 0.9)) < 1e-12


def test_the_build_writes_its_card_with_the_audit(built):
    data = built[0]
    text = (data / "README.md").read_text()
    assert "## Sets" in text and "| sd2 | fake | 16 |" in text and "| coco_demo | real | 16 |" in text
    assert "## Shortcut audit" in text and "| coco_demo | sd2 |" in text  # the real/fake pair was audited
    assert "![sd2](_card/sd2.png)" in text and (data / "_card" / "coco_demo.png").is_file()
