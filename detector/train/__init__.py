"""Training as one library call: `train(config) -> RunFolder`.

`config` is a `TrainConfig` (`detector.train.config.load_train_config`) or a config name/path resolved with
`overrides`, `tiny` and `out`. The loop (`detector.train.loop.Trainer`) runs under accelerate, so the same
call trains on one CPU, one GPU or every process of an `accelerate launch`. `fakeforge train`, `train.py` and
the pipeline are thin layers over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """A training run's folder: `init/` (the untrained detector), `best/` (lowest validation loss), `last/`
    (for --resume), `metrics.csv`, `config.yaml` (the resolved config that ran)."""

    path: Path

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def init(self) -> Path:
        return self.path / "init"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def finished(self) -> bool:
        return (self.best / "detector.json").is_file()


def train(config, *, overrides: list[str] | None = None, tiny: bool = False, out: str | Path | None = None,
          resume: bool = False, resume_force: bool = False) -> RunFolder:
    """Train a detector; returns its run folder (on every rank). Every config error is raised, naming the key,
    before any model loads; `resume` continues from `last/` (a changed model, data or optimizer is refused
    unless `resume_force`)."""
    from detector.train.config import TrainConfig, load_train_config
    from detector.train.loop import Trainer
    from fakeforge.config import ConfigError

    if resume_force and not resume:
        raise ConfigError("--resume-force only makes sense with --resume")
    cfg = config if isinstance(config, TrainConfig) else load_train_config(config, overrides, tiny,
                                                                           str(out) if out else None)
    best = Trainer(cfg, tiny=tiny, resume=resume, resume_force=resume_force).fit()
    return RunFolder(Path(best).parent)


__all__ = ["RunFolder", "train"]
