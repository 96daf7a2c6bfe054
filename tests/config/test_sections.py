"""llmlbd/config/sections.py is generated from the settings list, current, and truthful."""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest

from llmlbd.config import config_from_dict, load_config
from llmlbd.config import sections as generated
from llmlbd.config.loader import Config
from llmlbd.config.names import POLICY_NAMES
from llmlbd.config.settings import SECTIONS, SETTINGS, Setting
from llmlbd.config.validators import OneOf
from tests.harness import ROOT

SCRIPT = ROOT / "scripts" / "gen_config_sections.py"
EXAMPLES = sorted((ROOT / "etc").rglob("*.yaml"))


def generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_sections", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(generated))


def declared_type(setting: Setting) -> Any:
    """The type a setting's validator promises: its return annotation, or a Literal."""
    if isinstance(setting.validator, OneOf):
        return Literal[setting.validator.choices]
    module = __import__(setting.validator.__module__, fromlist=["_"])
    return typing.get_type_hints(setting.validator, vars(module))["return"]


def conforms(value: Any, expected: Any) -> bool:
    """isinstance for the annotations sections.py uses (bool is not an int here)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if expected is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin in (Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items()
        )
    if expected in (int, float):
        return type(value) is expected
    return isinstance(value, expected)


def section_type(section: str) -> type:
    return generated.SECTION_TYPES[section]


def test_generated_file_is_up_to_date() -> None:
    """Fails after a setting changes until `python scripts/gen_config_sections.py` is run."""
    current = (ROOT / "llmlbd" / "config" / "sections.py").read_text(encoding="utf-8")
    assert current == generator().render(), (
        "llmlbd/config/sections.py is out of date: run python scripts/gen_config_sections.py"
    )


@pytest.mark.parametrize("section", list(SECTIONS))
def test_each_section_has_exactly_its_settings_with_their_validators_types(section: str) -> None:
    """Names and types match the settings list, whatever the generated text looks like."""
    expected = {s.key: declared_type(s) for s in SETTINGS if s.section == section}
    assert field_types(section_type(section)) == expected


def test_each_policy_view_has_the_common_keys_and_its_own() -> None:
    """PrefixCacheLbConfig has the keys every policy reads plus prefix_cache's, and so on;
    LbConfigSection, the type the loader builds, is every one of these views."""
    lb = [s for s in SETTINGS if s.section == "lb_config"]
    policies = {policy for s in lb for policy in s.policies}
    assert policies and policies <= set(POLICY_NAMES)
    for policy in policies:
        view = getattr(generated, "".join(p.title() for p in policy.split("_")) + "LbConfig")
        keys = {s.key for s in lb if not s.policies or policy in s.policies}
        assert set(field_types(view)) == keys
        assert issubclass(generated.LbConfigSection, view)


def test_config_attributes_are_the_section_types() -> None:
    """The loader hands out the generated types, not an untyped attribute bag."""
    config = load_config(None)
    assert isinstance(config, Config)
    for section in SECTIONS:
        assert type(getattr(config, section)) is section_type(section)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.path)
def test_every_default_has_its_declared_type(setting: Setting) -> None:
    """The validators' return annotations are honest for the defaults the loader fills in."""
    value = getattr(getattr(load_config(None), setting.section), setting.key)
    assert conforms(value, field_types(section_type(setting.section))[setting.key]), value


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_configs_load_into_their_declared_types(path: Path) -> None:
    """Every value of every shipped example, explicit or default, has its field's type."""
    config = load_config(path)
    for section in SECTIONS:
        values = dataclasses.asdict(getattr(config, section))
        for key, expected in field_types(section_type(section)).items():
            assert conforms(values[key], expected), f"{section}.{key} = {values[key]!r}"


def test_converted_values_and_overrides_keep_their_types() -> None:
    """Sizes become ints, whole numbers given for floats become floats, presets expand."""
    config = config_from_dict(
        {
            "lb_policy": "prefix_cache",
            "server": {"max_body_bytes": "1MiB", "connect_timeout_s": 3},
            "lb_config": {"scorerWeights": "gie-v1"},
        }
    ).with_overrides(server__read_timeout_s=7)
    assert config.server.max_body_bytes == 1024 * 1024
    assert type(config.server.connect_timeout_s) is float
    assert type(config.server.read_timeout_s) is float
    assert config.lb_config.scorerWeights == {
        "prefix": 3.0,
        "queue": 2.0,
        "kvCache": 2.0,
        "inflight": 0.0,
    }
