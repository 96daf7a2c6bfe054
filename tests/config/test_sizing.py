"""Worker sizing defaults: one worker per usable core, 1000 connections each, unless set."""

from __future__ import annotations

import os

from llmlbd.config import config_from_dict, sizing


def test_unset_workers_follow_the_cores_this_process_may_use():
    server = config_from_dict({}).server
    assert server.workers is None and server.worker_connections is None
    assert sizing.workers(server) == len(os.sched_getaffinity(0))
    assert sizing.worker_connections(server) == sizing.CONNECTIONS_PER_WORKER == 1000


def test_configured_values_win():
    server = config_from_dict({"server": {"workers": 7, "worker_connections": 50}}).server
    assert sizing.workers(server) == 7
    assert sizing.worker_connections(server) == 50


def test_affinity_narrows_the_default():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert sizing.usable_cores() == 1
    finally:
        os.sched_setaffinity(0, before)
