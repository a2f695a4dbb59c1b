"""Self-contained evaluation reports: `report.html` and `report.md` that open from disk.

A report puts one or more detectors side by side on the same sets: the paper-layout accuracy table with
its average, AUC/AP per set, per-set bars, ROC curves, confusion matrices, a grid of each set's most and
least confident samples with their scores, the shortcut audit (when given), and the exact configs,
library versions and checkpoints behind the numbers. Every picture is inlined as a data URI, so the
files can be mailed or archived alone.

Inputs are the folders `fakeforge eval` writes (`results.json` + `scores.csv`), read by
`load_eval_dir`; thumbnails are read back from the evaluated shard sets or image folders by key.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from detector.eval.metrics import balanced_accuracy  # noqa: F401  (importable from here)
from detector.eval.tables import PaperRow, cell_style, paper_table, pct
from fakeforge.config import ConfigError

GRID_SIZE = 6  # samples per row of the confidence grids
THUMB = 96


@dataclass
class MethodResult:
    """One detector's evaluation: the summary of `detector.eval.evaluate.summarize`, per-sample scores
    {set: [(key, label 0/1, P(fake))]} and free-form provenance (checkpoint, prompt, config...)."""

    method: str
    summary: dict
    samples: dict[str, list[tuple[str, int, float]]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def train_set(self) -> str:
        return str(self.info.get("train_set") or "")

    @property
    def params(self) -> int | None:
        return self.info.get("trainable_parameters")


def load_eval_dir(path: str | Path) -> MethodResult:
    """Read an eval output folder (`results.json`, `scores.csv`); errors name the folder."""
    path = Path(path)
    res = path / "results.json"
    if not res.is_file():
        raise ConfigError(f"'{path}' is not an eval output folder (no results.json); run `fakeforge eval` first")
    try:
        data = json.loads(res.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"'{res}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sets"), dict):
        raise ConfigError(f"'{res}' has no per-set results ('sets')")
    samples: dict[str, list[tuple[str, int, float]]] = {}
    scores = path / "scores.csv"
    if scores.is_file():
        with scores.open(newline="") as fh:
            for row in csv.DictReader(fh):
                samples.setdefault(row["set"], []).append(
                    (row["key"], 1 if row["label"] == "fake" else 0, float(row["p_fake"])))
    info = {k: v for k, v in data.items() if k not in ("sets", "overall", "method", "errors")}
    summary = {k: data.get(k) for k in ("threshold", "sets", "average_accuracy", "overall")}
    summary["average_accuracy"] = _num(summary["average_accuracy"])
    for entry in summary["sets"].values():
        for k in ("accuracy", "auc", "ap"):
            entry[k] = _num(entry.get(k))
    return MethodResult(str(data.get("method") or path.name), summary, samples, info)


def _num(v) -> float:
    return math.nan if v is None else float(v)


# ------------------------------------------------------------------------------------------- thumbnails
def read_thumbnails(set_paths: dict[str, list[Path] | Path], wanted: dict[str, set[str]],
                    size: int = THUMB) -> dict[str, dict[str, str]]:
    """{set: {key: data URI}} for the wanted keys, read back from shard tars or image files (a folder
    set's keys are file paths). Unreadable items are left out."""
    from fakeforge.images import ImageLoadError, load_rgb

    out: dict[str, dict[str, str]] = {}
    for name, keys in wanted.items():
        found = out.setdefault(name, {})
        src = set_paths.get(name)
        if src is None or not keys:
            continue
        if isinstance(src, Path) and src.is_dir():
            items = ((k, Path(k).read_bytes()) for k in keys if Path(k).is_file())
        else:
            items = _tar_images(src if isinstance(src, list) else [src], keys)
        for key, data in items:
            try:
                img = load_rgb(data)
            except ImageLoadError:
                continue
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            found[key] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def _tar_images(tars: list, keys: set[str]):
    from fakeforge.shards.reader import IMAGE_KEYS, iter_members

    todo = set(keys)
    if not todo:
        return
    for key, _ext, data in iter_members(tars, lambda key, ext: key in todo and ext in IMAGE_KEYS):
        todo.discard(key)
        yield key, data
        if not todo:
            return


def confidence_picks(samples: list[tuple[str, int, float]], k: int = GRID_SIZE) -> dict[str, list]:
    """The k samples scored most fake and the k scored most real (ties broken by key)."""
    ordered = sorted(samples, key=lambda s: (-s[2], s[0]))
    return {"most_fake": ordered[:k], "most_real": ordered[::-1][:k]}


# ------------------------------------------------------------------------------------------- plots
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(methods: list[MethodResult]) -> dict[str, str]:
    """Per-set accuracy bars (grouped by method), ROC curves and confusion matrices, as data URIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from detector.eval.evaluate import roc_curve  # plain numpy; same curve as the eval's own plots

    names = list(methods[0].summary["sets"])
    plots = {}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        accs = [100 * _zero_nan(m.summary["sets"].get(n, {}).get("accuracy", math.nan)) for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(methods) - 1) / 2) * width, accs, width, label=m.method)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.axhline(50, color="grey", ls=":", lw=1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Accuracy per set")
    fig.tight_layout()
    plots["bars"] = _png(fig)
    for m in methods:
        real = np.array([p for rows in m.samples.values() for _k, y, p in rows if y == 0])
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        for name, rows in m.samples.items():
            fake = np.array([p for _k, y, p in rows if y == 1])
            if fake.size and real.size:
                fpr, tpr, _ = roc_curve(np.r_[np.zeros(real.size, int), np.ones(fake.size, int)], np.r_[real, fake])
                auc = m.summary["sets"].get(name, {}).get("auc", math.nan)
                ax.plot(fpr, tpr, label=f"{name} ({pct(auc)})")
        ax.plot([0, 1], [0, 1], color="grey", ls=":")
        ax.set_xlabel("real called fake (FPR)")
        ax.set_ylabel("fake called fake (TPR)")
        ax.set_title(f"ROC: {m.method}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        plots[f"roc:{m.method}"] = _png(fig)
        cm = np.array(m.summary["overall"]["confusion"])
        fig, ax = plt.subplots(figsize=(3.2, 2.8))
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
        ax.set_xticks([0, 1], ["pred real", "pred fake"])
        ax.set_yticks([0, 1], ["real", "fake"])
        ax.set_title(f"Confusion: {m.method}", fontsize=9)
        fig.tight_layout()
        plots[f"cm:{m.method}"] = _png(fig)
    return plots


def _zero_nan(v: float) -> float:
    return 0.0 if v is None or math.isnan(v) else v


# ------------------------------------------------------------------------------------------- writing
_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d2329;padding:0 1rem}h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #dde2e6;
padding-bottom:.3rem}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #dde2e6;
padding:.3rem .55rem;text-align:right}th{background:#f3f5f7}td:first-child,th:first-child{text-align:left}
.avg{font-weight:700}.note{color:#59636e;font-size:.9rem}.plots img{margin:.3rem;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:.4rem}.cell{width:104px;font-size:.72rem;text-align:center}
.cell img{width:96px;height:96px;object-fit:cover;border:3px solid #2e7d32}.cell.wrong img{border-color:#c62828}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.78rem}.flag{color:#c62828;font-weight:700}"""


def _heads(names: list[str], held_in: set[str]) -> tuple[str, list[str]]:
    cells = "".join(f"<th>{html.escape(n)}{'<sup title=held-in>in</sup>' if n in held_in else ''}</th>" for n in names)
    return cells, [f"{n} (in)" if n in held_in else n for n in names]


def accuracy_table(methods: list[MethodResult], held_in: set[str] | None = None) -> tuple[str, str]:
    """(HTML, Markdown) of the paper-layout table (`tables.paper_table`): a row per detector with its training
    sets and trainable parameters, a column per set, the average, the balanced accuracy and the overall AUC."""
    rows = [PaperRow.from_summary(m.method, m.summary, train_set=m.train_set, params=m.params) for m in methods]
    return paper_table(rows, held_in or set(), balanced=True)


def metric_table(methods: list[MethodResult], key: str, held_in: set[str] | None = None) -> tuple[str, str]:
    """(HTML, Markdown) of AUC or AP (`key`) per fake set: a row per detector, then the mean."""
    names = [n for n, v in methods[0].summary["sets"].items() if v.get("fake")]
    head, md_names = _heads(names, held_in or set())
    rows_html, rows_md = [], []
    for m in methods:
        vals = [m.summary["sets"].get(n, {}).get(key, math.nan) for n in names]
        vals = [math.nan if v is None else v for v in vals]
        ok = [v for v in vals if not math.isnan(v)]
        mean = sum(ok) / len(ok) if ok else math.nan
        rows_html.append(f"<tr><td>{html.escape(m.method)}</td>" + "".join(
            f"<td{cell_style(v)}>{pct(v)}</td>" for v in vals) + f"<td class=avg>{pct(mean)}</td></tr>")
        rows_md.append(f"| {m.method} | " + " | ".join(pct(v) for v in vals) + f" | **{pct(mean)}** |")
    return (f"<table><tr><th>Method</th>{head}<th>Mean</th></tr>{''.join(rows_html)}</table>",
            "\n".join([f"| Method | {' | '.join(md_names)} | **Mean** |", "|---|" + "---|" * (len(names) + 1),
                       *rows_md]))


def detail_table(methods: list[MethodResult]) -> tuple[str, str]:
    """(HTML, Markdown): n, accuracy, AUC and AP per set and detector."""
    hdr = ["detector", "set", "n (real/fake)", "skipped", "accuracy", "AUC", "AP"]
    rows = []
    for m in methods:
        for name, v in m.summary["sets"].items():
            rows.append([m.method, name, f"{v.get('n', 0)} ({v.get('real', 0)}/{v.get('fake', 0)})",
                         str(v.get("errors", 0)), pct(v.get("accuracy")), pct(v.get("auc")), pct(v.get("ap"))])
    h = "<table><tr>" + "".join(f"<th>{c}</th>" for c in hdr) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    md = "\n".join(["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)] + ["| " + " | ".join(r) + " |" for r in rows])
    return h, md


def _grid(picks: list, thumbs: dict[str, str], threshold: float) -> tuple[str, str]:
    cells, md = [], []
    for key, label, p in picks:
        uri = thumbs.get(key)
        wrong = int(p >= threshold) != label
        caption = f"{'fake' if label else 'real'} · P(fake) {p:.3f}"
        img = f'<img src="{uri}" alt="{html.escape(key)}">' if uri else "<div>(no image)</div>"
        cells.append(f'<div class="cell{" wrong" if wrong else ""}" title="{html.escape(key)}">{img}<br>'
                     f"{html.escape(caption)}</div>")
        md.append(f"![{key}]({uri})<br>{caption}" if uri else f"{key}: {caption}")
    return f'<div class="grid">{"".join(cells)}</div>', " | ".join(md)


def write_report(methods: list[MethodResult], out_dir: str | Path, *, title: str = "fakeforge evaluation",
                 thumbnails: dict[str, dict[str, str]] | None = None, audit: dict | None = None,
                 provenance: dict | None = None, note: str | None = None,
                 held_in: list[str] | None = None, robustness: str | Path | None = None) -> list[Path]:
    """Write `report.html` and `report.md` into `out_dir`; returns their paths (`robustness`: the
    robustness.json of the eval, rendered as its own section).

    `methods` share one set list (the first method's order). `thumbnails` comes from `read_thumbnails`,
    `audit` from `fakeforge.audit.audit_sets`, `provenance` maps a heading to text or JSON-able data
    (configs, library versions, checkpoints)."""
    if not methods or not any(m.summary.get("sets") for m in methods):
        raise ConfigError("nothing to report: the evaluation holds no scored set (did every image fail to load, "
                          "or was --sets empty?)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbnails = thumbnails or {}
    plots = _plots(methods)
    inset = set(held_in or [])
    acc_html, acc_md = accuracy_table(methods, inset)
    auc_html, auc_md = metric_table(methods, "auc", inset)
    ap_html, ap_md = metric_table(methods, "ap", inset)
    det_html, det_md = detail_table(methods)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    thr = methods[0].summary.get("threshold", 0.5)
    h = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_CSS}</style>"
         f"</head><body><h1>{html.escape(title)}</h1><p class=note>{when} · decision threshold on P(fake): {thr:.3f}"
         f" · accuracy in %</p>"]
    md = [f"# {title}", "", f"{when} · decision threshold on P(fake): {thr:.3f} · accuracy in %", ""]
    if note:
        h.append(f"<p>{html.escape(note)}</p>")
        md += [note, ""]
    legend = ("Avg: the paper's plain mean over the sets. Balanced: the mean of the real sets' and the fake sets' "
              "accuracies (a detector that calls everything fake gets 50). AUC: all fakes against all reals."
              + (" <sup>in</sup>: held-in set." if inset else ""))
    h += ["<h2>Accuracy per set</h2>", acc_html, f"<p class=note>{legend}</p>",
          f'<div class=plots><img src="{plots["bars"]}" alt="accuracy bars"></div>',
          "<h2>AUC and AP per set</h2><p class=note>Each set's fakes against all real samples of the evaluation."
          "</p><h3>AUC (%)</h3>", auc_html, "<h3>AP (%)</h3>", ap_html,
          f"<details><summary>Counts per set and detector</summary>{det_html}</details>",
          "<h2>ROC curves and confusion matrices</h2>"]
    md += ["## Accuracy per set", "", acc_md, "", legend.replace("<sup>in</sup>", "(in)"), "",
           f"![accuracy per set]({plots['bars']})", "", "## AUC and AP per set", "",
           "Each set's fakes against all real samples of the evaluation.", "", "### AUC (%)", "", auc_md, "",
           "### AP (%)", "", ap_md, "", "### Counts per set and detector", "", det_md, "",
           "## ROC curves and confusion matrices", ""]
    for m in methods:
        h.append(f'<div class=plots><img src="{plots["roc:" + m.method]}" alt="ROC {html.escape(m.method)}">'
                 f'<img src="{plots["cm:" + m.method]}" alt="confusion {html.escape(m.method)}"></div>')
        md += [f"![ROC {m.method}]({plots['roc:' + m.method]}) ![confusion {m.method}]({plots['cm:' + m.method]})", ""]
    lead = methods[0]
    h.append(f"<h2>Most and least confident samples ({html.escape(lead.method)})</h2><p class=note>Green border: "
             "correct, red: wrong.</p>")
    md += [f"## Most and least confident samples ({lead.method})", ""]
    for name, rows in lead.samples.items():
        picks = confidence_picks(rows)
        for which, label in (("most_fake", "scored most fake"), ("most_real", "scored most real")):
            g_html, g_md = _grid(picks[which], thumbnails.get(name, {}), thr)
            h.append(f"<h3>{html.escape(name)}: {label}</h3>{g_html}")
            md += [f"### {name}: {label}", "", g_md, ""]
    if robustness:
        from detector.eval.report_robustness import robustness_section

        r_html, r_md = robustness_section(robustness)
        h.append(r_html)
        md += [r_md, ""]
    if audit:
        from fakeforge.audit import markdown as audit_markdown

        text = audit_markdown(audit)
        flagged = audit.get("flagged") or []
        h.append("<h2>Shortcut audit</h2>" + (f"<p class=flag>Flagged: {html.escape(', '.join(flagged))}</p>"
                                              if flagged else "<p>No pair flagged.</p>") + _md_tables_to_html(text))
        md += [text, ""]
    for heading, content in (provenance or {}).items():
        body = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
        h.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(body)}</pre>")
        md += [f"## {heading}", "", "```", body, "```", ""]
    h.append("</body></html>")
    paths = [out_dir / "report.html", out_dir / "report.md"]
    paths[0].write_text("\n".join(h))
    paths[1].write_text("\n".join(md))
    return paths


def _md_tables_to_html(text: str) -> str:
    """Render the Markdown tables and paragraphs of a section (headings dropped) as HTML."""
    out, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c).replace('**', '')}</{'th' if i == 0 else 'td'}>"
                                 for c in row) + "</tr>" for i, row in enumerate(cells)) + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip() and not line.startswith("#"):
            out.append(f"<p class=note>{html.escape(line)}</p>")
    flush()
    return "".join(out)


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("evals", nargs="+", metavar="EVAL_DIR",
                        help="folders written by `fakeforge eval` (one row per folder, side by side)")
    parser.add_argument("--out", required=True, help="folder for report.html and report.md")
    parser.add_argument("--sets", nargs="*", default=[], metavar="SPEC",
                        help="the evaluated set specs, to show thumbnails of the most/least confident samples")
    parser.add_argument("--audit", action="store_true", help="include the shortcut audit of --sets")
    parser.add_argument("--title", default="fakeforge evaluation")
    parser.epilog = ("example:\n  fakeforge report runs/eval_afp runs/eval_clip --sets runs/test --audit "
                     "--out runs/report")


