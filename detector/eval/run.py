"""`evaluate(checkpoints, sets, options) -> EvalResults`: the evaluation stage as one library call.

Every checkpoint is loaded (each family sharing what it can), every image is decoded once for all of them,
each detector gets its own folder (results.md/.csv/.json, scores.csv, plots) and, with several, one
side-by-side comparison table. `fakeforge eval` and the pipeline are thin layers over this.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from detector.data import parse_set_specs
from detector.eval.evaluate import check_plotting, summarize, write_reports
from detector.eval.side_by_side import (
    Entry,
    comparison_rows,
    folder_names,
    score_sets,
    train_set_label,
    unique_labels,
    write_comparison,
)
from fakeforge.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """How to evaluate. `names`: row labels (default: the checkpoint folder names); `threshold`: P(fake)
    decision threshold, or `calibrate_on`: set names (or extra set specs) whose best balanced-accuracy threshold
    each detector uses; `image_hook(key, image) -> image`: applied to each decoded image (robustness)."""

    out: str | Path
    names: list[str] | None = None
    batch_size: int = 8
    limit: int | None = None
    threshold: float | None = None
    calibrate_on: list[str] = field(default_factory=list)
    image_loading: str = "fakeforge"
    plots: bool = True
    tiny: bool = False
    device: str = "auto"
    scoring: str | None = None
    model_id: str | None = None
    progress: bool = True
    image_hook: Callable[[str, Any], Any] | None = None
    robustness: str | None = None  # a protocol (configs/robustness/ name, YAML path or inline chains)
    degrade_workers: int = 2  # threads making the degraded copies while the detectors score

    def validate(self, n_checkpoints: int) -> None:
        if self.degrade_workers < 1:
            raise ConfigError(f"--degrade-workers = {self.degrade_workers} must be >= 1")
        if self.robustness and self.image_hook is not None:
            raise ConfigError("a robustness protocol and an image hook cannot be combined")
        if self.threshold is not None and self.calibrate_on:
            raise ConfigError("give --threshold or --calibrate-on, not both")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold = {self.threshold} must be within [0, 1]")
        if self.names and len(self.names) != n_checkpoints:
            raise ConfigError(f"--name gives {len(self.names)} label(s) for {n_checkpoints} checkpoint(s)")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size = {self.batch_size} must be >= 1")


@dataclass
class EvalResults:
    """What an evaluation wrote: per detector label its folder and summary (`metrics.summarize`), the
    comparison rows (several detectors), timings, the files, and the Markdown table that was written."""

    out: Path
    folders: dict[str, Path]
    summaries: dict[str, dict]
    rows: list[dict]
    timing: dict
    written: list[Path]
    table_markdown: str
    robustness_markdown: str = ""


def check_writable_folder(path: str | Path, what: str) -> Path:
    """Create folder `path` if needed and prove a file can be written there; ConfigError naming it if not."""
    folder = Path(path)
    if str(path).strip() == "":
        raise ConfigError(f"{what} is empty; name an output folder")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} = '{folder}' is a file, not a folder")
    probe = folder / f".fakeforge-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} = '{folder}' is not writable: {exc.strerror or exc}") from None
    return folder


def open_detectors(checkpoints: list[str], options: EvalOptions) -> list[tuple[Any, str | None]]:
    """Load every checkpoint (each family sharing what it can) with the scoring method each one uses."""
    from detector.checkpoint import load_detectors

    detectors = load_detectors(checkpoints, device=options.device, tiny=options.tiny,
                               zero_shot_model_id=options.model_id)
    methods = [options.scoring if options.scoring in d.scoring_methods else None for d in detectors]
    if options.scoring and not any(methods):
        raise ConfigError(f"--scoring {options.scoring}: none of the detectors has that scoring rule "
                          f"({sorted({d.name for d in detectors})})")
    return list(zip(detectors, methods))


def _calibrate(options: EvalOptions, entries: list[Entry], by_label: dict) -> dict:
    """Per-detector threshold with the best balanced accuracy on the `calibrate_on` sets."""
    import numpy as np

    from detector.eval.metrics import calibrate_threshold

    first = by_label[entries[0].label]
    extra_specs = [s for item in options.calibrate_on if item not in first for s in parse_set_specs([item])]
    extra = {e.label: Entry(e.label, e.detector, e.method) for e in entries}
    if extra_specs:
        score_sets(list(extra.values()), extra_specs, options.batch_size, options.limit, options.image_loading,
                   progress=options.progress)
    out = {}
    for e in entries:
        pool = [by_label[e.label][n] for n in options.calibrate_on if n in by_label[e.label]] + extra[e.label].results
        y = np.concatenate([r.label_array for r in pool])
        s = np.concatenate([r.score_array for r in pool])
        try:
            threshold = calibrate_threshold(y, s)
        except ValueError as exc:
            raise ConfigError(f"--calibrate-on {options.calibrate_on}: {exc}") from None
        out[e.label] = {"sets": list(options.calibrate_on), "threshold": threshold, "n": int(y.size)}
        log.info("calibrated threshold of %s on %s: %.4f", e.label, options.calibrate_on, threshold)
    return out


def evaluate(checkpoints: list[str | Path], sets: list[str], options: EvalOptions,
             detectors: list[tuple[Any, str | None]] | None = None, banner: Callable[[str], None] | None = None
             ) -> EvalResults:
    """Score `checkpoints` (folders, official files, or "zero-shot") on `sets` (set specs, see
    `detector.data.parse_set_specs`) and write the reports under `options.out`. Every argument is checked
    (output writable, plotting available, set specs readable) before any model loads. `detectors`: already
    loaded (detector, method) pairs for `checkpoints`; `banner`: where the "what runs" lines go."""
    checkpoints = [str(c) for c in checkpoints]
    options.validate(len(checkpoints))
    if options.plots:
        try:
            check_plotting()
        except ImportError as exc:
            raise ConfigError(str(exc)) from None
    protocol = None
    if options.robustness:
        from fakeforge.protocols import load_protocol

        protocol = load_protocol(options.robustness)  # a bad protocol is one line before any model loads
    specs = parse_set_specs(sets)
    out_dir = check_writable_folder(options.out, "--out")
    several = len(checkpoints) > 1
    labels = unique_labels(checkpoints, options.names)
    loaded = detectors if detectors is not None else open_detectors(checkpoints, options)
    entries = [Entry(label, det, method, ckpt) for label, ckpt, (det, method) in zip(labels, checkpoints, loaded)]
    for e in entries:
        for line in e.detector.banner(e.checkpoint, options.image_loading, e.method):
            (banner or log.info)(line)
    if protocol is not None:
        from detector.eval.robustness import score_robustness

        robust = score_robustness(entries, specs, protocol, options.batch_size, options.limit, options.image_loading,
                                  workers=options.degrade_workers, progress=options.progress)
        timing = robust.timing
    else:
        timing = score_sets(entries, specs, options.batch_size, options.limit, options.image_loading,
                            progress=options.progress, image_hook=options.image_hook)
    by_label = {e.label: {r.name: r for r in e.results} for e in entries}
    calib = _calibrate(options, entries, by_label) if options.calibrate_on else {}
    folders = dict(zip(labels, [out_dir / f for f in folder_names(labels)] if several else [out_dir]))
    summaries, written = {}, []
    for e in entries:
        threshold = calib[e.label]["threshold"] if e.label in calib else (
            options.threshold if options.threshold is not None else 0.5)
        summaries[e.label] = summary = summarize(e.results, threshold)
        meta = getattr(e.detector, "checkpoint_meta", None) or {}
        info = {"train_set": train_set_label(meta), **e.detector.report_info(e.method)}
        written += write_reports(e.results, summary, folders[e.label], method=e.label, plots=options.plots,
                                 extra={"checkpoint": e.checkpoint, "calibration": calib.get(e.label), **info,
                                        "image_loading": options.image_loading})
    robustness_md = ""
    if protocol is not None:
        from detector.eval.robustness import write_robustness

        written += write_robustness(robust, out_dir, {lbl: v["threshold"] for lbl, v in summaries.items()})
        robustness_md = (out_dir / "robustness.md").read_text()
    rows = comparison_rows(entries, summaries, folders) if several else []
    if several:
        written += write_comparison(rows, out_dir, {**timing, "images_per_s": {
            e.label: round(sum(len(r.keys) for r in e.results) / max(e.seconds, 1e-9), 2) for e in entries}})
    table = (out_dir / ("comparison.md" if several else "results.md")).read_text()
    skipped = sum(len(r.errors) for r in entries[0].results) if entries else 0
    if skipped:
        log.warning("%d unreadable item(s) skipped; listed under 'errors' in %s", skipped,
                    folders[entries[0].label] / "results.json")
    return EvalResults(out_dir, folders, summaries, rows, timing, written, table, robustness_md)
