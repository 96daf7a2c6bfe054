"""The state layer's prefix parameters default to the config's settings (one place)."""

from __future__ import annotations

import dataclasses

import pytest

from llmlbd.config.loader import config_from_dict
from llmlbd.state.precise import PreciseParams
from llmlbd.state.prefix import PrefixParams

# Parameter -> the lb_config key it is read from (llmlbd/policy/profiles/prefix_*.py).
SHARED = {
    "min_match_blocks": "minMatchBlocks",
    "max_load_gap": "maxLoadGap",
    "max_load_ratio": "maxLoadRatio",
    "max_kv_usage": "maxKvUsage",
}


@pytest.mark.parametrize(
    ("params", "keys"),
    [
        (
            PrefixParams,
            {
                **SHARED,
                "entries_per_backend": "maxEntriesPerBackend",
                "mode": "scoring",
                "shared": "sharedPrefix",
            },
        ),
        (PreciseParams, {**SHARED, "count_offloaded": "countOffloaded"}),
    ],
)
def test_defaults_are_the_configs(params, keys) -> None:
    """A default config and the parameters built with no arguments agree on every key."""
    lb = config_from_dict(
        {"lb_policy": "prefix_cache", "backends": [{"url": "http://127.0.0.1:9000"}]}
    ).lb_config
    defaults = {f.name: f.default for f in dataclasses.fields(params)}
    assert {name: defaults[name] for name in keys} == {
        name: getattr(lb, key) for name, key in keys.items()
    }
