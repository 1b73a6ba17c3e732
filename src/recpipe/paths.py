"""Where each stage reads and writes (docs/contracts.md), relative to one root.

Each stage writes exactly one output directory (``Paths.output``), replaced as a whole by
``recpipe.io.atomic_dir``; DVC tracks it as one ``persist`` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """All pipeline file locations under ``root`` (the repository root for DVC runs)."""

    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def train(self) -> Path:
        """The train stage's output: ``model/``, train_summary.json, metrics.json, training_curve.csv."""
        return self.root / "models" / "train"

    @property
    def model(self) -> Path:
        return self.train / "model"

    @property
    def train_summary(self) -> Path:
        return self.train / "train_summary.json"

    @property
    def train_metrics(self) -> Path:
        return self.train / "metrics.json"

    @property
    def training_curve(self) -> Path:
        return self.train / "training_curve.csv"

    @property
    def export(self) -> Path:
        return self.root / "models" / "export"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    def output(self, stage: str) -> Path:
        """The one output directory of ``stage`` (the stage names of dvc.yaml)."""
        return {
            "ingest": self.raw,
            "preprocess": self.processed,
            "train": self.train,
            "evaluate": self.reports,
            "export": self.export,
        }[stage]
