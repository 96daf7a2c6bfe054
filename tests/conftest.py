"""Fixtures that start real things on free ports and always stop them."""

from __future__ import annotations

import tempfile

import pytest
import redis

from llmlbd.embedded import EmbeddedRedis
from tests.harness import free_port


def _real_redis():
    """A real Redis-compatible server on a free TCP port, stopped afterwards."""
    with EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="llmlbd-test-redis-"), port=free_port()
    ) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server():
    """One server for the whole session."""
    yield from _real_redis()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session server's URL, emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def private_redis():
    """A server of the test's own, which the test may kill and restart."""
    yield from _real_redis()


@pytest.fixture(scope="module")
def cluster():
    """A Redis Cluster of three masters sharing the 16384 slots, each with one replica."""
    from tests.topologies import ClusterDeployment

    with ClusterDeployment(masters=3, replicas=1) as started:
        yield started


@pytest.fixture
def cluster_url(cluster):
    """A startup URL of the module's cluster (any of its masters)."""
    return cluster.startup_url()
