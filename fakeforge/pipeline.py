"""`fakeforge run`: build → verify → stats → train → eval → report from one pipeline config.

A pipeline config (`configs/pipelines/*.yaml`) names datasets (build configs, each built into
`OUT/data/<name>`), detectors (trained on some datasets, or given as a checkpoint / `zero-shot`), the
datasets to evaluate on, and whether to write the report. Each stage is one typed library call made in this
process: `fakeforge.builder.build`, `detector.train.train`, `detector.eval.run.evaluate`,
`detector.eval.report.make_report`. Under a `launcher` (e.g. `accelerate launch --num_processes 8`) builds
and training run as that launcher's processes instead, the same command a user would type.

Resume: rerun the same command. Every stage records what it was made from in `OUT/stages/<stage>.json`
(a hash of its settings and of its inputs' hashes). A finished stage with the same hash is reused after
a check (datasets are re-verified, checkpoints must exist); an unfinished one is resumed (the builder
skips finished shards, training continues from `last/`); a stage whose inputs or settings changed is
refused with what changed, unless `--rebuild STAGE` is given (evaluations and the report are simply
redone). Old and new data are never mixed.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fakeforge.config import (
    ConfigError,
    apply_overrides,
    config_hash,
    from_dict,
    load_yaml,
    resolve_named_config,
    to_dict,
)

log = logging.getLogger("fakeforge.run")
STAGES_DIR = "stages"


@dataclass
class DatasetStage:
    """A dataset: a build config (name under configs/build/ or a path) built into OUT/data/<name>."""

    name: str
    build: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class DetectorStage:
    """A detector row of the table: trained with `config` on `train_on` (datasets, or single sets of a
    dataset as "dataset/set"), an existing `checkpoint` (a folder, or "zero-shot") used as is, or
    `init_of` another detector of the pipeline: that run's `init/` checkpoint (the same detector before
    training), so the table compares trained against untrained on the same data."""

    name: str
    config: str | None = None
    checkpoint: str | None = None
    init_of: str | None = None
    train_on: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    stats: bool = True  # compute mean/std of the training data first (when the config does not fix them)

    def validate(self) -> None:
        if sum(bool(v) for v in (self.config, self.checkpoint, self.init_of)) != 1:
            raise ConfigError(f"detector '{self.name}': give exactly one of 'config' (train it), 'checkpoint' (use "
                              f"it as is) or 'init_of' (another detector's untrained start); got config="
                              f"{self.config!r}, checkpoint={self.checkpoint!r}, init_of={self.init_of!r}")
        if self.config and not self.train_on:
            raise ConfigError(f"detector '{self.name}': 'train_on' must name the datasets to train on")


@dataclass
class EvalStage:
    """What to evaluate every detector on: datasets (all their sets), held-in set names (marked in
    the report), a per-set image limit, eval options passed through (e.g. ["--scoring", "loss"]), and a
    robustness protocol (configs/robustness/) scored in the same pass."""

    datasets: list[str] = field(default_factory=list)
    held_in: list[str] = field(default_factory=list)
    limit: int | None = None
    extra_args: list[str] = field(default_factory=list)
    robustness: str | None = None

    def validate(self) -> None:
        if self.robustness:
            from fakeforge.protocols import load_protocol

            load_protocol(self.robustness)


@dataclass
class PipelineConfig:
    """A whole experiment (see configs/pipelines/)."""

    description: str = ""
    output: str = "runs/pipeline"
    datasets: list[DatasetStage] = field(default_factory=list)
    detectors: list[DetectorStage] = field(default_factory=list)
    evaluate: EvalStage = field(default_factory=EvalStage)
    report: bool = True
    audit: bool = True
    launcher: str | None = None  # e.g. "accelerate launch --num_processes 8" for build and train stages

    def validate(self) -> None:
        names = [d.name for d in self.datasets]
        if not names:
            raise ConfigError("a pipeline needs at least one entry under 'datasets'")
        for label, values in (("datasets", names), ("detectors", [d.name for d in self.detectors])):
            dup = sorted({n for n in values if values.count(n) > 1})
            if dup:
                raise ConfigError(f"{label} names must be unique; repeated: {dup}")
        for d in self.detectors:
            unknown = [n for n in d.train_on if n.split("/", 1)[0] not in names]
            if unknown:
                raise ConfigError(f"detector '{d.name}': train_on names {unknown}, which no dataset stage produces "
                                  f"(datasets: {names})")
        trained = [d.name for d in self.detectors if d.config]
        for d in self.detectors:
            if d.init_of and d.init_of not in trained:
                raise ConfigError(f"detector '{d.name}': init_of = '{d.init_of}' is not a trained detector of this "
                                  f"pipeline (trained: {trained})")
        unknown = [n for n in self.evaluate.datasets if n not in names]
        if unknown:
            raise ConfigError(f"evaluate.datasets names {unknown}, which no dataset stage produces (datasets: {names})")
        if self.detectors and not self.evaluate.datasets:
            raise ConfigError("evaluate.datasets is empty: name the datasets to evaluate the detectors on")


# ------------------------------------------------------------------------------------------- stages
class StageRecord:
    """`OUT/stages/<stage>.json`: the hash a stage was made from and whether it finished."""

    def __init__(self, out: Path, stage: str):
        self.path = out / STAGES_DIR / (stage.replace("/", "__") + ".json")
        self.stage = stage

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def write(self, digest: str, inputs: dict, done: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"stage": self.stage, "hash": digest, "inputs": inputs, "done": done,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
        tmp.replace(self.path)


class Pipeline:
    """Runs the stages of one resolved pipeline config; see the module docstring."""

    def __init__(self, cfg: PipelineConfig, *, tiny: bool = False, demo_data: bool = False,
                 rebuild: list[str] | None = None, progress: bool = False):
        self.cfg, self.tiny, self.demo_data, self.progress = cfg, tiny, demo_data, progress
        self.out = Path(cfg.output)
        self.rebuild = set(rebuild or [])
        known = {f"data/{d.name}" for d in cfg.datasets} | {f"train/{d.name}" for d in cfg.detectors if d.config}
        unknown = sorted(self.rebuild - known)
        if unknown:
            raise ConfigError(f"--rebuild {unknown}: no such stage; stages: {sorted(known)}")
        self.data_hash: dict[str, str] = {}
        self.checkpoints: dict[str, tuple[str, str]] = {}  # detector -> (checkpoint, stage hash)
        self.step = 0
        self.audit: dict | None = None  # the shortcut audit stage's result

    # -- helpers ---------------------------------------------------------------------------------------
    def _cmd(self, args: list[str], launch: bool = False) -> list[str]:
        if launch and self.cfg.launcher:
            return shlex.split(self.cfg.launcher) + ["-m", "fakeforge.cli", *args]
        return [sys.executable, "-m", "fakeforge.cli", *args]

    def _title(self, title: str, args: list[str] | None = None) -> float:
        self.step += 1
        print(f"[{self.step}] {title}" + (f"\n    $ {shlex.join(['fakeforge', *args])}" if args else ""), flush=True)
        return time.time()

    def _launch(self, title: str, args: list[str]) -> None:
        """Run a build or training under the configured launcher (its own processes, one per GPU)."""
        start = self._title(title, args)
        from fakeforge.interrupts import run_child

        code = run_child(self._cmd(args, launch=True))  # a signal here is passed on to the stage
        if code != 0:
            raise PipelineError(f"stage '{title}' failed (exit {code}); fix the cause and rerun the "
                                "same command to resume")
        print(f"    done in {time.time() - start:.1f} s", flush=True)

    def _call(self, title: str, fn, *args, **kwargs):
        """Run one stage's library call in this process; a failure names the stage and says that rerunning resumes."""
        from fakeforge.builder.failures import BuildFailed

        start = self._title(title)
        try:
            out = fn(*args, **kwargs)
        except BuildFailed as exc:
            raise PipelineError(f"stage '{title}' failed: {exc}; fix the cause and rerun the same command to "
                                "resume") from None
        print(f"    done in {time.time() - start:.1f} s", flush=True)
        return out

    def _check_record(self, stage: str, digest: str, what_changed: str) -> dict | None:
        """The stage's record when it may be reused or resumed; refuses a record from other inputs."""
        record = StageRecord(self.out, stage).read()
        if record is None or record.get("hash") == digest:
            return record
        if stage in self.rebuild:
            return None
        raise ConfigError(f"stage {stage} in '{self.out}' was made from other inputs ({what_changed}); rerun with "
                          f"--rebuild {stage} to redo it (its old output is deleted), or use another --out")

    # -- datasets -------------------------------------------------------------------------------------
    def build_datasets(self) -> None:
        for d in self.cfg.datasets:
            folder = self.out / "data" / d.name
            stage = f"data/{d.name}"
            if stage in self.rebuild and folder.exists():
                print(f"    --rebuild {stage}: deleting {folder}")
                shutil.rmtree(folder)
            title = f"build dataset '{d.name}' ({d.build})"
            if self.cfg.launcher:
                args = ["build", "--config", d.build, "--output", str(folder), "--no-progress"]
                args += [a for o in d.overrides for a in ("--set", o)]
                args += ["--tiny"] if self.tiny else []
                args += ["--demo-data"] if self.demo_data else []
                self._launch(title, args)
            else:
                from fakeforge.builder import build
                from fakeforge.builder.runner import BuildOptions

                self._call(title, build, d.build, BuildOptions(progress=self.progress), overrides=list(d.overrides),
                           tiny=self.tiny, demo_data=self.demo_data, output=str(folder))
            self._verify(d.name, folder)
            manifest = json.loads((folder / "manifest.json").read_text())
            self.data_hash[d.name] = str(manifest["config_hash"])
            StageRecord(self.out, stage).write(self.data_hash[d.name], {"build": d.build}, True)
            self.rebuild.discard(stage)

    def _verify(self, name: str, folder: Path) -> None:
        from fakeforge.shards.verify import VerifyError, verify_dataset

        try:
            summary = verify_dataset(folder)
        except VerifyError as exc:
            raise PipelineError(f"dataset '{name}' failed verification: {exc}") from None
        sets = ", ".join(f"{k}={v}" for k, v in summary["sets"].items())
        print(f"    verified {folder}: {summary['samples']} samples ({sets})", flush=True)

    # -- detectors ------------------------------------------------------------------------------------
    def _train_config(self, d: DetectorStage) -> dict:
        from detector.train.config import resolve_train_data

        return resolve_train_data(d.config, list(d.overrides), tiny=self.tiny)

    @staticmethod
    def _uses_data_statistics(resolved: dict) -> bool:
        """True for detectors normalised by statistics measured on their training data (AntifakePrompt)."""
        from detector import DETECTORS

        name = resolved.get("detector")
        return isinstance(name, str) and name in DETECTORS and bool(getattr(DETECTORS.get(name), "data_statistics",
                                                                            False))

    def _data_spec(self, entry: str) -> str:
        """A train_on entry as a set spec: a dataset folder, or NAME=FOLDER for one set of a dataset."""
        dataset, _, set_name = entry.partition("/")
        folder = self.out / "data" / dataset
        if not set_name:
            return str(folder)
        if not (folder / set_name).is_dir():
            raise ConfigError(f"train_on entry '{entry}': dataset '{dataset}' has no set '{set_name}' (sets: "
                              f"{sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith('_'))})")
        return f"{set_name}={folder / set_name}"

    def train_detectors(self) -> None:
        for d in self.cfg.detectors:
            if d.checkpoint:
                digest = config_hash({"checkpoint": d.checkpoint, "tiny": self.tiny})
                self.checkpoints[d.name] = (d.checkpoint, digest)
                continue
            if d.init_of:
                continue  # after the detector it starts from
            resolved = self._train_config(d)
            inputs = {n: self.data_hash[n.split("/", 1)[0]] for n in d.train_on}
            digest = config_hash({"config": resolved, "data": inputs, "tiny": self.tiny})
            stage = f"train/{d.name}"
            folder = self.out / "train" / d.name
            record = self._check_record(stage, digest, f"detector config or training data {sorted(inputs)}")
            if record is None and folder.exists():
                if stage in self.rebuild or not (folder / "last").exists():
                    shutil.rmtree(folder)
                    if stage in self.rebuild:
                        print(f"    --rebuild {stage}: deleted {folder}")
            if record and record.get("done") and (folder / "best").is_dir():
                print(f"[-] train '{d.name}': finished earlier with the same config and data, reused ({folder})")
                self.checkpoints[d.name] = (str(folder / "best"), digest)
                continue
            paths = [self._data_spec(n) for n in d.train_on]
            overrides = [f"data.train=[{','.join(paths)}]"]
            data_cfg = resolved.get("data") or {}
            if d.stats and self._uses_data_statistics(resolved) and data_cfg.get("mean") is None \
                    and not data_cfg.get("stats_file"):
                stats = self.out / "stats" / f"{d.name}.json"
                if not (record and stats.is_file()):
                    self._call(f"mean/std of the training data of '{d.name}'", write_data_statistics, paths, stats,
                               int(data_cfg.get("image_size") or 224), data_cfg.get("stats_max_images"))
                overrides.append(f"data.stats_file={stats}")
            overrides += list(d.overrides)
            resume = (folder / "last").exists()
            StageRecord(self.out, stage).write(digest, inputs, False)
            title = f"train detector '{d.name}' ({d.config})"
            if self.cfg.launcher:
                self._launch(title, ["train", "--config", d.config, "--out", str(folder),
                                     *[a for o in overrides for a in ("--set", o)], *(["--tiny"] if self.tiny else []),
                                     *(["--resume"] if resume else [])])
            else:
                from detector.train import train

                self._call(title, train, d.config, overrides=overrides, tiny=self.tiny, out=str(folder),
                           resume=resume)
            StageRecord(self.out, stage).write(digest, inputs, True)
            self.rebuild.discard(stage)
            self.checkpoints[d.name] = (str(folder / "best"), digest)
        for d in self.cfg.detectors:
            if d.init_of:
                trained_ckpt, trained_hash = self.checkpoints[d.init_of]
                self.checkpoints[d.name] = (str(Path(trained_ckpt).parent / "init"), config_hash(
                    {"init_of": trained_hash}))

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> list[Path]:
        """One side-by-side `fakeforge eval` for every detector whose results are missing or stale (each
        image decoded once for all of them); each detector's results end in OUT/eval/<name>."""
        sets = [str(self.out / "data" / n) for n in self.cfg.evaluate.datasets]
        inputs = {n: self.data_hash[n] for n in self.cfg.evaluate.datasets}
        todo, digests = [], {}
        for d in self.cfg.detectors:
            _ckpt, ckpt_hash = self.checkpoints[d.name]
            folder = self.out / "eval" / d.name
            robustness = self.cfg.evaluate.robustness
            digests[d.name] = config_hash({"detector": ckpt_hash, "data": inputs, "limit": self.cfg.evaluate.limit,
                                           "args": self.cfg.evaluate.extra_args,
                                           **({"robustness": robustness} if robustness else {})})
            record = StageRecord(self.out, f"eval/{d.name}").read()
            if record and record.get("hash") == digests[d.name] and record.get("done") \
                    and (folder / "results.json").is_file():
                print(f"[-] eval '{d.name}': same checkpoint and data as before, reused ({folder})")
                continue
            if folder.exists():
                shutil.rmtree(folder)  # results of other inputs are redone, never mixed
            todo.append(d)
        if todo and self.cfg.evaluate.robustness:  # one robustness table over every detector: all scored again
            todo = list(self.cfg.detectors)
            for d in todo:
                if (self.out / "eval" / d.name).exists():
                    shutil.rmtree(self.out / "eval" / d.name)
        if todo:
            from detector.eval.run import EvalOptions, evaluate

            for stale in (*(self.out / "eval").glob("robustness.*"), self.out / "eval" / "robustness"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)

            names = [d.name for d in todo]
            # one detector: its files go straight into its folder; several: one sub-folder each + comparison.*
            options = EvalOptions(out=self.out / "eval" / names[0] if len(todo) == 1 else self.out / "eval",
                                  names=names, limit=self.cfg.evaluate.limit, plots=False, tiny=self.tiny,
                                  progress=self.progress,
                                  robustness=self.cfg.evaluate.robustness, **eval_options(self.cfg.evaluate.extra_args))
            self._call(f"evaluate {', '.join(names)} on {', '.join(self.cfg.evaluate.datasets)}", evaluate,
                       [self.checkpoints[n][0] for n in names], sets, options)
            for n in names:
                StageRecord(self.out, f"eval/{n}").write(digests[n], {"checkpoint": self.checkpoints[n][0], **inputs},
                                                        True)
        return [self.out / "eval" / d.name for d in self.cfg.detectors]

    def write_report(self, evals: list[Path]) -> Path | None:
        if not self.cfg.report or not evals:
            return None
        from detector.eval.report import make_report
        from fakeforge.audit_stage import verdict_line

        self.step += 1
        print(f"[{self.step}] report", flush=True)
        sets = [str(self.out / "data" / n) for n in self.cfg.evaluate.datasets]
        provenance = {**({"Shortcut audit stage": verdict_line(self.audit)} if self.audit else {}),
                      "Pipeline": to_dict(self.cfg), "Stages": {p.stem: json.loads(p.read_text()) for p in
                                                                sorted((self.out / STAGES_DIR).glob("*.json"))}}
        paths = make_report(evals, self.out / "report", sets=sets, audit=self.cfg.audit,
                            title=self.cfg.description or "fakeforge pipeline", provenance=provenance,
                            held_in=self.cfg.evaluate.held_in)
        print(f"    wrote {', '.join(map(str, paths))}", flush=True)
        return paths[0]

    def run(self) -> dict:
        """All stages in order; returns {"report": path, "evals": [...], "datasets": {...}}."""
        from fakeforge.config import dump_yaml
        from fakeforge.locking import OutputLock

        with OutputLock(self.out, "run"):  # one pipeline per output folder (each stage locks its own too)
            dump_yaml({**to_dict(self.cfg), "tiny": self.tiny, "demo_data": self.demo_data},
                      self.out / "pipeline.yaml")
            self.build_datasets()
            self.audit = self.audit_datasets() if self.cfg.audit else None
            self.train_detectors()
            evals = self.evaluate() if self.cfg.detectors else []
            report = self.write_report(evals)
        return {"report": report, "evals": evals, "datasets": dict(self.data_hash), "audit": self.audit}

    def audit_datasets(self) -> dict:
        """The shortcut audit stage over every built dataset (`fakeforge.audit_stage`); its verdict is
        printed, recorded in stages/audit.json and shown in the report."""
        from fakeforge.audit_stage import audit_datasets, verdict_line

        self.step += 1
        print(f"[{self.step}] shortcut audit of {', '.join(d.name for d in self.cfg.datasets)}", flush=True)
        result = audit_datasets({d.name: self.out / "data" / d.name for d in self.cfg.datasets}, self.out / "audit")
        print(f"    {verdict_line(result)}", flush=True)
        StageRecord(self.out, "audit").write(config_hash(dict(self.data_hash)), result, True)
        return result


