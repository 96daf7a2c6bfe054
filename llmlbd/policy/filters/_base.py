"""Helpers shared by the filters: predicate filters and the "least" bucket rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llmlbd.policy.framework import BackendState, FilterResult

__all__ = ["by_predicate", "least_bucket"]


def by_predicate(
    candidates: Sequence[BackendState], why_not: Callable[[BackendState], str | None]
) -> FilterResult:
    """Keep each candidate for which *why_not* returns None; record the reasons of the rest."""
    kept: list[BackendState] = []
    removed: dict[str, str] = {}
    for state in candidates:
        reason = why_not(state)
        if reason is None:
            kept.append(state)
        else:
            removed[state.name] = reason
    return FilterResult(kept, removed)


def least_bucket(
    candidates: Sequence[BackendState],
    value: Callable[[BackendState], float],
    integer: bool,
    label: str,
) -> FilterResult:
    """Keep the first bucket: ``min <= x <= min + (max - min) / N``, N = len(candidates).

    With *integer*, the width uses integer division (as the inference-extension
    does for queue lengths), so a spread smaller than N keeps only the minimum.
    """
    if not candidates:
        return FilterResult([])
    values = {state.name: value(state) for state in candidates}
    low, high = min(values.values()), max(values.values())
    ceiling: float
    if integer:
        ceiling = int(low) + (int(high) - int(low)) // len(candidates)
    else:
        ceiling = low + (high - low) / len(candidates)
    return by_predicate(
        candidates,
        lambda s: (
            None
            if low <= values[s.name] <= ceiling
            else f"{label} {values[s.name]:g} > {ceiling:g} "
            f"(min {low:g} + (max {high:g} - min) / {len(candidates)})"
        ),
    )
