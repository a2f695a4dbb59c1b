"""Shortcut audit: can trivial format features alone tell a real set from a fake set?

Public fake-image datasets often leak "fakeness" through the file format instead of the image:
reals are JPEGs of many sizes, fakes are PNGs of one size, and a detector learns the format
("Fake or JPEG?", Grommelt et al. 2024). `audit_sets` measures this for every (real, fake) pair of
sets: a small random forest sees only per-file features read from the header and the byte count,
never the pixels, and its cross-validated ROC AUC says how well the format alone separates the pair.
0.5 means no shortcut; a pair at or above the threshold is flagged.

Features per file: width, height, aspect ratio (log), container format, the JPEG quality estimated
from the luminance quantisation table (IJG scaling), the JPEG chroma subsampling, and the file bytes
per pixel. A pair is flagged on the format features. Bytes per pixel is reported beside them (its own
AUC, and the classifier with it) but does not flag a pair by itself: under one encoder at one quality
it measures content (a noisy image compresses worse than a smooth one), which is what a detector is
meant to see; when the encoders differ, the format features already flag the pair.
"""
from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from fakeforge.images import IMAGE_EXTENSIONS, find_images

log = logging.getLogger(__name__)

FEATURES = ["log_width", "log_height", "log_aspect", "bytes_per_pixel", "format_jpeg", "format_png",
            "format_webp", "jpeg_quality", "chroma_subsampling"]
#: Features that describe the container alone (bytes per pixel also reflects content).
FORMAT_FEATURES = [f for f in FEATURES if f != "bytes_per_pixel"]
DEFAULT_THRESHOLD = 0.75
_IJG_LUMA_SUM = 3688  # sum of the IJG standard luminance table, i.e. quality 50 (scale 100 %)


def jpeg_quality(img: Image.Image) -> float:
    """IJG quality (1..100) that would produce the file's luminance quantisation table; NaN if not a JPEG."""
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables:
        return math.nan
    scale = 100.0 * sum(tables[0]) / _IJG_LUMA_SUM
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return float(min(100.0, max(1.0, quality)))


