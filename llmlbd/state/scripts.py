"""Lua scripts, one file per atomic operation in ``lua/``, loaded once and run with EVALSHA.

Each file starts with a header naming its KEYS, ARGV and return value.
`ScriptSet(client)` registers every script with redis-py, whose `Script`
object runs EVALSHA and reloads the script when the server answers NOSCRIPT
(after a restart or SCRIPT FLUSH).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["script_source", "ScriptSet", "reply_text", "explain_reply"]


def reply_text(value: Any) -> str:
    """One element of a script's reply as text, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def explain_reply(reply: Any, last_field: str, parse_last: Callable[[str], Any]) -> dict[str, Any]:
    """An index script's dry-run reply as {"choice", "reason", "candidates"}.

    Each candidate row is ``name, status, matched, load, kv, <last>``; the last
    column, which differs per index, is stored as *last_field* after *parse_last*.
    """
    if not reply[0]:
        return {"choice": None, "reason": reply_text(reply[1]), "candidates": []}
    rows = []
    for row in reply[2]:
        name, status, matched, load, kv, last = (reply_text(x) for x in row)
        rows.append(
            {
                "name": name,
                "status": status,
                "matched_blocks": int(matched),
                "load": float(load) if load else None,
                "kv_usage": float(kv) if kv else None,
                last_field: parse_last(last),
            }
        )
    return {"choice": reply_text(reply[0]), "reason": reply_text(reply[1]), "candidates": rows}


def _read(name: str) -> str:
    return resources.files("llmlbd.state").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua``, after the shared helpers of ``lua/_lib.lua``."""
    return _read("_lib") + "\n" + _read(name)


class ScriptSet:
    """Every script of llmlbd registered on one client; attribute access by file name."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._scripts: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        script = self._scripts.get(name)
        if script is None:
            script = self._client.register_script(script_source(name))
            self._scripts[name] = script
        return script
