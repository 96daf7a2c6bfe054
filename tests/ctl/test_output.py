"""The small pure helpers of llmlbctl's output."""

from __future__ import annotations

import pytest

from llmlbd.config.cli import redact
from llmlbd.ctl.context import redact_url
from llmlbd.ctl.output import fmt_age, fmt_bytes, fmt_list, fmt_pct, table


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
        ("redis://user:secret@10.0.0.5:6379/0", "redis://user:***@10.0.0.5:6379/0"),
        ("rediss://:secret@host/1", "rediss://:***@host/1"),
        ("unix:///run/llmlbd/redis/redis.sock", "unix:///run/llmlbd/redis/redis.sock"),
        (None, None),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_nested_config():
    data = {
        "redis": {"password": "x", "url": "redis://u:x@h:1/0"},
        "lb_config": {"password": None},
        "backends": [{"url": "http://a:b@h:8000"}],
    }
    assert redact(data) == {
        "redis": {"password": "***", "url": "redis://u:***@h:1/0"},
        "lb_config": {"password": None},
        "backends": [{"url": "http://a:***@h:8000"}],
    }


@pytest.mark.parametrize(
    "ms, text",
    [
        (None, "-"),
        (0, "0ms"),
        (850, "850ms"),
        (2400, "2.4s"),
        (190_000, "3m10s"),
        (18_120_000, "5h02m"),
        (-1500, "-1.5s"),
    ],
)
def test_fmt_age(ms, text):
    assert fmt_age(ms) == text


def test_small_formats():
    assert fmt_pct(0.415) == "42%" and fmt_pct(None) == "-"
    assert fmt_list(["a", "b", "c", "d"]) == "a,b,c,+1" and fmt_list([]) == "-"
    assert fmt_bytes(512) == "512 B" and fmt_bytes(3 * 1024 * 1024) == "3.0 MiB"


def test_table_aligns_text_left_and_numbers_right():
    assert table(["NAME", "N"], [["a", 1], ["long-name", 100], ["c", None]]).splitlines() == [
        "NAME         N",
        "a            1",
        "long-name  100",
        "c            -",
    ]
