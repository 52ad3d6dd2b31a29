"""Figures the fault and load scenarios measure, printed at the end of the run (and as they come)."""

from __future__ import annotations

from collections import Counter
from typing import Any

FIGURES: list[tuple[str, str]] = []
TOTALS: Counter[str] = Counter()


def record(scenario: str, text: str) -> None:
    FIGURES.append((scenario, text))
    print(f"[figures] {scenario}: {text}")


def record_audit(scenario: str, report: Any) -> None:
    """An audit's summary, added to the tier's totals."""
    TOTALS["scenarios"] += 1
    TOTALS["Secret versions checked"] += report.versions
    TOTALS["Secrets"] += report.secrets
    TOTALS["expired tokens"] += len(report.expired)
    TOTALS["corrupted or half-written"] += len(report.corrupt)
    TOTALS["deleted"] += len(report.deleted)
    TOTALS["duplicated"] += len(report.duplicates)
    TOTALS["unaudited gaps"] += len(report.gaps)
    record(f"{scenario}: audit", report.summary())