def write_data_statistics(specs: list[str], out: Path, image_size: int, max_images: int | None) -> Path:
    """Per-channel mean/std of the training sets (what `fakeforge stats --out` writes)."""
    from detector.data import compute_mean_std, parse_set_specs
    from fakeforge.files import write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(compute_mean_std(parse_set_specs(specs), image_size, max_images), indent=2))
    return out


def eval_options(extra_args: list[str]) -> dict:
    """`evaluate.extra_args` of a pipeline config (the eval command's flags) as `EvalOptions` fields."""
    parser = argparse.ArgumentParser(prog="evaluate.extra_args", add_help=False, exit_on_error=False)
    parser.add_argument("--scoring", default=None)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument("--image-loading", default="fakeforge")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--model-id", default=None)
    parser.add_argument("--device", default="auto")
    try:
        ns, rest = parser.parse_known_args(list(extra_args))
    except argparse.ArgumentError as exc:
        raise ConfigError(f"evaluate.extra_args = {extra_args}: {exc}") from None
    if rest:
        raise ConfigError(f"evaluate.extra_args: {rest} are not eval options (known: --scoring, --batch-size, "
                          "--image-loading, --threshold, --model-id, --device)")
    return vars(ns)


class PipelineError(RuntimeError):
    """A stage's process failed; the message says which and that rerunning resumes."""


