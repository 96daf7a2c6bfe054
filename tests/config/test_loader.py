"""The config model: defaults, Higress compatibility, and errors that name file, line and key."""

from __future__ import annotations

import textwrap

import pytest

from llmlbd.config import ConfigError, config_from_dict, load_config
from llmlbd.config.settings import SETTINGS


def write(tmp_path, text: str):
    path = tmp_path / "llmlbd.yaml"
    path.write_text(textwrap.dedent(text))
    return path


class TestDefaults:
    @pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.path)
    def test_every_default_passes_its_own_validator(self, setting):
        """A default that its validator rejects would make an empty config invalid; and
        validating a validated value changes nothing (config show output reloads as is)."""
        if setting.default is None:
            return  # optional keys: None means unset
        converted = setting.validator(setting.default)
        assert setting.validator(converted) == converted

    def test_empty_config_means_embedded_redis_and_global_least_request(self):
        """No file at all is valid: embedded Redis, default policy, no backends (demo)."""
        config = load_config(None)
        assert config.redis_target().embedded
        assert config.lb_policy == "global_least_request"
        assert config.backends == []

    def test_paths_are_unique(self):
        """Every key is declared once."""
        paths = [s.path for s in SETTINGS]
        assert len(paths) == len(set(paths))


class TestHigressCompatibility:
    def test_higress_plugin_config_is_accepted_unchanged(self, tmp_path):
        """lb_policy + lb_config with Higress's Redis fields configure the connection."""
        path = write(
            tmp_path,
            """\
            lb_policy: global_least_request
            lb_config:
              serviceFQDN: redis.static
              servicePort: 6380
              username: default
              password: "p@ss"
              timeout: 50
              database: 2
              maxRequestCount: 8
            """,
        )
        config = load_config(path)
        target = config.redis_target()
        assert not target.embedded
        assert target.url == "redis://default:p%40ss@redis.static:6380/2"
        assert config.lb_config.maxRequestCount == 8

    def test_explicit_redis_url_wins_over_higress_fields(self):
        config = config_from_dict(
            {"redis": {"url": "redis://a:1/0"}, "lb_config": {"serviceFQDN": "b"}}
        )
        assert config.redis_target().url == "redis://a:1/0"

    @pytest.mark.parametrize("alias", ["endpoint_metrics", "metrics_based"])
    def test_higress_policy_aliases(self, alias):
        assert config_from_dict({"lb_policy": alias}).lb_policy == "least_busy"

    def test_cluster_lb_type_is_refused_clearly(self):
        with pytest.raises(ConfigError, match="lb_type: only 'endpoint'"):
            config_from_dict({"lb_type": "cluster"})


BAD = [
    ("server:\n  workers: -2\n", ":2: server.workers: expected a whole number >= 1, got -2"),
    ("server:\n  bind: localhost\n", ":2: server.bind: expected HOST:PORT"),
    ("server:\n  wokers: 2\n", ":2: server.wokers: unknown key (known keys:"),
    ("serverr: {}\n", ":1: serverr: unknown top-level key"),
    ("lb_policy: fastest\n", ":1: lb_policy: unknown policy 'fastest'"),
    (
        "backends:\n  - url: http://a:1\n  - url: ftp://b\n",
        ":3: backends[1].url: expected an http:// or https:// URL",
    ),
    (
        "backends:\n  - url: http://a:1\n    name: x\n  - url: http://b:1\n    name: x\n",
        ":5: backends[1].name: duplicate backend name 'x'",
    ),
    (
        "backends:\n  - {url: 'http://a:1', weight: 0}\n",
        ":2: backends[0].weight: expected a number > 0",
    ),
    (
        "backends:\n  - {url: 'http://a:1', name: 'a b'}\n",
        ":2: backends[0].name: backend name 'a b'",
    ),
    (
        "redis:\n  url: http://r:6379\n",
        ":2: redis.url: expected a redis://, rediss:// or unix:// URL",
    ),
    ("server:\n  max_body_bytes: lots\n", ":2: server.max_body_bytes: expected a size in bytes"),
    ("server: [1, 2]\n", ":1: server: expected a mapping"),
    ("server:\n  workers: 2\n bad indent\n", ":3: invalid YAML"),
]


class TestErrors:
    @pytest.mark.parametrize(
        "text,expected", BAD, ids=[b[1].split(":")[2].strip() or "yaml" for b in BAD]
    )
    def test_error_names_file_line_and_key(self, tmp_path, text, expected):
        """Each error message starts with file:line and the dotted key, then says what is wrong."""
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(str(path))
        assert expected in str(info.value)

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError, match="cannot read the config"):
            load_config(tmp_path / "nope.yaml")

    def test_sizes_accept_units(self):
        config = config_from_dict({"server": {"max_body_bytes": "2MiB"}})
        assert config.server.max_body_bytes == 2 * 1024 * 1024

    def test_backend_name_defaults_to_host_and_port(self):
        config = config_from_dict({"backends": ["http://10.0.0.5:8000", {"url": "https://gpu1"}]})
        assert [b.name for b in config.backends] == ["10.0.0.5:8000", "gpu1:443"]
