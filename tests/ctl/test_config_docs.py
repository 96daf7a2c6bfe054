"""docs/reference/config.md is generated from llmlbd/config/settings.py and must be current."""

from __future__ import annotations

import importlib.util

from llmlbd.config.settings import SECTIONS, SETTINGS
from tests.harness import ROOT

SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOC = ROOT / "docs" / "reference" / "config.md"


def generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_is_up_to_date():
    """Fails after a setting changes until `python scripts/gen_config_docs.py` is run."""
    assert DOC.read_text(encoding="utf-8") == generator().render(), (
        "docs/reference/config.md is out of date: run python scripts/gen_config_docs.py"
    )


def test_every_key_section_and_unit_is_documented():
    text = generator().render()
    for section in SECTIONS:
        assert f"## `{section}`" in text
    for setting in SETTINGS:
        assert f"| `{setting.key}`" in text, setting.path
        for alias in setting.aliases:
            assert f"`{alias}`" in text
    assert "| milliseconds |" in text and "| seconds |" in text


def test_check_mode_detects_a_stale_file(tmp_path):
    import subprocess
    import sys

    stale = tmp_path / "config.md"
    stale.write_text("old\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--output", str(stale)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "out of date" in result.stderr
