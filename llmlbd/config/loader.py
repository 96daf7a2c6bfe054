"""Load and validate a YAML config; every error names the file, line and key."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from llmlbd.config import validators as v
from llmlbd.config.kv_events import KVEventsSource, parse_kv_events
from llmlbd.config.names import canonical_policy_name, policy_names, validate_name
from llmlbd.config.pools import POOL_KEYS, POOL_ONLY_AT_TOP, PoolMap, PoolSpec
from llmlbd.config.sections import (
    SECTION_TYPES,
    CollectorSection,
    DemoSection,
    LbConfigSection,
    LoggingSection,
    RedisSection,
    ServerSection,
)
from llmlbd.config.settings import SECTIONS, SETTINGS, by_path

__all__ = [
    "Backend",
    "Config",
    "ConfigError",
    "PoolMap",
    "PoolSpec",
    "load_config",
    "config_from_dict",
]

TOP_LEVEL = {*SECTIONS, "backends", "lb_policy", "lb_type", "pools"}


class ConfigError(Exception):
    """The config is invalid; the message names where and why."""


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    weight: float = 1.0
    kv_events: KVEventsSource | None = None  # where its KV events are published (precise index)
    # Sent as `Authorization: Bearer ...` to this backend; never printed (repr=False).
    api_key: str | None = field(default=None, repr=False, compare=False)


@dataclass
class RedisTarget:
    """Where to connect, resolved from `redis` or Higress's lb_config fields."""

    embedded: bool
    url: str | None
    mode: str
    source: str  # "redis.url", "lb_config.serviceFQDN" or "embedded"


class Config:
    def __init__(
        self,
        sections: dict[str, Any],
        backends: list[Backend],
        lb_policy: str,
        path: str | None,
        explicit: set[str],
        pools: list[PoolSpec] | None = None,
    ) -> None:
        """*sections* maps each name in SECTIONS to its instance of SECTION_TYPES; *pools*
        the file's `pools:` list (None: the single-pool file)."""
        self.server: ServerSection = sections["server"]
        self.redis: RedisSection = sections["redis"]
        self.lb_config: LbConfigSection = sections["lb_config"]
        self.collector: CollectorSection = sections["collector"]
        self.logging: LoggingSection = sections["logging"]
        self.demo: DemoSection = sections["demo"]
        self.backends = backends
        self.lb_policy = lb_policy
        self.path = path
        # Dotted paths the file set explicitly (the rest are defaults).
        self.explicit = explicit
        self._pools = pools

    @property
    def multi_pool(self) -> bool:
        """Did the file list `pools:`? (False: the single-pool, Higress-shaped file.)"""
        return self._pools is not None

    @property
    def pools(self) -> list[PoolSpec]:
        """Every pool, in file order. The single-pool file is one pool named `server.pool`
        that takes every model, built from the live top-level values (which `llmlbd start`
        may still change: demo backends, overrides)."""
        if self._pools is not None:
            return self._pools
        return [
            PoolSpec(
                self.server.pool, self.backends, self.lb_policy, self.lb_config, (), default=True
            )
        ]

    def pool_map(self) -> PoolMap:
        return PoolMap(self.pools)

    def all_backends(self) -> list[Backend]:
        """Every pool's seed backends, each name once: a name is one server in every pool."""
        seen: dict[str, Backend] = {}
        for pool in self.pools:
            for backend in pool.backends:
                seen.setdefault(backend.name, backend)
        return list(seen.values())

    @property
    def uses_demo_backends(self) -> bool:
        """`llmlbd start` runs simulated backends: a single-pool file without backends."""
        return not self.multi_pool and not self.backends

    def redis_target(self) -> RedisTarget:
        r, lb = self.redis, self.lb_config
        if r.embedded:
            return RedisTarget(True, None, "standalone", "embedded")
        if r.url or r.mode == "sentinel":
            return RedisTarget(False, r.url, r.mode, "redis.url")
        if lb.serviceFQDN:
            auth = ""
            if lb.username or lb.password:
                auth = f"{quote(lb.username or '', safe='')}:{quote(lb.password or '', safe='')}@"
            url = f"redis://{auth}{lb.serviceFQDN}:{lb.servicePort}/{lb.database}"
            return RedisTarget(False, url, "standalone", "lb_config.serviceFQDN")
        return RedisTarget(True, None, "standalone", "embedded")

    def to_dict(self) -> dict[str, Any]:
        """Every value (defaults included), in the file's shape: `llmlbd config show`."""
        data: dict[str, Any] = {name: asdict(getattr(self, name)) for name in SECTIONS}
        # Keys of other policies would not validate under this one.
        data["lb_config"] = {
            key: value for key, value in data["lb_config"].items() if _applies(key, self.lb_policy)
        }
        data["lb_policy"] = self.lb_policy
        if self._pools is None:
            data["backends"] = _backends_dict(self.backends)
            return data
        del data["server"]["pool"]  # each pool names itself
        data["pools"] = [
            {
                "name": pool.name,
                "models": list(pool.models),
                "default": pool.default,
                "lb_policy": pool.lb_policy,
                "lb_config": {
                    key: value
                    for key, value in asdict(pool.lb_config).items()
                    if key not in POOL_ONLY_AT_TOP and _applies(key, pool.lb_policy)
                },
                "backends": _backends_dict(pool.backends),
            }
            for pool in self._pools
        ]
        return data

    def with_overrides(self, **paths: Any) -> Config:
        """Apply validated overrides given as section__key=value (CLI flags)."""
        for dotted, value in paths.items():
            if value is None:
                continue
            path = dotted.replace("__", ".")
            setting = by_path(path)
            if setting is None:
                raise ConfigError(f"unknown setting {path}")
            try:
                converted = setting.validator(value)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            setattr(getattr(self, setting.section), setting.key, converted)
            self.explicit.add(path)
        return self


