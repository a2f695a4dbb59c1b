"""The `plateau` learning-rate schedule: divide the lr when validation accuracy stops rising, stop below a floor.

CNNSpot's official loop (PeterWang512/CNNDetection `train.py`, `earlystop.py`) watches the validation
accuracy after every epoch; after `patience` epochs in a row without a rise of at least `threshold` over the
best so far it divides the learning rate by 10, starts counting afresh, and ends training once the divided rate
falls below `min_lr` (1e-6). The official loop asks for a rise of 0.001 before the first drop and 0.002
after it; here one `threshold` holds throughout. `PlateauState` is that rule as a small state machine the trainer
updates once per epoch and saves in `training_state.pt`, so a resumed run drops its rate at the same epoch as an
uninterrupted one. torch's `ReduceLROnPlateau` is not used: it writes the optimizer's lr itself (the trainer
sets every step's lr from `lr_at`) and never ends a run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PlateauState:
    """Best validation accuracy, epochs without improvement, the current lr factor and whether training ended."""

    best: float | None = None
    bad_epochs: int = 0
    scale: float = 1.0
    drops: int = 0
    stopped: bool = False

    def update(self, val_acc: float, base_lr: float, patience: int, factor: float, threshold: float,
               min_lr: float) -> str | None:
        """Record one epoch's validation accuracy; returns "drop", "stop" or None (what happened)."""
        if self.stopped:
            return "stop"
        if self.best is None or val_acc >= self.best + threshold:
            self.best, self.bad_epochs = val_acc, 0
            return None
        self.bad_epochs += 1
        if self.bad_epochs < patience:
            return None
        # relative tolerance: 1e-4 / 10 / 10 is 1.0000000000000002e-06, which the official loop keeps
        if base_lr * self.scale * factor < min_lr * (1 - 1e-9):
            self.stopped = True
            return "stop"
        self.scale *= factor
        self.drops += 1
        self.bad_epochs, self.best = 0, None  # the official loop starts a fresh EarlyStopping
        return "drop"

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict | None) -> PlateauState:
        return cls(**state) if state else cls()
