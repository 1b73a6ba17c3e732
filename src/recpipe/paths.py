"""Where each stage reads and writes (docs/contracts.md), relative to one root."""
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
    def model(self) -> Path:
        return self.root / "models" / "model"

    @property
    def train_summary(self) -> Path:
        return self.root / "models" / "train_summary.json"

    @property
    def export(self) -> Path:
        return self.root / "models" / "export"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def plots(self) -> Path:
        return self.root / "reports" / "plots"
