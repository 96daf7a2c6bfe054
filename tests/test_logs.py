"""llmlbd's structlog processors."""

from __future__ import annotations

from llmlbd.logs import add_pid, drop_prompt_fields


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
    import os

    assert add_pid(None, "info", {})["pid"] == os.getpid()
