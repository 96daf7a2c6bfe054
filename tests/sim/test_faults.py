"""Fault injection, by request header, by flag and at run time."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.harness import wait_until
from tests.sim.conftest import chat
from tests.simfleet import SimFleet

FAULT = "x-sim-fault"


def test_status_fault_answers_with_vllms_error_body(sim, http):
    response = http.post(
        sim + "/v1/chat/completions", json=chat("hi"), headers={FAULT: "status=500"}, timeout=5
    )
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "injected fault: status 500",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }


def test_refuse_resets_the_connection_without_an_answer(sim, http):
    with pytest.raises(requests.ConnectionError):
        http.post(
            sim + "/v1/chat/completions", json=chat("hi"), headers={FAULT: "refuse"}, timeout=5
        )
    assert http.get(sim + "/health", timeout=5).status_code == 200  # the server itself is fine


def test_close_mid_stream_drops_the_connection_before_done(sim, http):
    body = chat("hi", max_tokens=10, ignore_eos=True, stream=True)
    received = b""
    with (
        pytest.raises(requests.exceptions.ChunkedEncodingError),
        http.post(
            sim + "/v1/chat/completions",
            json=body,
            stream=True,
            timeout=5,
            headers={FAULT: "close-mid-stream=3"},
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_content(None):
            received += chunk
    assert received.count(b'"delta":{"content":" ') == 3
    assert b"[DONE]" not in received


def test_close_mid_stream_on_a_non_streaming_request_gives_no_response(sim, http):
    with pytest.raises(requests.ConnectionError):
        http.post(
            sim + "/v1/completions",
            json={"prompt": "x", "max_tokens": 10, "ignore_eos": True},
            headers={FAULT: "close-mid-stream"},
            timeout=5,
        )


def test_stall_first_byte_delays_the_headers(sim):
    with socket.create_connection(("127.0.0.1", int(sim.rsplit(":", 1)[1])), timeout=5) as sock:
        body = b'{"prompt":"x","max_tokens":1}'
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"x-sim-fault: stall-first-byte=0.6\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        start = time.monotonic()
        first = sock.recv(1)
        stalled = time.monotonic() - start
    assert first == b"H"
    assert 0.55 < stalled < 2.0


def test_slow_tokens_pace_the_stream(sim, http):
    start = time.monotonic()
    with http.post(
        sim + "/v1/completions",
        stream=True,
        timeout=5,
        headers={FAULT: "slow-tokens=0.1"},
        json={"prompt": "x", "max_tokens": 5, "ignore_eos": True, "stream": True},
    ) as response:
        arrivals = []
        for line in response.iter_lines():
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic() - start)
    assert arrivals[-1] >= 0.45
    # Chunk k (after the first) is sent after k sleeps of 0.1 s, so it cannot arrive sooner;
    # a late read may bring two arrivals closer than 0.1 s, so gaps alone would be racy.
    assert all(at >= 0.09 * k for k, at in enumerate(arrivals)), arrivals
    assert arrivals[-1] - arrivals[1] >= 0.2, arrivals  # paced, not one burst at the end


def test_bad_fault_header_is_a_400(sim, http):
    response = http.post(
        sim + "/v1/completions", json={"prompt": "x"}, headers={FAULT: "explode"}, timeout=5
    )
    assert (
        response.status_code == 400
        and "unknown fault directive" in response.json()["error"]["message"]
    )


def test_fault_flag_applies_to_every_request_and_can_be_cleared_at_run_time():
    with SimFleet(1, fault="status=503", time_scale=0.1) as fleet, requests.Session() as http:
        url = fleet.url
        assert (
            http.post(url + "/v1/completions", json={"prompt": "x"}, timeout=5).status_code == 503
        )
        assert http.get(url + "/health", timeout=5).status_code == 200
        http.post(url + "/debug/faults", json={"fault": ""}, timeout=5).raise_for_status()
        assert (
            http.post(url + "/v1/completions", json={"prompt": "x"}, timeout=5).status_code == 200
        )
        http.post(url + "/debug/faults", json={"health": "down"}, timeout=5).raise_for_status()
        assert http.get(url + "/health", timeout=5).status_code == 503
        http.post(url + "/debug/faults", json={"health": "up"}, timeout=5).raise_for_status()
        assert http.get(url + "/health", timeout=5).status_code == 200


def test_health_flaps_between_200_and_503():
    with SimFleet(1, health_flap=0.3, time_scale=0.1) as fleet, requests.Session() as http:
        seen = set()
        wait_until(
            lambda: (
                seen.add(http.get(fleet.url + "/health", timeout=5).status_code)
                or seen == {200, 503}
            ),
            timeout=3,
            interval=0.05,
            message="both health answers",
        )


def test_refuse_connections_flag_means_nothing_listens():
    with SimFleet(1, refuse_connections=True) as fleet:
        wait_until(lambda: "not listening" in fleet.procs[0].log(), timeout=10, message="started")
        with pytest.raises(requests.ConnectionError):
            requests.get(fleet.url + "/health", timeout=2)


def test_refuse_for_closes_the_port_for_a_while_then_listens_again():
    with SimFleet(1, time_scale=0.1) as fleet, requests.Session() as http:
        url = fleet.url
        assert (
            http.post(url + "/debug/faults", json={"refuse_for_s": 1.0}, timeout=5).status_code
            == 200
        )

        def refused() -> bool:
            try:
                requests.get(url + "/health", timeout=1)
                return False
            except requests.ConnectionError:
                return True

        wait_until(refused, timeout=3, message="connections refused")
        wait_until(lambda: not refused(), timeout=5, message="listening again")
        assert requests.post(
            url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=5
        ).ok
