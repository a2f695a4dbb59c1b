"""The robustness section of a report: detector x condition tables, one curve per swept parameter and a few
thumbnails per condition, from the `robustness.json` that `fakeforge eval --robustness` writes.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

ROBUSTNESS_FILE = "robustness.json"
METRICS = (("average_accuracy", "Average accuracy"), ("balanced_accuracy", "Balanced accuracy"), ("auc", "AUC"))


def unchanged_note(name: str, cond: dict) -> str:
    """One sentence for a condition of robustness.json that left some images pixel-identical."""
    return (f"{name} left {cond['unchanged']} of {cond['images']} images unchanged (already within its bounds, "
            "e.g. no larger than a resize's size): those score as clean.")


def find_robustness(eval_dirs: list[str | Path]) -> Path | None:
    """The robustness.json of an eval: in one of the eval folders, or in their parent (a side-by-side eval
    writes it beside the per-detector folders)."""
    for d in eval_dirs:
        for folder in (Path(d), Path(d).parent):
            if (folder / ROBUSTNESS_FILE).is_file():
                return folder / ROBUSTNESS_FILE
    return None


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _num(v) -> float:
    return math.nan if v is None else float(v)


def sweep_plots(summary: dict) -> dict[str, str]:
    """Sweep name -> PNG data URI: accuracy and AUC against the swept value, one line per detector, the clean
    value dotted."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    conds, dets = summary["conditions"], summary["detectors"]
    for name, points in summary.get("sweeps", {}).items():
        xs = [v for _c, v in points]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, (metric, title) in zip(axes, (("average_accuracy", "average accuracy (%)"), ("auc", "AUC (%)"))):
            for i, d in enumerate(dets):
                color = f"C{i % 10}"
                ys = [100 * _num(conds[c]["detectors"][d][metric]) for c, _v in points]
                ax.plot(xs, ys, marker="o", color=color, label=d)
                clean = conds.get("clean", {}).get("detectors", {}).get(d, {}).get(metric)
                if clean is not None:
                    ax.axhline(100 * clean, color=color, ls=":", lw=1)
            ax.set_xlabel(name)
            ax.set_ylabel(title)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{summary['protocol']['name']}: {name} (dotted: clean)", fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[name] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def robustness_section(path: str | Path, plots: bool = True) -> tuple[str, str]:
    """(HTML, Markdown) of the robustness section for the robustness.json at `path`."""
    path = Path(path)
    summary = json.loads(path.read_text())
    p, conds, dets = summary["protocol"], list(summary["conditions"]), summary["detectors"]
    chains = {c: summary["conditions"][c]["chain"] for c in conds}
    h = [f"<h2>Robustness: {html.escape(p['name'])}</h2><p>{html.escape(p.get('description', ''))}</p>",
         f"<p class=note>Source: {html.escape(p.get('source', ''))}</p>"]
    md = [f"## Robustness: {p['name']}", "", p.get("description", ""), "", f"Source: {p.get('source', '')}", ""]
    if p.get("assumptions"):
        h.append("<ul class=note>" + "".join(f"<li>{html.escape(a)}</li>" for a in p["assumptions"]) + "</ul>")
        md += [f"- {a}" for a in p["assumptions"]] + [""]
    head = "".join(f"<th title='{html.escape(chains[c])}'>{html.escape(c)}<br><small>{html.escape(chains[c])}"
                   "</small></th>" for c in conds)
    for metric, title in METRICS:
        rows = "".join("<tr><th>" + html.escape(d) + "</th>" + "".join(
            f"<td>{_pct(summary['conditions'][c]['detectors'][d][metric])}</td>" for c in conds) + "</tr>"
            for d in dets)
        h.append(f"<h3>{title} (%)</h3><table><tr><th>Method</th>{head}</tr>{rows}</table>")
        md += [f"### {title} (%)", "", "| Method | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
        md += [f"| {d} | " + " | ".join(_pct(summary["conditions"][c]["detectors"][d][metric]) for c in conds) + " |"
               for d in dets] + [""]
    errors = {c: max((v["errors"] for v in summary["conditions"][c]["detectors"].values()), default=0) for c in conds}
    if any(errors[c] > errors.get("clean", 0) for c in conds):
        text = "Samples a condition could not be applied to (recorded errors, not scored): " + ", ".join(
            f"{c} {errors[c] - errors.get('clean', 0)}" for c in conds if errors[c] > errors.get("clean", 0))
        h.append(f"<p class=flag>{html.escape(text)}</p>")
        md += [text, ""]
    notes = [unchanged_note(c, summary["conditions"][c]) for c in conds if summary["conditions"][c].get("unchanged")]
    if notes:
        h.append("<p class=flag>" + "<br>".join(html.escape(n) for n in notes) + "</p>")
        md += [*notes, ""]
    if plots and summary.get("sweeps"):
        h.append("<h3>Curves per swept parameter</h3>")
        md += ["### Curves per swept parameter", ""]
        for name, uri in sweep_plots(summary).items():
            h.append(f'<div class=plots><img src="{uri}" alt="{html.escape(name)}"></div>')
            md += [f"![{name}]({uri})", ""]
    thumbs = summary.get("thumbnails") or {}
    if any(thumbs.values()):
        h.append("<h3>What each condition looks like</h3><table>")
        md += ["### What each condition looks like", ""]
        for c in conds:
            cells = "".join(f'<img src="{_uri(path.parent / t["file"])}" title="{html.escape(t["key"])}" '
                            'style="margin:2px;height:96px;image-rendering:pixelated">'
                            for t in thumbs.get(c, []) if (path.parent / t["file"]).is_file())
            h.append(f"<tr><th>{html.escape(c)}<br><small>{html.escape(chains[c])}</small></th><td>{cells}</td></tr>")
            pics = " ".join(f"![{t['key']}]({t['file']})" for t in thumbs.get(c, []))
            md += [f"**{c}** (`{chains[c]}`): {pics}", ""]
        h.append("</table>")
    return "".join(h), "\n".join(md)
