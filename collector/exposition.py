"""A targeted reader of the Prometheus text and OpenMetrics formats.

It answers one question, "which samples does this page hold for *these*
sample names?", without tokenising the rest of the page. A vLLM page is
~70 KB and ~700 lines, of which the collector needs about a dozen; a full
parser (prometheus_client's) spends almost all its time on lines we throw
away. Here each wanted name is located with ``str.find`` on ``"\\n" + name``
(C speed, no per-line Python work), and only the lines it hits have their
labels parsed.

Handled: ``text/plain; version=0.0.4`` and ``1.0.0``, OpenMetrics 1.0
(the final ``# EOF`` line; exemplars after the value are ignored), escaped
label values (``\\\\``, ``\\"``, ``\\n``), braces and commas inside values,
sample timestamps, ``NaN``/``+Inf``/``-Inf`` values, blank lines, ``\\r\\n``
line ends. A line that does not parse is skipped, never fatal: a missing or
broken family degrades only the fields that read it.

Pure: no I/O, no globals; safe to call from any thread or greenlet.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Sample", "Page", "ScanMemo", "parse_labels"]


class Sample(NamedTuple):
    labels: dict[str, str]
    value: float


_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


def _unescape(raw: str) -> str:
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "\\" and i + 1 < n:
            nxt = raw[i + 1]
            out.append(_UNESCAPE.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _closing_quote(line: str, start: int) -> int:
    """Index of the quote closing a value that starts at *start*, or -1."""
    end = line.find('"', start)
    if end == -1:
        return -1
    if line.find("\\", start, end) == -1:
        return end  # the common case: no escapes at all
    i = start
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i
        else:
            i += 1
    return -1


def parse_labels(line: str, i: int) -> tuple[dict[str, str], int]:
    """Parse ``name="value",...}`` from index *i* (just after ``{``).

    Returns the labels and the index after ``}``; raises ValueError when the
    text is not a well-formed label set (for example a line cut short).
    """
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            raise ValueError("unterminated label set")
        if line[i] == "}":
            return labels, i + 1
        eq = line.find("=", i)
        if eq == -1:
            raise ValueError("label without '='")
        name = line[i:eq].strip()
        j = eq + 1
        while j < n and line[j] in " \t":
            j += 1
        if j >= n or line[j] != '"':
            raise ValueError("label value is not quoted")
        end = _closing_quote(line, j + 1)
        if end == -1:
            raise ValueError("unterminated label value")
        raw = line[j + 1 : end]
        labels[name] = _unescape(raw) if "\\" in raw else raw
        i = end + 1
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ",":
            i += 1


def _parse_line(line: str, name_len: int) -> Sample | None:
    """Parse one sample line already known to start with the wanted name."""
    i = name_len
    if line[i] == "{":
        try:
            labels, i = parse_labels(line, i + 1)
        except ValueError:
            return None
    else:
        labels = {}
    rest = line[i:].split(None, 2)  # value [timestamp | "# exemplar..."]
    if not rest:
        return None
    try:
        return Sample(labels, float(rest[0]))  # float() reads NaN, +Inf, -Inf, 1e+06
    except ValueError:
        return None


class ScanMemo:
    """What one backend's previous page taught us, to read its next page faster.

    Pages of one server keep their layout from scrape to scrape: the same
    families in the same order, only some values change. So the offset where
    a family started last time is a good place to look first (a window
    search instead of a whole-page search), and an unchanged line (the
    40-label ``vllm:cache_config_info``) need not be parsed again. The memo
    only speeds things up: a miss falls back to the full search.
    """

    __slots__ = ("hints", "lines")

    WINDOW = 8192  # bytes searched either side of the previous offset
    MAX_LINES = 256  # parsed lines remembered, per backend

    def __init__(self) -> None:
        self.hints: dict[str, int] = {}
        self.lines: dict[str, Sample | None] = {}


class Page:
    """One scraped page, read lazily: only the names asked for are ever parsed."""

    __slots__ = ("_cache", "limit", "memo", "text")

    def __init__(self, text: str, memo: ScanMemo | None = None) -> None:
        self.text = text
        self.memo = memo
        # Only complete lines: a body that stops mid-line (a server killed
        # while writing) must not yield "2" for a cut "24.0".
        limit = text.rfind("\n") + 1
        # OpenMetrics ends with "# EOF", which must be the last line. Only
        # the tail is checked: searching a 70 KB page for a short needle
        # costs as much as reading every field we want.
        raw_tail = text[-64:]
        tail = raw_tail.rstrip()
        if tail.endswith("# EOF"):
            limit = len(text) - len(raw_tail) + len(tail) - len("# EOF")
        self.limit = limit
        self._cache: dict[str, list[Sample]] = {}

    def samples(self, name: str) -> list[Sample]:
        """Every well-formed sample line named exactly *name*, in page order."""
        found = self._cache.get(name)
        if found is not None:
            return found
        memo = self.memo
        if memo is not None and name in memo.hints:
            found = self._read_group(name, memo.hints[name])
        if found is None:
            found = self._scan(name)
        self._cache[name] = found
        return found

    def _starts_line(self, pos: int, name: str) -> bool:
        """True when the line at *pos* is a sample of exactly *name*."""
        n = pos + len(name)
        # The character after the name must end it: "waiting" must not
        # match "waiting_by_reason".
        return n < self.limit and self.text[n] in "{ \t" and self.text.startswith(name, pos)

    def _parse_at(self, pos: int, end: int, name: str) -> Sample | None:
        line = self.text[pos:end]
        memo = self.memo
        if memo is None:
            return _parse_line(line.rstrip("\r"), len(name))
        lines = memo.lines
        if line in lines:
            return lines[line]
        if len(lines) >= ScanMemo.MAX_LINES:
            lines.clear()
        sample = lines[line] = _parse_line(line.rstrip("\r"), len(name))
        return sample

    def _scan(self, name: str) -> list[Sample]:
        """Search the whole page; finds every line even if a server splits a family."""
        text, limit = self.text, self.limit
        needle = "\n" + name
        found: list[Sample] = []
        first = -1
        contiguous = True  # every line of the family follows the previous one
        expected = -1
        pos = 0 if text.startswith(name) else text.find(needle, 0, limit) + 1 or -1
        while pos != -1:
            end = text.find("\n", pos, limit)
            if end == -1:
                end = limit
            if self._starts_line(pos, name):
                if first == -1:
                    first = pos
                elif pos != expected:
                    contiguous = False
                expected = end + 1
                sample = self._parse_at(pos, end, name)
                if sample is not None:
                    found.append(sample)
            pos = text.find(needle, end, limit) + 1 or -1
        if self.memo is not None:
            # A family split across the page (against the format's rules, but
            # seen) is always searched fully: the group read would miss parts.
            if first != -1 and contiguous:
                self.memo.hints[name] = first
            else:
                self.memo.hints.pop(name, None)
        return found

    def _read_group(self, name: str, hint: int) -> list[Sample] | None:
        """Read the family near where it was last time; None means "search fully".

        The text format keeps all lines of one metric together, so from the
        group's first line we read on until a line of another name.
        """
        text, limit = self.text, self.limit
        lo = max(0, hint - ScanMemo.WINDOW)
        hi = min(limit, hint + ScanMemo.WINDOW)
        needle = "\n" + name
        if lo == 0 and self._starts_line(0, name):
            pos = 0
        else:
            pos = -1
            at = text.find(needle, lo, hi)
            while at != -1:
                if self._starts_line(at + 1, name):
                    pos = at + 1
                    break
                at = text.find(needle, at + 1, hi)
            if pos == -1:
                return None
            previous = text.rfind("\n", 0, pos - 1) + 1
            if self._starts_line(previous, name):
                return None  # the window began inside the group
        if self.memo is not None:
            self.memo.hints[name] = pos
        found: list[Sample] = []
        while pos < limit and self._starts_line(pos, name):
            end = text.find("\n", pos, limit)
            if end == -1:
                end = limit
            sample = self._parse_at(pos, end, name)
            if sample is not None:
                found.append(sample)
            pos = end + 1
        return found
