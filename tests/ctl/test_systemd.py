"""The systemd units pass `systemd-analyze verify` (Debian/Ubuntu package: systemd)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.harness import ROOT

UNITS = ["llmlbd.service", "llmlbd-collector.service"]
INSTALLED = "/opt/llmlbd/venv/bin/"


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies(unit, tmp_path):
    """systemd-analyze verify finds no error; the install path of the binaries is
    replaced by this interpreter's, since verify checks that ExecStart is executable."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # The units exist either way; what is missing is the checking tool, which
        # scripts/install (and so .ci/run) installs wherever it runs as root with apt.
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    source = ROOT / "systemd" / unit
    text = source.read_text()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("llmlbd", "llmlbctl"):
        (bindir / tool).symlink_to(sys.executable)
    (tmp_path / unit).write_text(text.replace(INSTALLED, f"{bindir}/"))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and not problems, "\n".join(problems)


def test_proxy_unit_has_the_operator_contract():
    """Type=notify, reload by HUP, mixed kill mode, runtime dir, dedicated user, hardening."""
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in (ROOT / "systemd" / "llmlbd.service").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["Type"] == "notify"
    assert lines["ExecReload"] == "/bin/kill -s HUP $MAINPID"
    assert lines["KillMode"] == "mixed"
    assert lines["RuntimeDirectory"] == "llmlbd"
    assert lines["User"] == "llmlbd"
    assert lines["ProtectSystem"] == "strict" and lines["NoNewPrivileges"] == "yes"
    assert lines["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert lines["ExecStart"].startswith(INSTALLED + "llmlbd start")
