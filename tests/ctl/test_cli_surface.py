"""The shape of the CLIs: --help everywhere, lazy imports, no gevent or gunicorn in llmlbctl."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from llmlbd.ctl import main
from tests.harness import ROOT


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group)
    paths = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


CTL_COMMANDS = command_paths(main)


def test_every_documented_command_exists():
    """The command tree is what docs/cli.md documents."""
    assert set(CTL_COMMANDS) == {
        ("status",),
        ("watch",),
        ("inspect",),
        ("inspect", "backend"),
        ("inspect", "request"),
        ("inspect", "prefix"),
        ("explain",),
        ("drain",),
        ("undrain",),
        ("backend",),
        ("backend", "add"),
        ("backend", "remove"),
        ("backend", "list"),
    }


def test_cli_doc_covers_every_command():
    """docs/cli.md has a section for every llmlbctl command and a row per exit code."""
    from llmlbd import exits

    text = (ROOT / "docs" / "cli.md").read_text()
    for path in CTL_COMMANDS:
        assert f"`{' '.join(path)}" in text or f"llmlbctl {' '.join(path)}" in text, path
    for name in ("OK", "FAILURE", "BAD_CONFIG", "NOT_FOUND", "UNHEALTHY"):
        assert f"| {getattr(exits, name)} | `{name}` |" in text
    for command in (
        "llmlbd start",
        "llmlbd collector",
        "llmlbd sim",
        "llmlbd config check",
        "llmlbd config show",
    ):
        assert command in text


@pytest.mark.parametrize("path", [(), *CTL_COMMANDS], ids=lambda p: " ".join(p) or "llmlbctl")
def test_help_works_without_config_or_redis(path, monkeypatch):
    """--help on every llmlbctl command exits 0 even with a config that cannot load."""
    monkeypatch.setenv("LLMLBD_CONFIG", "/nonexistent/llmlbd.yaml")
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("path", [("config",), ("config", "check"), ("config", "show")])
def test_llmlbd_config_help(path):
    from llmlbd.cli import main as llmlbd_main

    result = CliRunner().invoke(llmlbd_main, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_read_commands_take_json():
    """Every read command has --json."""
    for path in [
        ("status",),
        ("watch",),
        ("inspect", "backend"),
        ("inspect", "request"),
        ("inspect", "prefix"),
        ("explain",),
        ("backend", "list"),
    ]:
        command: click.Command = main
        for name in path:
            command = command.get_command(click.Context(command), name)  # type: ignore[attr-defined]
        assert "--json" in {opt for param in command.params for opt in param.opts}, path


def test_llmlbctl_never_imports_gevent_or_gunicorn():
    """Loading every llmlbctl command, running each one's --help and loading every
    policy (explain builds one) imports neither gevent nor gunicorn (fresh interpreter)."""
    paths = [list(p) for p in CTL_COMMANDS]
    script = f"""
import json, sys
from click.testing import CliRunner
from llmlbd.ctl import main
for path in {paths!r}:
    CliRunner().invoke(main, [*path, "--help"])
import llmlbd.policy.explain, llmlbd.ctl.pool, llmlbd.state.members, llmlbd.server.parse
from llmlbd.policy.registry import POLICIES, load_policy_class
for name in POLICIES:  # explain builds the configured policy
    try:
        load_policy_class(name)
    except ImportError:
        pass  # a policy still being written
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("gevent", "gunicorn"))))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_python_dash_m_runs_llmlbctl():
    out = subprocess.run(
        [sys.executable, "-m", "llmlbd.ctl", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Usage: llmlbctl" in out.stdout