def file_features(data: bytes) -> dict[str, float]:
    """The audit features of one encoded image, from its header and size only (pixels are not decoded)."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    fmt = (img.format or "").upper()
    is_jpeg = fmt == "JPEG"
    return {"log_width": math.log(max(w, 1)), "log_height": math.log(max(h, 1)),
            "log_aspect": math.log(max(w, 1) / max(h, 1)), "bytes_per_pixel": len(data) / max(w * h, 1),
            "format_jpeg": float(is_jpeg), "format_png": float(fmt == "PNG"), "format_webp": float(fmt == "WEBP"),
            # lossless files get quality 101 and subsampling -1, so "lossless vs q95" stays visible
            "jpeg_quality": jpeg_quality(img) if is_jpeg else 101.0,
            "chroma_subsampling": float(JpegImagePlugin.get_sampling(img)) if is_jpeg else -1.0}


@dataclass
class AuditSet:
    """Features of (up to `max_samples`) files of one set, with its majority label."""

    name: str
    label: str
    rows: list[dict[str, float]] = field(default_factory=list)
    unreadable: int = 0

    def matrix(self, names: list[str]) -> np.ndarray:
        return np.array([[r[n] for n in names] for r in self.rows], dtype=float).reshape(len(self.rows), len(names))


def _iter_tar_samples(tars: list):
    """(image bytes, json dict or None) per sample of tar shards (local or URL, streamed), in order."""
    from fakeforge.shards.reader import IMAGE_KEYS, iter_members

    pending: dict[str, dict] = {}
    for key, ext, data in iter_members(tars, lambda _key, ext: ext in IMAGE_KEYS or ext == "json"):
        entry = pending.setdefault(key, {})
        if ext == "json":
            entry["json"] = json.loads(data)
        else:
            entry["image"] = data
        if "image" in entry and "json" in entry:
            yield entry.pop("image"), pending.pop(key)["json"]
    for entry in pending.values():  # images without metadata
        if "image" in entry:
            yield entry["image"], None


def read_set(name: str, source: list[Path] | Path, label: str | None = None, max_samples: int = 500) -> AuditSet:
    """Audit features of a shard set (list of tars; labels from each sample's json) or an image folder
    (`label` required)."""
    labels: dict[str, int] = {}
    rows, bad = [], 0
    if isinstance(source, Path) and source.is_dir():
        items = ((p.read_bytes(), {"label": label}) for p in find_images(source)
                 if p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        items = _iter_tar_samples(list(source))
    for data, meta in items:
        if len(rows) >= max_samples:
            break
        try:
            rows.append(file_features(data))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            bad += 1
            continue
        lab = str((meta or {}).get("label") or label or "unknown")
        labels[lab] = labels.get(lab, 0) + 1
    majority = max(labels, key=labels.get) if labels else (label or "unknown")
    return AuditSet(name, majority, rows, bad)


def _cv_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    """Out-of-fold ROC AUC of a small random forest (pooled over folds)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    k = int(min(folds, np.bincount(y).min()))
    if k < 2:
        return math.nan
    clf = RandomForestClassifier(n_estimators=100, max_depth=4, min_samples_leaf=2, random_state=seed, n_jobs=1)
    proba = cross_val_predict(clf, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def _single_auc(values: np.ndarray, y: np.ndarray) -> float:
    """How well one feature alone ranks the pair, either direction (0.5 = not at all, 1 = perfectly)."""
    from sklearn.metrics import roc_auc_score

    if np.allclose(values, values[0]):
        return 0.5
    auc = float(roc_auc_score(y, values))
    return max(auc, 1.0 - auc)


def audit_pair(real: AuditSet, fake: AuditSet, threshold: float = DEFAULT_THRESHOLD, folds: int = 5,
               seed: int = 0) -> dict:
    """Shortcut AUCs of one (real, fake) pair: all features, format features only, and each feature alone."""
    xr, xf = real.matrix(FEATURES), fake.matrix(FEATURES)
    x = np.vstack([xr, xf])
    y = np.r_[np.zeros(len(xr), int), np.ones(len(xf), int)]
    fmt_idx = [FEATURES.index(f) for f in FORMAT_FEATURES]
    result = {"real": real.name, "fake": fake.name, "n_real": len(xr), "n_fake": len(xf),
              "auc": _cv_auc(x, y, folds, seed), "auc_format_only": _cv_auc(x[:, fmt_idx], y, folds, seed),
              "per_feature": {f: _single_auc(x[:, i], y) for i, f in enumerate(FEATURES)}}
    auc = result["auc_format_only"]
    result["flagged"] = bool(not math.isnan(auc) and auc >= threshold)
    leaks = sorted(((v, f) for f, v in result["per_feature"].items() if v >= threshold and f in FORMAT_FEATURES),
                   reverse=True)
    result["leaking_features"] = [f for _v, f in leaks]
    return result


def audit_sets(sets: list[AuditSet], threshold: float = DEFAULT_THRESHOLD, folds: int = 5, seed: int = 0) -> dict:
    """Audit every (real, fake) pair among `sets`; returns a JSON-able report."""
    reals = [s for s in sets if s.label == "real" and s.rows]
    fakes = [s for s in sets if s.label == "fake" and s.rows]
    pairs = [audit_pair(r, f, threshold, folds, seed) for r in reals for f in fakes]
    return {"threshold": threshold, "features": FEATURES,
            "sets": {s.name: {"label": s.label, "samples": len(s.rows), "unreadable": s.unreadable,
                              "summary": _describe(s)} for s in sets},
            "pairs": pairs, "flagged": [f"{p['real']} vs {p['fake']}" for p in pairs if p["flagged"]]}


def _describe(s: AuditSet) -> dict:
    """Typical format of a set: its sizes, formats, JPEG qualities (for the report)."""
    if not s.rows:
        return {}
    m = s.matrix(FEATURES)
    w = np.exp(m[:, 0]).round().astype(int)
    h = np.exp(m[:, 1]).round().astype(int)
    sizes = sorted({f"{a}x{b}" for a, b in zip(w, h)})
    fmts = sorted({f for f in ("jpeg", "png", "webp") for r in s.rows if r[f"format_{f}"]})
    q = sorted({int(round(r["jpeg_quality"])) for r in s.rows if r["format_jpeg"]})
    return {"sizes": sizes[:5] + (["..."] if len(sizes) > 5 else []), "formats": fmts, "jpeg_quality": q[:5],
            "bytes_per_pixel": round(float(m[:, 3].mean()), 3)}


def markdown(report: dict) -> str:
    """The audit as a Markdown section."""
    lines = ["## Shortcut audit", "",
             "Cross-validated ROC AUC of a small classifier that never sees pixels, only the file format: size, "
             "aspect, container, JPEG quality and chroma subsampling (0.5 = no shortcut). Pairs at or above "
             f"{report['threshold']:.2f} are flagged. Bytes per pixel is shown beside it: with one encoder at one "
             "quality it reflects content (noise compresses worse than smooth areas), so it does not flag alone.",
             "", "| real | fake | n | format AUC | leaking format features | bytes/pixel AUC | AUC with bytes/pixel "
             "| verdict |", "|---|---|---|---|---|---|---|---|"]
    for p in report["pairs"]:
        verdict = "**FLAGGED**" if p["flagged"] else "ok"
        lines.append(f"| {p['real']} | {p['fake']} | {p['n_real']}+{p['n_fake']} | {_f(p['auc_format_only'])} | "
                     f"{', '.join(p['leaking_features']) or '-'} | {_f(p['per_feature']['bytes_per_pixel'])} | "
                     f"{_f(p['auc'])} | {verdict} |")
    lines += ["", "| set | label | samples | sizes | formats | JPEG quality | bytes/pixel |", "|---|---|---|---|---|---|---|"]
    for name, s in report["sets"].items():
        d = s["summary"]
        lines.append(f"| {name} | {s['label']} | {s['samples']} | {' '.join(d.get('sizes', []))} | "
                     f"{' '.join(d.get('formats', []))} | {' '.join(map(str, d.get('jpeg_quality', [])))} | "
                     f"{d.get('bytes_per_pixel', '')} |")
    return "\n".join(lines) + "\n"


def _f(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def load_specs(specs: list[str], max_samples: int) -> list[AuditSet]:
    """Sets named on the command line: dataset folders, set folders, .tar files, NAME=PATH, or image folders
    as NAME=real:DIR / NAME=fake:DIR."""
    from fakeforge.shards.reader import find_sets

    out = []
    for spec in specs:
        name, _, rest = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        kind, _, folder = rest.partition(":")
        if kind in ("real", "fake") and folder:
            path = Path(folder)
            if not path.is_dir():
                raise FileNotFoundError(f"image folder not found: '{path}' (from {spec!r})")
            out.append(read_set(name or path.name, path, kind, max_samples))
            continue
        for set_name, tars in find_sets(spec).items():
            out.append(read_set(set_name, tars, None, max_samples))
    return out


def add_arguments(parser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SET",
                        help="built dataset folder (one set per subfolder), set folder, .tar, NAME=PATH, or an "
                             "image folder as NAME=real:DIR / NAME=fake:DIR")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"flag pairs whose shortcut AUC is at least this (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--max-samples", type=int, default=500, help="files read per set (default 500)")
    parser.add_argument("--out", default=None, help="also write the report as JSON (and .md beside it)")
    parser.epilog = ("examples:\n  fakeforge audit runs/default\n  fakeforge audit coco=real:data/coco/val2017 runs/t2i/sd2\n"
                     "Exit status: 0 when no pair is flagged, 1 when some pair is, 2 on bad input.")


def run(args) -> int:
    from fakeforge.config import ConfigError

    if not 0.5 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold = {args.threshold} must be within [0.5, 1]")
    if args.max_samples < 2:
        raise ConfigError(f"--max-samples = {args.max_samples} must be >= 2")
    sets = load_specs(args.specs, args.max_samples)
    labels = {s.label for s in sets if s.rows}
    if not {"real", "fake"} <= labels:
        got = ", ".join(f"{s.name} ({s.label}, {len(s.rows)} files)" for s in sets) or "nothing"
        raise ConfigError(f"the audit needs at least one real and one fake set; got {got}")
    report = audit_sets(sets, args.threshold)
    text = markdown(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=lambda v: None))
        out.with_suffix(".md").write_text(text)
    if report["flagged"]:
        print(f"flagged: {', '.join(report['flagged'])} (format features alone separate these sets)")
        return 1
    return 0
