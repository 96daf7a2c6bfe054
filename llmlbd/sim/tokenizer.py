"""A deterministic stand-in for a real tokenizer, and the chat template.

The simulator cannot ship a real vocabulary, but prefix caching needs token
ids that are stable for a given text and shared by texts with a common
prefix. Rule: a token is an optional single leading space plus up to six
word characters, or one punctuation character, or a run of other
whitespace. On English prose that gives about 4.5 characters (1.5 tokens
per word), close to the usual "a token is about four characters" rule.
An id is the CRC-32 of the token text folded into the vocabulary size, so
the same text gives the same ids in every process.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

VOCAB_SIZE = 128_256  # Llama 3's vocabulary size, so ids look plausible

_PIECE = re.compile(r"<\|[a-z_]+\|>| ?\w{1,6}| ?[^\w\s]|\s+")

# A stable piece -> id map is all /detokenize can invert; ids never seen in this
# process decode to a placeholder.
_seen: dict[int, str] = {}


@lru_cache(maxsize=65_536)
def _piece_id(piece: str) -> int:
    token_id = zlib.crc32(piece.encode()) % VOCAB_SIZE
    _seen.setdefault(token_id, piece)
    return token_id


def tokenize(text: str) -> list[int]:
    return [_piece_id(piece) for piece in _PIECE.findall(text)]


def pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


def detokenize(token_ids: list[int]) -> str:
    return "".join(_seen.get(token_id, f"<{token_id}>") for token_id in token_ids)


def render_chat(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render chat messages with a Llama-3-like template.

    The markers matter only because they cost tokens and keep messages apart,
    as a real template does; content parts other than text (images, audio)
    render as a fixed marker per part.
    """
    out = ["<|begin_of_text|>"]
    for message in messages:
        out.append(f"<|start_header_id|>{message.get('role', 'user')}<|end_header_id|>\n\n")
        out.append(_content_text(message.get("content")))
        out.append("<|eot_id|>")
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def _content_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                parts.append(f"<|{part.get('type', 'media')}|>")
        return "".join(parts)
    return str(content)