def load_pipeline(name_or_path: str, overrides: list[str] | None = None, output: str | None = None) -> PipelineConfig:
    """Resolve a pipeline config (a path or a name under configs/pipelines/) with `key=value` overrides."""
    raw = apply_overrides(load_yaml(resolve_named_config(name_or_path, "pipelines")), overrides)
    if output:
        raw["output"] = output
    if not str(raw.get("output") or "").strip():
        raise ConfigError("'output' must name a folder")
    return from_dict(PipelineConfig, raw)


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline config: a YAML path or a name under "
                                                        "configs/pipelines/")
    parser.add_argument("--out", default=None, help="output folder (overrides the config's 'output')")
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight twins for every model")
    parser.add_argument("--demo-data", action="store_true",
                        help="replace every build source with the built-in demo data (runs anywhere, offline)")
    parser.add_argument("--rebuild", action="append", default=[], metavar="STAGE",
                        help="redo a finished stage whose inputs changed, e.g. data/train or train/antifakeprompt")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline config value, e.g. evaluate.limit=100")
    parser.epilog = ("examples:\n  fakeforge run --config antifakeprompt_v1 --tiny --demo-data --out runs/v1_dry\n"
                     "  fakeforge run --config antifakeprompt_v3            # the real thing (data/, GPUs)\n"
                     "Rerun the same command to resume; finished stages are verified and reused.")


