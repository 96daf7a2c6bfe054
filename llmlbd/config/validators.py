"""Validators: pure functions that return the converted value or raise ValueError.

The message of a ValueError says what was expected and what was found; the
loader prefixes it with the file, line and key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeGuard
from urllib.parse import urlsplit

Validator = Callable[[Any], Any]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
}


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return value


def non_negative_int(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def optional_positive_int(value: Any) -> int | None:
    return None if value is None else positive_int(value)


def positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a number > 0, got {value!r}")
    return float(value)


def non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return float(value)


def fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def optional_boolean(value: Any) -> bool | None:
    """true / false or unset"""
    return None if value is None else boolean(value)


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def optional_string(value: Any) -> str | None:
    return None if value is None else string(value)


def string_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return list(value)


def mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {value!r}")
    return dict(value)


def byte_size(value: Any) -> int:
    """A size in bytes: a whole number, or a string such as "10MiB" or "512KB"."""
    if _is_int(value) and value > 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            number, unit = match.groups()
            size = int(float(number) * _SIZE_UNITS[(unit or "").lower()])
            if size > 0:
                return size
    raise ValueError(f'expected a size in bytes such as 10485760 or "10MiB", got {value!r}')


def host_port(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = value.rpartition(":")[2]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected a port from 0 to 65535 in HOST:PORT, got {value!r}")
    return value


def bind_address(value: Any) -> str:
    if isinstance(value, str) and value.startswith("unix:"):
        return value
    return host_port(value)


def http_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    try:
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    return value.rstrip("/")


def redis_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {value!r}")
    return value


class OneOf:
    """A validator accepting one of a few strings; `choices` gives the sections' Literal type."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        # The reference docs describe a validator by the first line of its docstring.
        self.__doc__ = f"one of {', '.join(choices)}"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        return value


def one_of(*choices: str) -> OneOf:
    return OneOf(*choices)
