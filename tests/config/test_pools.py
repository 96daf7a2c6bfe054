"""Several pools in one config: shape, inheritance, the model -> pool rule, and errors."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from llmlbd.config import ConfigError, config_from_dict, load_config
from llmlbd.config.pools import PoolMap

TWO_POOLS = """\
redis: {url: "redis://127.0.0.1:6379"}
lb_policy: least_busy
lb_config:
  maxRequestCount: 16
  queueThresholdCritical: 7
pools:
  - name: chat
    models: [llama-70b, "llama-*", "qwen-?b"]
    lb_policy: prefix_cache
    lb_config: {blockChars: 32}
    backends:
      - {name: a1, url: "http://10.0.0.1:8000"}
      - {name: a2, url: "http://10.0.0.2:8000", weight: 2}
  - name: embed
    models: ["*-embed*", llama-guard]
    backends: ["http://10.0.1.1:8000"]
  - name: rest
    default: true
    lb_policy: round_robin
    backends: [{name: a1, url: "http://10.0.0.1:8000"}, "http://10.0.2.1:8000"]
"""


def write(tmp_path, text: str):
    path = tmp_path / "llmlbd.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


class TestShape:
    def test_single_pool_file_is_one_default_pool(self):
        """The Higress-shaped file is one pool named server.pool that takes every model."""
        config = config_from_dict(
            {
                "server": {"pool": "fleet"},
                "lb_policy": "least_busy",
                "backends": ["http://10.0.0.1:8000"],
                "lb_config": {"maxRequestCount": 3},
            }
        )
        assert not config.multi_pool
        (pool,) = config.pools
        assert (pool.name, pool.lb_policy, pool.default, pool.models) == (
            "fleet",
            "least_busy",
            True,
            (),
        )
        assert pool.backends == config.backends
        assert pool.lb_config.maxRequestCount == 3
        assert config.pool_map().select("anything at all").name == "fleet"

    def test_single_pool_view_follows_later_changes(self):
        """`llmlbd start` fills in demo backends after loading: the pool sees them."""
        config = config_from_dict({})
        assert config.uses_demo_backends
        config.backends = config_from_dict({"backends": ["http://h:1"]}).backends
        assert [b.url for b in config.pools[0].backends] == ["http://h:1"]

    def test_pools_each_have_backends_policy_and_inherited_lb_config(self, tmp_path):
        config = load_config(write(tmp_path, TWO_POOLS))
        assert config.multi_pool and not config.uses_demo_backends
        chat, embed, rest = config.pools
        assert [p.name for p in config.pools] == ["chat", "embed", "rest"]
        assert (chat.lb_policy, embed.lb_policy, rest.lb_policy) == (
            "prefix_cache",
            "least_busy",  # the top-level lb_policy is every pool's default
            "round_robin",
        )
        assert [b.name for b in chat.backends] == ["a1", "a2"]
        assert chat.backends[1].weight == 2
        assert embed.backends[0].name == "10.0.1.1:8000"
        # One server may serve two pools (same name, same URL); its state is per pool.
        assert rest.backends[0] == chat.backends[0]
        # Keys that apply to every policy are inherited; the pool's own override.
        assert chat.lb_config.maxRequestCount == 16 and chat.lb_config.blockChars == 32
        # least_busy's key reaches the least_busy pool, not the others (default there).
        assert embed.lb_config.queueThresholdCritical == 7
        assert chat.lb_config.queueThresholdCritical != 7
        assert rest.default and not chat.default
        assert [b.name for b in config.all_backends()] == [
            "a1",
            "a2",
            "10.0.1.1:8000",
            "10.0.2.1:8000",
        ]

    def test_effective_config_reloads_as_the_same_pools(self, tmp_path):
        """config show / the collector's effective-config.yaml is itself a valid config."""
        config = load_config(write(tmp_path, TWO_POOLS))
        again = config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
        assert [(p.name, p.lb_policy, p.models, p.default) for p in again.pools] == [
            (p.name, p.lb_policy, p.models, p.default) for p in config.pools
        ]
        assert [p.backends for p in again.pools] == [p.backends for p in config.pools]
        assert again.pools[0].lb_config == config.pools[0].lb_config


class TestRule:
    @pytest.mark.parametrize(
        ("model", "pool"),
        [
            ("llama-70b", "chat"),  # exact
            ("llama-8b", "chat"),  # pattern
            ("qwen-7b", "chat"),  # ? matches one character
            ("qwen-14b", "rest"),  # ... not two: default
            ("llama-guard", "embed"),  # an exact name beats an earlier pool's pattern
            ("bge-embed-v2", "embed"),
            ("Llama-8b", "rest"),  # case-sensitive, like model names
            ("", "rest"),  # no model: the default pool
        ],
    )
    def test_exact_then_patterns_in_order_then_default(self, tmp_path, model, pool):
        pools = PoolMap(load_config(write(tmp_path, TWO_POOLS)).pools)
        assert pools.select(model).name == pool
        assert pools.select(model).name == pool  # cached answer is the same

    def test_no_default_means_no_pool(self, tmp_path):
        text = TWO_POOLS.replace("    default: true\n", "    models: [mistral]\n")
        pools = load_config(write(tmp_path, text)).pool_map()
        assert pools.select("unknown-model") is None
        assert pools.select("mistral").name == "rest"
        # A request without a model goes to the first pool when none is the default.
        assert pools.select("").name == "chat"

    def test_the_cache_stays_bounded(self, tmp_path):
        pools = load_config(write(tmp_path, TWO_POOLS)).pool_map()
        for index in range(5000):
            assert pools.select(f"llama-{index}").name == "chat"
        assert len(pools._cache) <= 1024


