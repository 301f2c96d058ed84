"""Markdown tables and the small statistics every section shares."""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Section:
    """One numbered part of the results: a title, a markdown table and notes under it."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The section as markdown."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"{note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct` percentile (nearest rank) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """The median of `values`; 0 for none."""
    return statistics.median(values) if values else 0.0


def worst_window(times: Sequence[float], width: float) -> int:
    """The most `times` inside any closed interval of length `width`."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_right(ordered, t + width) - i for i, t in enumerate(ordered)), default=0
    )


def ms(seconds: float) -> str:
    """Seconds as milliseconds with sensible precision."""
    value = seconds * 1000
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def mib(size: int) -> str:
    """Bytes as MiB."""
    return f"{size / 2**20:.1f}"
