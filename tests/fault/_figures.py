"""Figures the fault and load scenarios measure, printed at the end of the run (and as they come)."""

from __future__ import annotations

FIGURES: list[tuple[str, str]] = []


def record(scenario: str, text: str) -> None:
    FIGURES.append((scenario, text))
    print(f"[figures] {scenario}: {text}")
