"""Turn one /metrics page into the fields of a backend's hash (pure: text in, strings out).

`read_metrics(text, plan)` returns the fields it found, as the strings the
hash stores, and the fields it did not find (the publisher deletes those, so
they read as unknown rather than as a stale or zero value). Nothing here
raises on a bad page: a broken or absent family only leaves its fields out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from collector.exposition import Page, Sample, ScanMemo
from collector.sources import AGGREGATION, LIST_FIELDS, Plan, Source
from llmlbd.state import backend_fields as F

__all__ = ["Reading", "read_metrics", "read_page", "format_number", "lora_series"]


class PageLike(Protocol):
    def samples(self, name: str) -> list[Sample]: ...


# The label pairs of a LoRA info family that list adapters.
_LORA_LIST_FIELDS = (F.LORA_RUNNING, F.LORA_WAITING)


@dataclass
class Reading:
    values: dict[str, str] = field(default_factory=dict)  # field -> stored text
    missing: list[str] = field(default_factory=list)  # fields with no source on the page
    used: dict[str, str] = field(default_factory=dict)  # field -> source text that supplied it

    @property
    def empty(self) -> bool:
        return not self.values


def format_number(value: float) -> str:
    """Decimal text as stored in the hash: "24", "0.413721", never "2.4e+01"."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _finite(samples: Iterable[Sample]) -> list[float]:
    return [s.value for s in samples if math.isfinite(s.value)]


def _label_numbers(samples: Iterable[Sample], label: str) -> list[float]:
    out = []
    for s in samples:
        try:
            number = float(s.labels[label])  # "None" or a missing label: skip the series
        except (KeyError, ValueError):
            continue
        if math.isfinite(number):
            out.append(number)
    return out


def lora_series(samples: list[Sample], list_labels: Iterable[str]) -> Sample | None:
    """The current series of a LoRA info family.

    Each label combination ever seen stays on the page with the time it was
    last current as its value, so the largest value wins. Series whose
    adapter labels are all empty are skipped (an idle server keeps its last
    set of adapters, as the inference extension does) unless none has any.
    """
    labels = tuple(list_labels)
    best: Sample | None = None
    best_empty: Sample | None = None
    for s in samples:
        if not math.isfinite(s.value):
            continue
        if any(s.labels.get(name) for name in labels):
            if best is None or s.value > best.value:
                best = s
        elif best_empty is None or s.value > best_empty.value:
            best_empty = s
    return best if best is not None else best_empty


def _adapters(text: str) -> str:
    return ",".join(name.strip() for name in text.split(",") if name.strip())


def _value(fname: str, source: Source, samples: list[Sample], plan: Plan) -> str | None:
    """Combine the matching series of one source into the field's stored text."""
    rule = AGGREGATION[fname]
    if rule == "lora":
        if source.label is None:  # a plain gauge (SGLang's slot count) for max_lora
            values = _finite(samples)
            return format_number(max(values)) if values else None
        list_labels = [
            s.label
            for f in _LORA_LIST_FIELDS
            for s in plan.sources[f]
            if s.name == source.name and s.label
        ]
        chosen = lora_series(samples, list_labels or [source.label])
        if chosen is None or source.label not in chosen.labels:
            return None
        text = chosen.labels[source.label]
        if fname in LIST_FIELDS:
            return _adapters(text)
        try:
            return format_number(float(text))
        except ValueError:
            return None
    values = _label_numbers(samples, source.label) if source.label else _finite(samples)
    if not values:
        return None
    if rule == "sum":
        return format_number(sum(values))
    if rule == "mean":
        mean = sum(values) / len(values)
        return format_number(min(1.0, max(0.0, mean)) if fname == F.KV_USAGE else mean)
    return format_number(max(values))


def _lookup(page: PageLike, source: Source) -> list[Sample]:
    samples = page.samples(source.name)
    if not samples and source.loose_total:
        # OpenMetrics names a counter's family without "_total" and its
        # sample with it; some exporters (TGI) never add it. Accept either.
        if source.name.endswith("_total"):
            samples = page.samples(source.name[:-6])
        else:
            samples = page.samples(source.name + "_total")
    if source.selector:
        samples = [s for s in samples if source.matches(s.labels)]
    return samples


def read_metrics(
    text: str, plan: Plan, memo: ScanMemo | None = None, learned: dict[str, Source] | None = None
) -> Reading:
    """Every metric field *plan* can fill from *text*.

    *memo* and *learned* (both per backend, kept between scrapes) only make
    the next page faster: *learned* remembers which source filled each field
    last time so it is tried first.
    """
    return read_page(Page(text, memo), plan, learned)


def read_page(page: PageLike, plan: Plan, learned: dict[str, Source] | None = None) -> Reading:
    """`read_metrics` on anything with ``samples(name)`` (the benchmark feeds a full parse)."""
    reading = Reading()
    for fname, sources in plan.sources.items():
        ordered = sources
        if learned is not None and fname in learned:
            first = learned[fname]
            ordered = (first, *(s for s in sources if s is not first))
        for source in ordered:
            samples = _lookup(page, source)
            if not samples:
                continue
            value = _value(fname, source, samples, plan)
            if value is None:
                continue
            reading.values[fname] = value
            reading.used[fname] = source.text
            if learned is not None:
                learned[fname] = source
            break
        else:
            reading.missing.append(fname)
            if learned is not None:
                learned.pop(fname, None)
    return reading
