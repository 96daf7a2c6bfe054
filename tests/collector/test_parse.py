"""The metrics reader, driven by the table in data/parse_cases.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.exposition import Page, ScanMemo, parse_labels
from collector.parse import format_number, read_metrics
from collector.sources import build_plan, parse_source

DATA = Path(__file__).parent / "data"
CASES = yaml.safe_load((DATA / "parse_cases.yaml").read_text())


def _text(case: dict) -> str:
    if "page" in case:
        return (DATA / case["page"]).read_text()
    return case["text"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case):
    """Each page yields exactly the expected fields, and reports the expected ones missing."""
    reading = read_metrics(_text(case), build_plan(case.get("metric_map")))
    for field, value in (case.get("expect") or {}).items():
        assert reading.values.get(field) == value, field
    for field in case.get("missing") or []:
        assert field not in reading.values
        assert field in reading.missing
    assert set(reading.values).isdisjoint(reading.missing)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_memo_gives_same_result(case):
    """Reading with the per-backend memo (hints, line cache, learned sources) changes no result."""
    plan = build_plan(case.get("metric_map"))
    text = _text(case)
    memo, learned = ScanMemo(), {}
    fresh = read_metrics(text, plan)
    for _ in range(3):
        again = read_metrics(text, plan, memo, learned)
        assert again.values == fresh.values
        assert sorted(again.missing) == sorted(fresh.missing)


def test_memo_survives_layout_changes():
    """Pages whose lines move (new LoRA series, longer values) read the same with or without memo."""
    base = (DATA / "vllm_v1_0.33.txt").read_text()
    plan = build_plan()
    memo, learned = ScanMemo(), {}
    read_metrics(base, plan, memo, learned)
    extra = "".join(
        f'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="a{i}",'
        f'waiting_lora_adapters="a{i}"}} 1.9e+09\n'
        for i in range(200)
    )
    variants = [
        base.replace("} 24.0\n", "} 124.0\n", 1),
        base.replace("# HELP vllm:lora_requests_info", extra + "# HELP vllm:lora_requests_info"),
        base.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "# HELP x y\n" * 5000 + base,
        base,
    ]
    for text in variants:
        assert read_metrics(text, plan, memo, learned).values == read_metrics(text, plan).values


def test_prometheus_client_agrees_on_the_real_page():
    """Cross-check against prometheus_client's full parser on the real 0.33 page."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (DATA / "vllm_v1_0.33.txt").read_text()
    page = Page(text)
    checked = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (
                "vllm:num_requests_running",
                "vllm:kv_cache_usage_perc",
                "vllm:prefix_cache_hits_total",
                "vllm:lora_requests_info",
                "vllm:cache_config_info",
            ):
                ours = [s for s in page.samples(sample.name) if s.labels == sample.labels]
                assert len(ours) == 1 and ours[0].value == sample.value
                checked += 1
    assert checked == 8


class TestLabels:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ('a="1"}', {"a": "1"}),
            ('a="1",b="2",}', {"a": "1", "b": "2"}),
            (' a = "x" , b="" }', {"a": "x", "b": ""}),
            (
                r'a="q\"uote",b="back\\slash",c="new\nline"}',
                {"a": 'q"uote', "b": "back\\slash", "c": "new\nline"},
            ),
            ('a="{,}",b="="}', {"a": "{,}", "b": "="}),
            (r'a="ends with \\"}', {"a": "ends with \\"}),
            ("}", {}),
        ],
    )
    def test_parses(self, text, expected):
        """Label sets with escapes and separators inside values parse exactly."""
        labels, end = parse_labels(text, 0)
        assert labels == expected and text[end - 1] == "}"

    @pytest.mark.parametrize("text", ['a="1"', "a=1}", 'a="1', "a", r'a="x\"}'])
    def test_rejects(self, text):
        """Cut or unquoted label sets raise ValueError (the line is then skipped)."""
        with pytest.raises(ValueError):
            parse_labels(text, 0)


@pytest.mark.parametrize(
    "value, text",
    [
        (24.0, "24"),
        (0.0, "0"),
        (0.41372052207403, "0.413721"),
        (3.280442e6, "3280442"),
        (1e20, "100000000000000000000"),
        (-2.5, "-2.5"),
        (1e-9, "0"),
        (0.5, "0.5"),
    ],
)
def test_format_number(value, text):
    """Hash numbers are plain decimals, never exponent notation."""
    assert format_number(value) == text


class TestSources:
    @pytest.mark.parametrize(
        "spec, name, selector, label",
        [
            ("queue_len", "queue_len", (), None),
            ('queue_len{engine="0"}', "queue_len", (("engine", "0"),), None),
            ("vllm:cache_config_info@block_size", "vllm:cache_config_info", (), "block_size"),
            ('x{b="2",a="1"} @ lbl', "x", (("a", "1"), ("b", "2")), "lbl"),
        ],
    )
    def test_parse(self, spec, name, selector, label):
        """metric_map entries are a selector and an optional @label."""
        source = parse_source(spec)
        assert (source.name, source.selector, source.label) == (name, selector, label)

    @pytest.mark.parametrize("spec", ["", "a b", "x{a=1}", "x@", 'x{a="1"}y', 3])
    def test_parse_rejects(self, spec):
        with pytest.raises(ValueError):
            parse_source(spec)

    def test_unknown_field_rejected(self):
        """A metric_map key that is not a metric field is a config error naming it."""
        with pytest.raises(ValueError, match=r"metric_map\.queue"):
            build_plan({"queue": "x"})


_LABEL_NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@settings(max_examples=200, deadline=None)
@given(
    labels=st.dictionaries(_LABEL_NAME, st.text(max_size=20), max_size=6),
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    noise=st.lists(st.text(alphabet=' {}",=\\#abc_:\n', max_size=30), max_size=5),
)
def test_rendered_samples_read_back(labels, value, noise):
    """Any label values, escaped as the exposition format says, read back exactly, amid junk lines."""
    rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    line = f"vllm:num_requests_running{{{rendered}}} {value!r}\n"
    junk = "".join(n.replace("\n", " ") + "\n" for n in noise if not n.startswith("vllm:"))
    page = Page(junk + line + junk)
    assert page.samples("vllm:num_requests_running") == [(labels, float(repr(value)))]
