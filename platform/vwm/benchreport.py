"""Benchmark tables in docs/performance.md: each benchmark owns the block between its two markers."""

from __future__ import annotations

import re
from pathlib import Path


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
