"""The paper's results table, rendered once for every reader: `fakeforge eval` (results.md, comparison.md), the
pipeline and the report.

The layout follows AntifakePrompt's Table 1 (papers.md §1.8): one row per detector with its training sets
("coco vs sd2") and its trainable-parameter count in the paper's style (4.86K, 23.51M), one accuracy column
per test set, then the average; the report adds the balanced accuracy and the overall AUC.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from detector.base import format_params  # noqa: F401  (the #params column; importable from here)


def pct(v) -> str:
    """0.8123 -> "81.23"; None/NaN -> "n/a"."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _nan(v) -> float:
    return math.nan if v is None else float(v)


@dataclass
class PaperRow:
    """One detector's row: per-set accuracies (set name -> accuracy), the paper-layout average, and the
    balanced accuracy and AUC where known."""

    method: str
    accuracies: dict[str, float]
    average: float
    train_set: str = ""
    params: int | None = None
    balanced: float = math.nan
    auc: float = math.nan
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_summary(cls, method: str, summary: dict, train_set: str = "", params: int | None = None) -> "PaperRow":
        """From an eval summary (`metrics.summarize`, or results.json)."""
        from detector.eval.metrics import balanced_accuracy

        return cls(method, {n: _nan(v.get("accuracy")) for n, v in summary["sets"].items()},
                   _nan(summary.get("average_accuracy")), train_set, params, balanced_accuracy(summary),
                   _nan((summary.get("overall") or {}).get("auc")))


def cell_style(acc: float) -> str:
    """Background from red (0 %) through yellow to green (100 %)."""
    if acc is None or math.isnan(acc):
        return ""
    return f' style="background:hsl({int(120 * acc)},65%,85%)"'


def paper_table(rows: list[PaperRow], held_in: set[str] | frozenset = frozenset(), *, train_columns: bool = True,
                balanced: bool = False) -> tuple[str, str]:
    """(HTML, Markdown) of the paper-layout table over the sets of the first row. `train_columns`: the
    "Train set" and "#params" columns; `balanced`: the balanced accuracy and overall AUC after the average.
    Held-in set names are marked ("(in)" in Markdown, a superscript in HTML)."""
    names = list(rows[0].accuracies) if rows else []
    md_names = [f"{n} (in)" if n in held_in else n for n in names]
    lead = ["Method", *(["Train set", "#params"] if train_columns else [])]
    tail = ["**Avg**", *(["Balanced", "AUC"] if balanced else [])]
    md = ["| " + " | ".join([*lead, *md_names, *tail]) + " |", "|" + "---|" * (len(lead) + len(names) + len(tail))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in lead) + "".join(
        f"<th>{html.escape(n)}{'<sup title=held-in>in</sup>' if n in held_in else ''}</th>" for n in names) + \
        "<th>Avg</th>" + ("<th title='mean of the real and the fake sets&#39; accuracies'>Balanced</th><th>AUC</th>"
                          if balanced else "")
    body = []
    for r in rows:
        accs = [r.accuracies.get(n, math.nan) for n in names]
        lead_cells = [r.method, *([r.train_set or "?", format_params(r.params)] if train_columns else [])]
        tail_cells = [f"**{pct(r.average)}**", *([pct(r.balanced), pct(r.auc)] if balanced else [])]
        md.append("| " + " | ".join([*lead_cells, *(pct(a) for a in accs), *tail_cells]) + " |")
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in lead_cells)
        cells += "".join(f"<td{cell_style(a)}>{pct(a)}</td>" for a in accs)
        cells += f"<td class=avg{cell_style(r.average)}>{pct(r.average)}</td>"
        if balanced:
            cells += f"<td class=avg{cell_style(r.balanced)}>{pct(r.balanced)}</td><td{cell_style(r.auc)}>{pct(r.auc)}</td>"
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>", "\n".join(md)
