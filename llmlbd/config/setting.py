"""One config key: path, default, validator, doc (see settings.py for the list)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmlbd.config import validators as v

__all__ = ["Setting", "GLR", "PREFIX", "BUSY"]

GLR, PREFIX, BUSY = "global_least_request", "prefix_cache", "least_busy"


@dataclass(frozen=True)
class Setting:
    path: str
    default: Any
    validator: v.Validator
    doc: str
    unit: str = ""
    # For lb_config keys: the policies that read it (empty: every policy).
    policies: tuple[str, ...] = field(default=())
    # Other accepted spellings of the key, within the same section.
    aliases: tuple[str, ...] = field(default=())

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.path.split(".", 1)[1]
