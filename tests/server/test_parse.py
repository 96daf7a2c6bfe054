"""Request parsing as data: each tests/data/requests/<case>.json holds a request and its result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlbd.errors import BadRequest
from llmlbd.server.parse import parse_request

CASES = sorted((Path(__file__).parent.parent / "data" / "requests").glob("*.json"))


@pytest.mark.parametrize("case_path", CASES, ids=lambda p: p.stem)
def test_request_case(case_path):
    """The parsed fields (or the BadRequest message) match the case's expectation."""
    case = json.loads(case_path.read_text())
    request = case["request"]
    body = bytes.fromhex(request["body_hex"]) if "body_hex" in request else request["body"].encode()
    args = ("rid", request.get("method", "POST"), request["path"], request["headers"], body)
    if "error" in case:
        with pytest.raises(BadRequest) as info:
            parse_request(*args)
        assert case["error"] in info.value.message
        assert info.value.status == 400
        return
    parsed = parse_request(*args)
    for field, expected in case["expect"].items():
        assert getattr(parsed, field) == expected, field


def test_there_are_cases():
    assert len(CASES) >= 10