def _applies(key: str, lb_policy: str) -> bool:
    """Does lb_config.*key* apply under *lb_policy*? (False: another policy's key.)"""
    setting = by_path(f"lb_config.{key}")
    return not setting or not setting.policies or lb_policy in setting.policies


def _backends_dict(backends: list[Backend]) -> list[dict[str, Any]]:
    return [
        {
            "name": b.name,
            "url": b.url,
            "weight": b.weight,
            **({"kv_events": vars(b.kv_events)} if b.kv_events else {}),
        }
        for b in backends
    ]


def _lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    """Record the 1-based line of every mapping key and list item below *node*."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            out[child] = key_node.start_mark.line + 1
            _lines(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            out[child] = item.start_mark.line + 1
            _lines(item, child, out)


class _Where:
    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source, self.lines = source, lines

    def error(self, path: str, message: str) -> ConfigError:
        line = self.lines.get(path)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {path}: {message}")


def _backend_key(item: dict[str, Any], path: str, where: _Where) -> str | None:
    """backends[].api_key, or the environment variable that api_key_env names."""
    if item.get("api_key") is not None:
        if not isinstance(item["api_key"], str) or not item["api_key"]:
            raise where.error(f"{path}.api_key", "expected a non-empty string")
        return str(item["api_key"])
    variable = item.get("api_key_env")
    if variable is None:
        return None
    if not isinstance(variable, str) or not os.environ.get(variable):
        raise where.error(
            f"{path}.api_key_env", f"environment variable {variable!r} is not set or empty"
        )
    return os.environ[variable]


def _backend_name(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _load_backends(raw: Any, where: _Where, base: str = "backends") -> list[Backend]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise where.error(base, f"expected a list of {{url, name, weight}}, got {raw!r}")
    backends: list[Backend] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(raw):
        path = f"{base}[{index}]"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, dict):
            raise where.error(
                path, f"expected a URL or a mapping with url, name, weight, got {item!r}"
            )
        unknown = set(item) - {"url", "name", "weight", "kv_events", "api_key", "api_key_env"}
        if unknown:
            key = sorted(unknown)[0]
            raise where.error(
                f"{path}.{key}",
                "unknown key (expected url, name, weight, kv_events, api_key or api_key_env)",
            )
        if "url" not in item:
            raise where.error(path, "missing required key url")
        try:
            url = v.http_url(item["url"])
        except ValueError as exc:
            raise where.error(f"{path}.url", str(exc)) from None
        name = item.get("name") or _backend_name(url)
        try:
            validate_name("backend name", name)
        except ValueError as exc:
            raise where.error(f"{path}.name", str(exc)) from None
        try:
            weight = v.positive_float(item.get("weight", 1.0))
        except ValueError as exc:
            raise where.error(f"{path}.weight", str(exc)) from None
        try:
            kv_events = parse_kv_events(item.get("kv_events"))
        except ValueError as exc:
            raise where.error(f"{path}.kv_events", str(exc)) from None
        if name in seen:
            raise where.error(
                f"{path}.name", f"duplicate backend name {name!r} (also {seen[name]})"
            )
        seen[name] = path
        backends.append(Backend(name, url, weight, kv_events, _backend_key(item, path, where)))
    return backends


def _policy(raw: Any, path: str, where: _Where) -> str:
    try:
        return canonical_policy_name(raw)
    except KeyError:
        raise where.error(
            path, f"unknown policy {raw!r} (expected one of {', '.join(policy_names())})"
        ) from None


def _apply_section(
    values: dict[str, Any],
    section: str,
    raw: Any,
    path: str,
    lb_policy: str,
    where: _Where,
    explicit: set[str],
    in_pool: bool = False,
) -> None:
    """Validate the file's mapping *raw* for *section* (found at *path*) into *values*;
    record what it set in *explicit* (dotted section.key paths)."""
    if not isinstance(raw, dict):
        raise where.error(path, f"expected a mapping, got {raw!r}")
    for key, value in raw.items():
        key_path = f"{path}.{key}"
        setting = by_path(f"{section}.{key}")
        if setting is None:
            known = sorted(s.key for s in SETTINGS if s.section == section)
            raise where.error(key_path, f"unknown key (known keys: {', '.join(known)})")
        if in_pool and setting.key in POOL_ONLY_AT_TOP:
            raise where.error(
                key_path, "one Redis serves every pool: set it in the top-level lb_config"
            )
        if setting.policies and lb_policy not in setting.policies:
            raise where.error(
                key_path, f"applies to lb_policy {' or '.join(setting.policies)}, not {lb_policy}"
            )
        if setting.path in explicit:
            raise where.error(
                key_path, f"{setting.key} is set twice (once under another accepted spelling)"
            )
        try:
            values[setting.key] = setting.validator(value)
        except ValueError as exc:
            raise where.error(key_path, str(exc)) from None
        explicit.add(setting.path)


def _default(section: str, key: str) -> Any:
    declared = by_path(f"{section}.{key}")
    assert declared is not None
    default = declared.default
    return default if default is None else declared.validator(default)


def _load_pools(
    raw: Any, top: dict[str, Any], top_lb: dict[str, Any], where: _Where
) -> list[PoolSpec]:
    """The file's `pools:` list; *top_lb* holds the validated top-level lb_config values,
    which each pool inherits where they apply to its policy."""
    if not isinstance(raw, list) or not raw:
        raise where.error(
            "pools", "expected a list of pools ({name, models, backends, lb_policy, ...})"
        )
    for key in ("backends",):
        if key in top:
            raise where.error(key, "with pools:, list each pool's backends under that pool")
    if isinstance(top.get("server"), dict) and "pool" in top["server"]:
        raise where.error("server.pool", "with pools:, each pool names itself (pools[].name)")
    top_policy = _policy(top.get("lb_policy", "global_least_request"), "lb_policy", where)
    pools: list[PoolSpec] = []
    names: dict[str, str] = {}
    models_seen: dict[str, str] = {}
    servers: dict[str, tuple[str, str]] = {}  # backend name -> (url, where first listed)
    default_at: str | None = None
    for index, item in enumerate(raw):
        path = f"pools[{index}]"
        if not isinstance(item, dict):
            raise where.error(path, f"expected a mapping with name, models, backends, got {item!r}")
        for key in item:
            if key not in POOL_KEYS:
                raise where.error(
                    f"{path}.{key}", f"unknown key (expected one of {', '.join(POOL_KEYS)})"
                )
        if "name" not in item:
            raise where.error(path, "missing required key name")
        try:
            name = validate_name("pool name", item["name"])
        except ValueError as exc:
            raise where.error(f"{path}.name", str(exc)) from None
        if name in names:
            raise where.error(f"{path}.name", f"duplicate pool name {name!r} (also {names[name]})")
        names[name] = path
        models = item.get("models", [])
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise where.error(
                f"{path}.models", f"expected a list of model names or patterns, got {models!r}"
            )
        for position, model in enumerate(models):
            if model in models_seen:
                raise where.error(
                    f"{path}.models[{position}]",
                    f"{model!r} is already routed by {models_seen[model]}",
                )
            models_seen[model] = f"{path} ({name})"
        default = item.get("default", False)
        if not isinstance(default, bool):
            raise where.error(f"{path}.default", f"expected true or false, got {default!r}")
        if default:
            if default_at is not None:
                raise where.error(
                    f"{path}.default", f"only one pool can be the default (also {default_at})"
                )
            default_at = f"{path} ({name})"
        if not models and not default:
            raise where.error(
                path, f"pool {name!r} would get no request: give it models or default: true"
            )
        lb_policy = (
            _policy(item["lb_policy"], f"{path}.lb_policy", where)
            if "lb_policy" in item
            else top_policy
        )
        values = {
            key: value if _applies(key, lb_policy) else _default("lb_config", key)
            for key, value in top_lb.items()
        }
        if item.get("lb_config") is not None:
            _apply_section(
                values,
                "lb_config",
                item["lb_config"],
                f"{path}.lb_config",
                lb_policy,
                where,
                set(),
                in_pool=True,
            )
        backends = _load_backends(item.get("backends"), where, f"{path}.backends")
        for position, backend in enumerate(backends):
            other = servers.setdefault(backend.name, (backend.url, f"{path} ({name})"))
            if other[0] != backend.url:
                raise where.error(
                    f"{path}.backends[{position}].url",
                    f"backend {backend.name!r} is {other[0]} in {other[1]}: a name is one "
                    "server in every pool (logs, metrics, llmlbctl and the connection pools "
                    "key on it); give this one another name",
                )
        pools.append(
            PoolSpec(
                name,
                backends,
                lb_policy,
                SECTION_TYPES["lb_config"](**values),
                tuple(models),
                default,
            )
        )
    return pools


def config_from_dict(
    data: Any, source: str = "<config>", lines: dict[str, int] | None = None
) -> Config:
    """Validate a parsed config mapping; *lines* maps dotted paths to line numbers."""
    where = _Where(source, lines or {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise where.error(
            "(top level)", f"expected a mapping of sections, got {type(data).__name__}"
        )
    for key in data:
        if key not in TOP_LEVEL:
            raise where.error(
                str(key), f"unknown top-level key (expected one of {', '.join(sorted(TOP_LEVEL))})"
            )

    if data.get("lb_type", "endpoint") != "endpoint":
        raise where.error("lb_type", f"only 'endpoint' is supported, got {data['lb_type']!r}")

    lb_policy = _policy(data.get("lb_policy", "global_least_request"), "lb_policy", where)

    explicit: set[str] = set()
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for declared in SETTINGS:
        # Defaults pass their validator too, so that a default has the type of a set value
        # (the preset name "default" of scorerWeights becomes its weights mapping).
        values[declared.section][declared.key] = _default(declared.section, declared.key)
    for section in SECTIONS:
        raw = data.get(section)
        if raw is not None:
            _apply_section(values[section], section, raw, section, lb_policy, where, explicit)
    pools = None
    if "pools" in data:
        pools = _load_pools(data["pools"], data, values["lb_config"], where)
    sections = {name: SECTION_TYPES[name](**vals) for name, vals in values.items()}
    backends = _load_backends(data.get("backends"), where)
    return Config(
        sections, backends, lb_policy, None if source == "<config>" else source, explicit, pools
    )


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate *path*; None gives the defaults (embedded Redis, demo backends)."""
    if path is None:
        return config_from_dict({})
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    lines: dict[str, int] = {}
    if node is not None:
        _lines(node, "", lines)
    config = config_from_dict(data, source, lines)
    config.path = source
    return config