def set_sources(specs: list[str]) -> dict[str, list[Path] | Path]:
    """Set name -> tar list or image folder, for the same specs `fakeforge eval --sets` takes."""
    from fakeforge.shards.reader import find_sets

    out: dict[str, list[Path] | Path] = {}
    for spec in specs:
        name, _, rest = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        kind, _, folder = rest.partition(":")
        if kind in ("real", "fake") and folder:
            out[name or Path(folder).name] = Path(folder)
        else:
            out.update(find_sets(spec))
    return out


def make_report(evals: list[str | Path], out: str | Path, *, sets: list[str] | None = None, audit: bool = False,
                title: str = "fakeforge evaluation", provenance: dict | None = None,
                held_in: list[str] | None = None) -> list[Path]:
    """Report over eval folders: thumbnails (and the audit) read from the evaluated `sets` specs."""
    methods = [load_eval_dir(p) for p in evals]
    sources = set_sources(sets) if sets else {}
    wanted: dict[str, set[str]] = {}
    for name, rows in methods[0].samples.items():
        picks = confidence_picks(rows)
        wanted[name] = {k for k, _y, _p in picks["most_fake"] + picks["most_real"]}
    thumbs = read_thumbnails(sources, wanted) if sources else {}
    audit_report = None
    if audit and sets:
        from fakeforge.audit import audit_sets, load_specs

        audit_report = audit_sets(load_specs(sets, 500))
    note = None
    if held_in:
        note = (f"Held-in sets (the generators and sources training used): {', '.join(held_in)}; every other set is "
                "held out.")
    prov = {**(provenance or {}), **{f"Evaluation: {m.method}": m.info for m in methods}}
    from detector.eval.report_robustness import find_robustness

    return write_report(methods, out, title=title, thumbnails=thumbs, audit=audit_report, provenance=prov, note=note,
                        held_in=held_in, robustness=find_robustness(evals))


def run(args) -> int:
    paths = make_report(args.evals, args.out, sets=args.sets, audit=args.audit, title=args.title)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
