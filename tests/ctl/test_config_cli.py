"""`llmlbd config check|show` and the example config in etc/."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from llmlbd import exits
from llmlbd.cli import main
from llmlbd.config.settings import SECTIONS
from tests.harness import ROOT

EXAMPLE = ROOT / "etc" / "llmlbd" / "llmlbd.yaml"


def run(*args: str):
    return CliRunner().invoke(main, ["config", *args])


class TestCheck:
    def test_valid_file(self, tmp_path):
        path = tmp_path / "ok.yaml"
        path.write_text("redis: {url: 'redis://10.0.0.5:6379/0'}\nbackends: ['http://h:8000']\n")
        result = run("check", str(path))
        assert result.exit_code == exits.OK
        assert result.stdout.startswith(f"OK: {path}: policy global_least_request, 1 backend(s)")

    def test_error_names_file_line_and_key_and_exits_2(self, tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_text("server:\n  bind: 0.0.0.0:8000\n  read_timeout_s: -1\n")
        result = run("check", str(path))
        assert result.exit_code == exits.BAD_CONFIG
        assert result.stderr.strip() == (
            f"Error: {path}:3: server.read_timeout_s: expected a number > 0, got -1"
        )

    def test_missing_file_exits_2(self, tmp_path):
        result = run("check", str(tmp_path / "absent.yaml"))
        assert result.exit_code == exits.BAD_CONFIG
        assert "cannot read the config" in result.stderr


class TestShow:
    def test_defaults_filled_in_and_passwords_redacted(self, tmp_path):
        path = tmp_path / "secret.yaml"
        path.write_text(
            "redis:\n  url: redis://user:hunter2@10.0.0.5:6379/0\n"
            "  password: hunter2\nlb_config:\n  password: hunter2\n"
            "backends: ['http://h:8000']\n"
        )
        result = run("show", str(path))
        assert result.exit_code == exits.OK, result.output
        assert "hunter2" not in result.stdout
        data = yaml.safe_load(result.stdout)
        assert data["redis"]["url"] == "redis://user:***@10.0.0.5:6379/0"
        assert data["redis"]["password"] == "***" and data["lb_config"]["password"] == "***"
        assert data["server"]["keepalive_s"] == 5  # a default
        assert data["server"]["workers"] is None  # unset: one per core when the proxy starts
        assert set(SECTIONS) <= set(data)
        as_json = json.loads(run("show", "--json", str(path)).stdout)
        assert as_json["redis"]["password"] == "***"

    def test_output_is_itself_a_valid_config(self, tmp_path):
        """show leaves out other policies' keys, so its output passes check."""
        from llmlbd.config.settings import SETTINGS

        for policy in ("global_least_request", "prefix_cache", "least_busy"):
            path = tmp_path / f"{policy}.yaml"
            path.write_text(f"lb_policy: {policy}\n")
            shown = tmp_path / f"{policy}-shown.yaml"
            shown.write_text(run("show", str(path)).stdout)
            assert run("check", str(shown)).exit_code == exits.OK, policy
            data = yaml.safe_load(shown.read_text())
            for setting in SETTINGS:
                if setting.section == "lb_config" and setting.policies:
                    assert (setting.key in data["lb_config"]) == (policy in setting.policies)

    def test_explicit_only(self, tmp_path):
        path = tmp_path / "small.yaml"
        path.write_text("lb_policy: round_robin\nserver: {workers: 3}\n")
        data = yaml.safe_load(run("show", "--explicit", str(path)).stdout)
        assert data == {"server": {"workers": 3}, "lb_policy": "round_robin"}

    def test_invalid_file_exits_2(self, tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_text("nonsense: 1\n")
        assert run("show", str(path)).exit_code == exits.BAD_CONFIG


class TestExampleConfig:
    def test_example_config_is_valid(self):
        """etc/llmlbd/llmlbd.yaml passes `llmlbd config check`."""
        result = run("check", str(EXAMPLE))
        assert result.exit_code == exits.OK, result.output

    def test_example_config_has_every_section(self):
        data = yaml.safe_load(EXAMPLE.read_text())
        assert set(SECTIONS) | {"backends", "lb_policy"} <= set(data)

    def test_graceful_timeout_fits_the_unit_stop_timeout(self):
        """The unit's TimeoutStopSec leaves room for the example's graceful_timeout_s."""
        data = yaml.safe_load(EXAMPLE.read_text())
        unit = (ROOT / "systemd" / "llmlbd.service").read_text()
        stop = next(
            int(line.split("=")[1])
            for line in unit.splitlines()
            if line.startswith("TimeoutStopSec=")
        )
        assert stop >= data["server"]["graceful_timeout_s"] + 10
