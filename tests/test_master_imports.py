"""The pre-fork rule as a rule of the tree: the gunicorn master never imports worker code
or a client library (see llmlbd/server/master/__init__.py for why)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import llmlbd.server.master

FORBIDDEN = ("llmlbd.server.worker", "urllib3", "redis", "requests", "http.client")


def _master_modules() -> list[str]:
    """Every module of the master package, found on disk so a new one is covered too."""
    package = llmlbd.server.master
    found = [m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".")]
    return [package.__name__, *found]


def _imported_after(modules: list[str]) -> list[str]:
    """Import *modules* in a fresh interpreter and list the forbidden ones that came along."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = {FORBIDDEN!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if any(m == b or m.startswith(b + '.') for b in bad))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_the_master_package_has_the_modules_the_rule_covers():
    assert {"llmlbd.server.master.app", "llmlbd.server.master.cli"} <= set(_master_modules())


def test_master_modules_import_no_worker_code_and_no_client_library():
    modules = [
        "llmlbd.cli",
        *_master_modules(),
        "llmlbd.config",
        "llmlbd.logs",
        "llmlbd.embedded",
        "llmlbd.server.parse",
        "llmlbd.server.responses",
    ]
    assert _imported_after(modules) == []


def test_the_check_sees_a_forbidden_import():
    """The probe itself must notice a worker module, or the test above could never fail."""
    assert "llmlbd.server.worker.http1" in _imported_after(["llmlbd.server.worker.http1"])