class TestErrors:
    @pytest.mark.parametrize(
        ("change", "expected"),
        [
            (
                ('    models: ["*-embed*", llama-guard]', "    models: [llama-70b]"),
                ":15: pools[1].models[0]: 'llama-70b' is already routed by pools[0] (chat)",
            ),
            (
                (
                    "  - name: rest\n    default: true",
                    "  - name: rest\n    default: true\n    colour: red",
                ),
                ":19: pools[2].colour: unknown key",
            ),
            (
                ("  - name: rest\n    default: true", "  - name: chat\n    default: true"),
                ":17: pools[2].name: duplicate pool name 'chat'",
            ),
            (
                ("  - name: rest\n    default: true", "  - name: 'a b'\n    default: true"),
                ":17: pools[2].name: pool name 'a b' must be",
            ),
            (
                ("    default: true\n", "    default: yes please\n"),
                ":18: pools[2].default: expected true or false",
            ),
            (("    default: true\n", ""), ":17: pools[2]: pool 'rest' would get no request"),
            (
                ("    lb_config: {blockChars: 32}", "    lb_config: {blockChars: 0}"),
                ":10: pools[0].lb_config.blockChars:",
            ),
            (
                ("    lb_config: {blockChars: 32}", "    lb_config: {serviceFQDN: r}"),
                ":10: pools[0].lb_config.serviceFQDN: one Redis serves every pool",
            ),
            (
                ("    lb_policy: round_robin", "    lb_policy: fastest"),
                ":19: pools[2].lb_policy: unknown policy 'fastest'",
            ),
            (
                (
                    "    lb_policy: round_robin",
                    "    lb_policy: round_robin\n    lb_config: {blockChars: 8}",
                ),
                ":20: pools[2].lb_config.blockChars: applies to lb_policy prefix_cache",
            ),
            (
                (
                    '      - {name: a1, url: "http://10.0.0.1:8000"}',
                    '      - {name: a1, url: "ftp://x"}',
                ),
                ":12: pools[0].backends[0].url: expected an http",
            ),
            (
                (
                    '      - {name: a2, url: "http://10.0.0.2:8000", weight: 2}',
                    '      - {name: a1, url: "http://10.0.0.2:8000"}',
                ),
                ":13: pools[0].backends[1].name: duplicate backend name 'a1'",
            ),
        ],
    )
    def test_errors_name_line_and_key(self, tmp_path, change, expected):
        old, new = change
        text = TWO_POOLS.replace(old, new)
        assert old in TWO_POOLS
        message = error_of(tmp_path, text)
        assert expected in message, message
        assert message.startswith(str(tmp_path / "llmlbd.yaml"))

    def test_one_name_is_one_server_across_pools(self, tmp_path):
        text = TWO_POOLS.replace(
            '[{name: a1, url: "http://10.0.0.1:8000"}', '[{name: a1, url: "http://10.0.0.9:8000"}'
        )
        assert (
            ":20: pools[2].backends[0].url: backend 'a1' is http://10.0.0.1:8000 in pools[0] "
            "(chat): a name is one server in every pool"
        ) in error_of(tmp_path, text)

    def test_two_defaults(self, tmp_path):
        text = TWO_POOLS.replace('    models: ["*-embed*", llama-guard]', "    default: true")
        assert (
            ":18: pools[2].default: only one pool can be the default (also pools[1] (embed))"
            in error_of(tmp_path, text)
        )

    def test_bad_models_value(self, tmp_path):
        text = TWO_POOLS.replace('["*-embed*", llama-guard]', "[llama-guard, 3]")
        assert ":15: pools[1].models: expected a list of model names" in error_of(tmp_path, text)

    def test_top_level_backends_with_pools(self, tmp_path):
        text = TWO_POOLS + 'backends: ["http://10.9.9.9:1"]\n'
        assert ":21: backends: with pools:, list each pool's backends" in error_of(tmp_path, text)

    def test_server_pool_with_pools(self, tmp_path):
        text = "server: {pool: x}\n" + TWO_POOLS
        assert ":1: server.pool: with pools:, each pool names itself" in error_of(tmp_path, text)

    @pytest.mark.parametrize("value", ["[]", "{chat: {}}", "chat"])
    def test_pools_must_be_a_non_empty_list(self, tmp_path, value):
        assert ":1: pools: expected a list of pools" in error_of(tmp_path, f"pools: {value}\n")
