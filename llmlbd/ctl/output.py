"""How llmlbctl prints: aligned tables for people, one JSON document for scripts.

Read commands build one plain dict (the JSON document) and hand it to
`emit` with a function that renders the same dict as text, so the two
outputs can never disagree about the facts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

__all__ = [
    "json_option",
    "emit",
    "table",
    "fmt_age",
    "fmt_outlier",
    "fmt_pct",
    "fmt_num",
    "fmt_list",
    "fmt_bytes",
    "dash",
]

dash = "-"

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
)


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print *data* as indented JSON or as the text *render* makes of it."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    else:
        text = render(data)
        click.echo(text.rstrip("\n"))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [
        [dash if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_numeric(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(width) if num else cell.ljust(width)
            for cell, width, num in zip(row, widths, numeric)
        ]
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    if cell == dash:
        return True
    try:
        float(cell.rstrip("%s").replace("ms", ""))
    except ValueError:
        return False
    return True


def fmt_outlier(outlier: dict[str, Any] | None) -> str:
    """A backend's outlier state in a few words: EJECTED 4s (connect, 2nd), PROBING, …"""
    if outlier is None:
        return ""
    state = outlier["state"]
    if state == "streak":
        return f"{outlier['failures']} failed"
    if state == "half_open":
        return "half-open"
    if state == "probing":
        return "PROBING"
    return (
        f"EJECTED {fmt_age(outlier['remaining_ms'])} "
        f"({outlier['last_failure']}, x{outlier['ejections_in_a_row']})"
    )


def fmt_age(ms: float | None) -> str:
    """A duration in ms as 850ms, 2.4s, 3m10s, 5h02m."""
    if ms is None:
        return dash
    ms = float(ms)
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{sign}{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{sign}{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}h{minutes:02d}m"


def fmt_pct(fraction: float | None) -> str:
    return dash if fraction is None else f"{100 * fraction:.0f}%"


def fmt_num(value: float | None) -> str:
    if value is None:
        return dash
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def fmt_list(values: Sequence[str] | None, limit: int = 3) -> str:
    if not values:
        return dash
    shown = ",".join(values[:limit])
    return shown + (f",+{len(values) - limit}" if len(values) > limit else "")


def fmt_bytes(count: float | None) -> str:
    if count is None:
        return dash
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