def run(args: argparse.Namespace) -> int:
    cfg = load_pipeline(args.config, args.overrides, args.out)
    pipe = Pipeline(cfg, tiny=args.tiny, demo_data=args.demo_data, rebuild=args.rebuild)
    try:
        result = pipe.run()
    except PipelineError as exc:
        print(f"fakeforge run: error: {exc}", file=sys.stderr)
        return 1
    if result["evals"]:
        print("\n" + results_table(result["evals"], cfg.evaluate.held_in))
    if result["report"]:
        print(f"report: {result['report']}")
    return 0


def results_table(evals: list[Path], held_in) -> str:
    """The paper-layout Markdown table of a pipeline's eval folders (the report's first table)."""
    from detector.eval.report import accuracy_table, load_eval_dir

    return accuracy_table([load_eval_dir(e) for e in evals], set(held_in or ()))[1]


# ------------------------------------------------------------------------------------------- demo
DEMO_NOTE = ("These numbers come from tiny random-weight twins: the fakes look nothing like real generators' "
             "output, so they say nothing about real detectors. They show that every stage works end to end.")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--config", default="demo", help="pipeline config (default: demo)")
    parser.epilog = ("Runs the demo pipeline offline with tiny twins: real sample photos -> fake sets -> shards ->\n"
                     "AntifakePrompt training -> evaluation -> report.html. Rerun to resume.")


