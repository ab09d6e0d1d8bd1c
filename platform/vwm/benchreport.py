"""Benchmark tables in docs/performance.md (each benchmark owns the block between its two markers), and the
interleaving of a benchmark's arms over rounds with the ratios it reports."""

from __future__ import annotations

import re
from pathlib import Path

from vwm.eval.stats import bootstrap_median


def round_order(names: list[str], round_index: int) -> list[str]:
    """The arms in the order a round runs them: rotated every round, so no arm always runs first."""
    k = round_index % len(names)
    return names[k:] + names[:k]


def ratio_over_rounds(numerator_s: list[float], denominator_s: list[float]) -> tuple[float, float, float]:
    """The per-round ratio's median over rounds and its 95% bootstrap interval (rounds paired by index)."""
    return bootstrap_median([n / d for n, d in zip(numerator_s, denominator_s)])


def write_block(path: str | Path, name: str, table: str) -> None:
    """Replace the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` (appended if absent)."""
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
