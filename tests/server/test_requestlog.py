"""The fast request log: the same fields as the structlog line, batched writes, nothing lost."""

from __future__ import annotations

import io
import json
import logging
import os
import time

import gevent
import pytest

from llmlbd.config.loader import Backend
from llmlbd.policy.framework import Decision
from llmlbd.request import RoutingRequest
from llmlbd.server.worker import requestlog
from llmlbd.server.worker.requestlog import Finished, JsonRequestLog, StructlogRequestLog


def _request(**overrides) -> RoutingRequest:
    fields = dict(
        request_id="r1",
        method="POST",
        path="/v1/chat/completions",
        model='m"odel\u00e9',
        stream=True,
        headers={"x-request-id": "client-\n42"},
    )
    fields.update(overrides)
    return RoutingRequest(**fields)


def _decision(details: dict | None = None) -> Decision:
    return Decision(
        Backend(url="http://127.0.0.1:1", name="gpu-1"),
        "r1",
        "prefix_cache",
        "prefix_match",
        details=details or {},
    )


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def _read_lines(fd: int) -> list[dict]:
    try:
        data = os.read(fd, 1 << 20)
    except BlockingIOError:
        return []
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.decode().splitlines()]


def test_the_line_has_the_structlog_lines_fields_and_values(pipe):
    read_fd, write_fd = pipe
    log = JsonRequestLog(write_fd, pid=1234)
    details = {"matched_blocks": 3, "prompt_blocks": 5}
    log.request_done(
        Finished(_request(), _decision(details), 200, 347, 0.012345, 0.1, "complete"), False
    )
    (line,) = _read_lines(read_fd)
    expected = Finished(
        _request(), _decision(details), 200, 347, 0.012345, 0.1, "complete"
    ).fields()
    timestamp = line.pop("timestamp")
    assert line == {
        **expected,
        "event": "request_done",
        "level": "info",
        "logger": "llmlbd.proxy",
        "pid": 1234,
    }
    assert list(line) == [*expected, "event", "level", "logger", "pid"]  # same order
    assert line["client_request_id"] == "client-\n42" and line["ttfb_ms"] == 12.35
    # structlog's ISO timestamp: UTC, microseconds, a Z, and close to now.
    assert timestamp.endswith("Z") and len(timestamp) == len("2026-01-01T00:00:00.000000Z")
    stamp = time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S")
    assert abs(time.mktime(stamp) - time.timezone - time.time()) < 5


def test_a_request_without_decision_logs_empty_routing_fields(pipe):
    read_fd, write_fd = pipe
    log = JsonRequestLog(write_fd)
    log.request_done(
        Finished(_request(headers={}), None, 504, 0, None, 2.0, "upstream_timeout"), False
    )
    (line,) = _read_lines(read_fd)
    assert line["backend"] == line["policy"] == line["reason"] == ""
    assert line["client_request_id"] is None and line["ttfb_ms"] is None
    assert line["decision"] is None and line["duration_ms"] == 2000.0
    assert line["pid"] == os.getpid()


def test_a_busy_worker_batches_lines_and_writes_them_within_flush_s(pipe):
    read_fd, write_fd = pipe
    log = JsonRequestLog(write_fd)
    for index in range(3):
        log.request_done(
            Finished(
                _request(request_id=f"r{index}"), _decision(), 200, 1, 0.001, 0.002, "complete"
            ),
            True,
        )
    assert _read_lines(read_fd) == []  # held while other requests are in progress
    gevent.sleep(requestlog.FLUSH_S * 3)
    assert [line["request_id"] for line in _read_lines(read_fd)] == ["r0", "r1", "r2"]


def test_the_line_that_leaves_the_worker_idle_writes_everything_at_once(pipe):
    read_fd, write_fd = pipe
    log = JsonRequestLog(write_fd)
    log.request_done(
        Finished(_request(request_id="a"), _decision(), 200, 1, None, 0.0, "complete"), True
    )
    log.request_done(
        Finished(_request(request_id="b"), _decision(), 200, 1, None, 0.0, "complete"), False
    )
    assert [line["request_id"] for line in _read_lines(read_fd)] == ["a", "b"]
    gevent.sleep(requestlog.FLUSH_S * 2)  # the timer that was armed finds nothing left
    assert _read_lines(read_fd) == []


