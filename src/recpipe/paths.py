"""Where each stage reads and writes (docs/contracts.md), relative to one root.

Each stage writes exactly one output directory (``Paths.output``; the stages are declared in
``recpipe.pipeline``), replaced as a whole by ``recpipe.io.atomic_dir``; DVC tracks it as one
``persist`` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """All pipeline file locations under ``root`` (the repository root for DVC runs)."""

    root: Path = Path(".")

    @property
    def data(self) -> Path:
        """The data folder: raw/ and processed/."""
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.data / "raw"

    @property
    def processed(self) -> Path:
        return self.data / "processed"

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

    @property
    def plots_page(self) -> Path:
        """The offline HTML page ``dvc plots show`` fills (``recpipe.plots_page``)."""
        return self.root / "views" / "plots_page.html"

    def output(self, stage: str) -> Path:
        """The one output of ``stage`` (a stage name of dvc.yaml, ``recpipe.pipeline``)."""
        from recpipe.pipeline import stage as declared

        path: Path = getattr(self, declared(stage).output)
        return path
