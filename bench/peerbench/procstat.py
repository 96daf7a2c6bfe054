"""CPU seconds and resident memory of a process and everything it started (Linux /proc).

Every router runs in a session of its own (``start_new_session``), so its
footprint is the processes whose session id is the leader's pid: gunicorn's
master and workers, llmlbd's embedded Redis and collector, nginx's workers.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["session_cpu_by_program", "session_cpu_seconds", "session_rss_bytes", "session_pids"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ')' is split safely.
    return raw[raw.rindex(")") + 2 :].split()


def session_pids(session: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            # fields[3] is the session id (field 6 of stat)
            if fields is not None and int(fields[3]) == session:
                pids.append(int(entry))
    return pids


def session_cpu_seconds(session: int) -> float:
    """User + system CPU of the session's live processes and of the children they reaped."""
    total = 0
    for pid in session_pids(session):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are stat fields 14-17
            total += sum(int(x) for x in fields[11:15])
    return total / _TICKS


def _program(pid: int) -> str:
    """A short name: the module of `python -m MODULE`, else the executable's base name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    # Some programs (redis-server) rewrite their title into argv[0], spaces and all.
    return Path(words[0].split()[0]).name if words else "?"


def session_cpu_by_program(session: int) -> dict[str, float]:
    """CPU seconds of the session's live processes, summed by program (see _program)."""
    totals: dict[str, float] = {}
    for pid in session_pids(session):
        fields = _stat_fields(pid)
        if fields is not None:
            name = _program(pid)
            totals[name] = totals.get(name, 0.0) + sum(int(x) for x in fields[11:15]) / _TICKS
    return totals


def session_rss_bytes(session: int) -> int:
    total = 0
    for pid in session_pids(session):
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[21]) * _PAGE  # rss (pages), stat field 24
    return total
