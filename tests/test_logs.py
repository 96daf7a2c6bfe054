"""llmlbd's structlog processors."""

from __future__ import annotations

import os
import sys

import pytest

from llmlbd.logs import add_pid, drop_prompt_fields, resolve_format


class TestDropPromptFields:
    def test_prompt_bearing_keys_are_replaced(self):
        """A log call that passes user content never writes it."""
        event = drop_prompt_fields(
            None,
            "info",
            {"event": "x", "messages": [{"content": "hi"}], "prompt": "secret", "backend": "a"},
        )
        assert event == {
            "event": "x",
            "messages": "[not logged]",
            "prompt": "[not logged]",
            "backend": "a",
        }

    def test_other_events_are_untouched(self):
        event = {"event": "request_done", "status": 200}
        assert drop_prompt_fields(None, "info", dict(event)) == event


def test_add_pid_names_the_process():
    assert add_pid(None, "info", {})["pid"] == os.getpid()


class TestResolveFormat:
    """ "auto" means console for a person at a terminal, JSON for machines."""

    @pytest.fixture
    def terminal(self):
        controller, child = os.openpty()
        with os.fdopen(child, "w") as stream:
            yield stream
        os.close(controller)

    @pytest.fixture(autouse=True)
    def outside_systemd(self, monkeypatch):
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        monkeypatch.delenv("INVOCATION_ID", raising=False)

    def test_a_terminal_gets_console(self, terminal):
        assert resolve_format("auto", terminal) == "console"

    def test_a_pipe_gets_json(self):
        read, write = os.pipe()
        os.close(read)
        with os.fdopen(write, "w") as stream:
            assert resolve_format("auto", stream) == "json"

    @pytest.mark.parametrize("variable", ["JOURNAL_STREAM", "INVOCATION_ID"])
    def test_systemd_gets_json_even_on_a_terminal(self, terminal, monkeypatch, variable):
        monkeypatch.setenv(variable, "8:1234")
        assert resolve_format("auto", terminal) == "json"

    @pytest.mark.parametrize("fmt", ["json", "console"])
    def test_an_explicit_format_wins(self, fmt):
        assert resolve_format(fmt, sys.stderr) == fmt