class RecordingLog(JsonRequestLog):
    """Keeps the size of every write, to check how lines are batched."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.writes: list[bytes] = []

    def _write(self, data: bytes) -> None:
        self.writes.append(data)
        super()._write(data)


def test_writes_hold_whole_lines_and_at_most_pipe_buf_bytes(tmp_path):
    with open(tmp_path / "log", "wb") as out:
        log = RecordingLog(out.fileno())
        lines_needed = requestlog.FLUSH_BYTES // 300 + 2
        for index in range(lines_needed):
            log.request_done(
                Finished(
                    _request(request_id=f"r{index}"),
                    _decision(),
                    200,
                    1,
                    0.001,
                    0.002,
                    "complete",
                ),
                True,
            )
        assert log.writes, "FLUSH_BYTES buffered must be written without waiting for the timer"
        for data in log.writes:
            assert len(data) <= requestlog.WRITE_MAX and data.endswith(b"\n")
        log.close()
    received = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [line["request_id"] for line in received] == [f"r{i}" for i in range(lines_needed)]


def test_close_writes_what_is_buffered(pipe):
    read_fd, write_fd = pipe
    log = JsonRequestLog(write_fd)
    log.request_done(Finished(_request(), _decision(), 200, 1, None, 0.0, "complete"), True)
    log.close()
    assert len(_read_lines(read_fd)) == 1


def test_a_closed_descriptor_never_breaks_a_request():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)
    JsonRequestLog(write_fd).request_done(
        Finished(_request(), _decision(), 200, 1, None, 0.0, "complete"), False
    )


def test_terminals_and_console_format_get_structlog(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=requestlog.LOGGER_NAME)
    with open(tmp_path / "log", "w") as plain_file:
        assert isinstance(requestlog.for_config("json", plain_file), JsonRequestLog)
        assert isinstance(requestlog.for_config("console", plain_file), StructlogRequestLog)
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            assert isinstance(requestlog.for_config("json", terminal), StructlogRequestLog)
    finally:
        os.close(master)
        os.close(slave)


def test_a_level_above_info_keeps_structlog_which_drops_the_line(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=requestlog.LOGGER_NAME)
    with open(tmp_path / "log", "w") as plain_file:
        assert isinstance(requestlog.for_config("json", plain_file), StructlogRequestLog)


@pytest.fixture
def structlog_json():
    """llmlbd's real log configuration (JSON), undone afterwards."""
    import structlog

    from llmlbd import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("info", "json")
    written = io.StringIO()
    root.handlers[0].setStream(written)  # type: ignore[attr-defined]
    yield written
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def test_the_line_is_byte_for_byte_what_structlog_wrote(structlog_json, pipe):
    """Greps like '"reason": "affinity"' and every log parser keep working."""
    read_fd, write_fd = pipe
    details = {"matched_blocks": 3, "prompt_blocks": 5}
    for decision in (_decision(details), None):
        args = (_request(), decision, 200, 347, 0.012345, 0.1, "complete")
        StructlogRequestLog().request_done(Finished(*args), busy=False)
        JsonRequestLog(write_fd).request_done(Finished(*args), busy=False)
        theirs = structlog_json.getvalue()
        structlog_json.seek(0)
        structlog_json.truncate()
        ours = os.read(read_fd, 65536).decode()

        def without_timestamp(line: str) -> str:
            start = line.index('"timestamp": "')
            return line[:start] + line[line.index('"', start + 14) + 1 :]

        assert without_timestamp(ours) == without_timestamp(theirs)


def test_milliseconds_are_written_as_repr_of_round_to_two_decimals():
    """The fast millisecond text is exactly structlog's `repr(round(s * 1000, 2))`."""
    import random

    rng = random.Random(11)
    values = [0.0, 1.0, 0.001, 0.0005, 0.000005, 0.0000049999, 0.012345, 2.5e-6, 123.456789]
    values += [rng.random() * rng.choice((1e-3, 1e-1, 1.0, 60.0, 3600.0)) for _ in range(20000)]
    for seconds in values:
        assert requestlog._ms(seconds) == repr(round(seconds * 1000, 2)), seconds
