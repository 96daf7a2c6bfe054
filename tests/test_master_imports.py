"""The gunicorn master must not import HTTP or Redis clients (see llmlbd/server/app.py)."""

from __future__ import annotations

import subprocess
import sys


def test_master_side_modules_import_no_client_library():
    """urllib3 and redis-py keep direct references to ssl.SSLContext; imported before
    gevent patches a worker, they would block its event loop on TLS handshakes."""
    code = (
        "import sys\n"
        "import llmlbd.cli, llmlbd.server.cli, llmlbd.server.app, llmlbd.server.children\n"
        "import llmlbd.config, llmlbd.logs, llmlbd.embedded\n"
        "bad = [m for m in ('urllib3', 'redis', 'requests', 'http.client') if m in sys.modules]\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
