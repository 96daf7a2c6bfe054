"""Bounds on a JSON request body that Python's json module does not enforce itself.

`json.loads` recurses once per nesting level (RecursionError near the
interpreter's limit, and every recursive consumer after it, such as the
prefix canonicaliser's `json.dumps`, fails even earlier) and refuses
integers over `sys.get_int_max_str_digits()` digits with a bare ValueError.
Both used to surface as 500s; here they become one BadRequest each, saying
what was wrong.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from llmlbd.errors import BadRequest

__all__ = ["MAX_DEPTH", "load_json", "deeper_than"]

# Deep enough for any real request (tool schemas nest perhaps 20 levels), far
# below the interpreter's recursion limit so that later consumers are safe too.
MAX_DEPTH = 100
_TOO_DEEP = f"the request body is nested deeper than {MAX_DEPTH} levels"
# Braces become brackets (the kind does not matter for depth, and one kind lets a
# pass peel exactly one level); every other byte but the quote is deleted.
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURAL = bytes(range(256)).translate(None, b'[]{}"')


def load_json(body: bytes) -> Any:
    """json.loads with explicit nesting and number-size limits; raises BadRequest."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        if "digits" not in str(exc):
            raise
        raise BadRequest(
            f"a number in the request body has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if deeper_than(body, MAX_DEPTH):
        raise BadRequest(_TOO_DEEP)
    return data


def deeper_than(body: bytes, limit: int) -> bool:
    """True when brackets outside strings nest deeper than *limit* (body is valid JSON).

    Every step is a bytes method (C speed): drop escaped backslashes and quotes,
    keep only brackets and quotes, drop what sits between quotes, then peel
    one level of innermost pairs per pass.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # cannot nest deeper than it has openers: the usual case
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_AS_BRACKETS, _NOT_STRUCTURAL)
    brackets = b"".join(plain.split(b'"')[::2])
    for _ in range(limit):
        if not brackets:
            return False
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            return False  # unbalanced: not valid JSON, the parser has said so already
        brackets = peeled
    return bool(brackets)
