"""The shortcut audit as a pipeline stage: every built dataset audited after it is verified.

`audit_datasets` reads each dataset's listed tars (up to `max_samples` a set), runs
`fakeforge.audit.audit_sets`, writes `OUT/audit/<dataset>.json` and `OUT/audit/audit.md`, and returns a
verdict: `pass` when no real/fake pair of any dataset is separable by format features alone,
`flagged` (naming the pairs) otherwise, `skipped` for a dataset without both labels. The pipeline
prints the verdict line, records the stage in `OUT/stages/audit.json` and puts the verdict in the report.
A flagged pair does not stop the pipeline: the numbers are still computed, under that warning.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["audit_datasets", "verdict_line"]


def audit_datasets(folders: dict[str, Path], out: Path, max_samples: int = 200) -> dict:
    """Audit each dataset folder (name -> built folder); returns {"verdict", "flagged", "datasets"}."""
    from fakeforge.audit import audit_sets, markdown, read_set
    from fakeforge.shards.hub import listed_tars
    from fakeforge.shards.store import Store

    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"verdict": "pass", "flagged": [], "datasets": {}}
    sections = []
    for name, folder in folders.items():
        store = Store(folder, "dataset")
        manifest = store.read_json("manifest.json") or {}
        sets = [read_set(s, [store.url(t) for t in tars], None, max_samples)
                for s, tars in listed_tars(manifest).items()]
        labels = {s.label for s in sets if s.rows}
        if not {"real", "fake"} <= labels:
            result["datasets"][name] = {"verdict": "skipped", "reason": f"labels {sorted(labels)}"}
            continue
        report = audit_sets(sets)
        (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=float))
        worst = max((p["auc_format_only"] for p in report["pairs"]), default=0.5)
        flagged = [f"{name}: {pair}" for pair in report["flagged"]]
        result["datasets"][name] = {"verdict": "flagged" if flagged else "pass", "flagged": report["flagged"],
                                    "max_format_auc": round(float(worst), 3), "threshold": report["threshold"]}
        result["flagged"] += flagged
        sections.append(f"# dataset '{name}'\n\n{markdown(report)}")
    if result["flagged"]:
        result["verdict"] = "flagged"
    elif not any(d["verdict"] == "pass" for d in result["datasets"].values()):
        result["verdict"] = "skipped"
    (out / "audit.md").write_text("\n".join(sections) or "no dataset with both real and fake sets\n")
    (out / "verdict.json").write_text(json.dumps(result, indent=1))
    return result


def verdict_line(result: dict) -> str:
    """One line for the log and the report."""
    if result["verdict"] == "flagged":
        return (f"shortcut audit: FLAGGED {'; '.join(result['flagged'])}: format features alone separate these "
                "real/fake pairs, so a detector can learn the file instead of the generator")
    if result["verdict"] == "skipped":
        return "shortcut audit: skipped (no dataset holds both real and fake sets)"
    worst = max(d.get("max_format_auc", 0.5) for d in result["datasets"].values() if d["verdict"] == "pass")
    return (f"shortcut audit: pass (no real/fake pair separable by format alone; highest format-only AUC "
            f"{worst:.3f}, threshold {next(iter(result['datasets'].values())).get('threshold', 0.75):.2f})")
