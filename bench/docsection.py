"""Replace one `## ` section of docs/benchmarks.md with a benchmark's new text.

The section runs from its heading line to the next `## ` heading (or the end); nothing
else in the page changes. A page without the section gets it appended.
"""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(heading: str, text: str, path: Path = DOC) -> None:
    """Put *text* (which starts with *heading*, a whole `## ` line) in place of the
    section *heading* names, one blank line before the next section."""
    page = path.read_text() if path.exists() else "# Benchmarks\n"
    body = text.rstrip() + "\n"
    lines = page.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        path.write_text(page.rstrip() + "\n\n" + body)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
    rest = "" if end is None else "\n" + "".join(lines[end:])
    path.write_text("".join(lines[:start]) + body + rest)