def held_out_summary(results: dict) -> dict:
    """Balanced accuracy (`detector.eval.metrics.balanced_accuracy`), overall AUC and the paper-layout average
    of one eval's results.json."""
    from detector.eval.metrics import balanced_accuracy

    sets = {k: v for k, v in results["sets"].items() if v.get("accuracy") is not None}
    return {"balanced": balanced_accuracy({"sets": sets}),
            "auc": (results.get("overall") or {}).get("auc") or float("nan"),
            "average": results.get("average_accuracy") or float("nan"),
            "sets": {k: v["accuracy"] for k, v in sets.items()}}


def run_demo(args: argparse.Namespace) -> int:
    cfg = load_pipeline(args.config, output=args.out)
    try:
        result = Pipeline(cfg, tiny=True).run()
    except PipelineError as exc:
        print(f"fakeforge demo: error: {exc}", file=sys.stderr)
        return 1
    print("\nheld-out test data (photo crops never used in training; sets: "
          f"{', '.join(cfg.evaluate.held_in)} held in, the others held out):")
    print(f"  {'detector':16s} {'balanced acc.':>13s} {'AUC':>6s} {'avg acc.':>8s}   per set")
    rows = {}
    for folder in result["evals"]:
        data = json.loads((Path(folder) / "results.json").read_text())
        rows[data.get("method", Path(folder).name)] = row = held_out_summary(data)
        print(f"  {data.get('method', Path(folder).name):16s} {100 * row['balanced']:12.1f}% {100 * row['auc']:5.1f}%"
              f" {100 * row['average']:7.1f}%   " + "  ".join(f"{k} {100 * v:.0f}" for k, v in row["sets"].items()))
    trained = [n for n in rows if n not in ("untrained", "zero-shot")]
    if trained and "untrained" in rows:
        gain = rows[trained[0]]["balanced"] - rows["untrained"]["balanced"]
        print(f"training adds {100 * gain:+.1f} points of balanced accuracy over the same detector untrained "
              "(balanced accuracy = mean of the real-set and fake-set accuracies; the paper-layout average "
              "favours a detector that calls everything fake when fake sets outnumber real ones)")
    if result.get("audit"):
        from fakeforge.audit_stage import verdict_line

        print(verdict_line(result["audit"]))
    print(f"\n{DEMO_NOTE}\nreport:  {result['report']}\ndata:    {cfg.output}/data (verified WebDataset shards, "
          f"dataset cards)\nreal weights (GPU, downloads the models):  fakeforge run --config {args.config} "
          f"--out runs/demo_real")
    return 0
