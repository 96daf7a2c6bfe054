"""DirectScripts against a real Redis: the same replies and errors as redis-py's scripts."""

from __future__ import annotations

import tempfile
import time

import pytest
import redis

from llmlbd.embedded import EmbeddedRedis
from llmlbd.state import direct_scripts
from llmlbd.state.direct_scripts import DirectScripts
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases, Reservation
from tests.harness import free_port
from tests.state.least_request import acquire_least

NAMES = ["a", "b", "c"]


def _acquire(leases: Leases, request_id: str, cap: int = 0) -> Reservation:
    """One least-request decision with a fixed tie-break seed, so both paths draw alike."""
    return acquire_least(leases, request_id, NAMES, [1, 1, 1], cap=cap, seed=7)


def _leases(client: redis.Redis, pool: str, direct: bool) -> Leases:
    leases = Leases(client, PoolKeys(pool), f"host:1:{pool}", ttl_ms=5000)
    if direct:
        leases.scripts = DirectScripts(client)  # type: ignore[assignment]
    leases.heartbeat()
    return leases


def _story(leases: Leases) -> list:
    """Acquire, cap, release twice: every reply the request path sees."""
    replies: list = [leases.heartbeat() > 0]
    for index in range(4):
        replies.append(_acquire(leases, f"r{index}", cap=1))
    replies.append(leases.acquire("r9", "a", cap=5))
    replies += [leases.release("r0"), leases.release("r0"), leases.release("nope")]
    replies.append({k: int(v) for k, v in leases.client.hgetall(leases.keys.inflight).items()})
    return replies


def test_the_same_replies_as_redis_py(redis_client):
    through_client = _story(_leases(redis_client, "viaclient", direct=False))
    direct = _story(_leases(redis_client, "direct", direct=True))
    assert direct == through_client
    assert direct[4].backend is None and direct[4].reason  # the cap refused the 4th


def test_bytes_replies_when_the_client_does_not_decode(redis_url):
    client = redis.Redis.from_url(redis_url)  # decode_responses=False
    leases = _leases(client, "bytes", direct=True)
    assert _acquire(leases, "r1").backend in NAMES
    client.close()


def test_a_flushed_script_is_loaded_again(redis_client):
    leases = _leases(redis_client, "flush", direct=True)
    assert _acquire(leases, "r1").backend in NAMES
    redis_client.script_flush()
    assert leases.release("r1").released is True


def test_a_script_error_is_a_response_error_and_the_connection_stays_usable(redis_client):
    leases = _leases(redis_client, "error", direct=True)
    with pytest.raises(redis.ResponseError):
        leases.scripts.release(keys=[], args=[])  # the script indexes KEYS[2]: nil
    assert _acquire(leases, "r1").backend in NAMES


def test_redis_restarted_under_an_idle_connection(private_redis):
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    leases = _leases(client, "restart", direct=True)
    assert _acquire(leases, "r1").backend in NAMES
    private_redis.kill()
    with pytest.raises(redis.ConnectionError):
        leases.release("r1")  # down: the router's breaker hears about it
    private_redis.start()
    leases.heartbeat()
    # The idle connection from before the restart is broken: replaced, not an error.
    assert _acquire(leases, "r2").backend in NAMES
    client.close()


def test_a_timed_out_call_never_hands_its_late_reply_to_the_next_one(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.2)
    leases = _leases(client, "timeout", direct=True)
    pauser = redis.Redis.from_url(redis_url)
    pauser.execute_command("CLIENT", "PAUSE", 600, "ALL")
    try:
        with pytest.raises(redis.TimeoutError):
            leases.heartbeat()  # its reply (a number) may still come after the timeout
    finally:
        time.sleep(0.7)  # the pause ends
    # Reusing the timed-out connection would hand this call the heartbeat's number.
    reservation = _acquire(leases, "r1")
    assert reservation.backend in NAMES and reservation.inflight == 1
    pauser.close()
    client.close()


def test_only_standalone_clients_take_the_direct_path(redis_url):
    assert direct_scripts.supports(redis.Redis.from_url(redis_url))
    blocking = redis.BlockingConnectionPool.from_url(redis_url)
    assert direct_scripts.supports(redis.Redis(connection_pool=blocking))
    assert not direct_scripts.supports(object())


def _connection_class(leases: Leases) -> type:
    """The class of the connection the last script call used (back in the idle list)."""
    return type(leases.scripts._idle[-1])  # type: ignore[attr-defined]


def test_a_loopback_redis_is_reached_through_its_unix_socket(redis_server, redis_client):
    assert redis_server.url.startswith("redis://127.0.0.1:")  # loopback TCP, as configured
    leases = _leases(redis_client, "unix", direct=True)
    assert leases.scripts.unix_socket == redis_server.socket_path  # type: ignore[attr-defined]
    assert _acquire(leases, "r1").backend in NAMES
    assert _connection_class(leases) is redis.UnixDomainSocketConnection
    # The same server: the lease taken through the socket is what TCP clients see.
    assert sum(int(v) for v in redis_client.hgetall(leases.keys.inflight).values()) == 1


def test_local_unix_socket_off_keeps_tcp(redis_client):
    leases = Leases(redis_client, PoolKeys("tcp"), "host:1:tcp", ttl_ms=5000)
    leases.scripts = DirectScripts(redis_client, local_unix_socket=False)  # type: ignore[assignment]
    assert leases.scripts.unix_socket is None  # type: ignore[attr-defined]
    leases.heartbeat()
    assert _acquire(leases, "r1").backend in NAMES
    assert _connection_class(leases) is redis.Connection


def test_a_redis_that_refuses_config_keeps_tcp():
    with EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="llmlbd-test-redis-"),
        port=free_port(),
        extra_args=["--rename-command", "CONFIG", '""'],
    ) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        with pytest.raises(redis.ResponseError):
            client.config_get("unixsocket")
        leases = _leases(client, "noconfig", direct=True)
        assert leases.scripts.unix_socket is None  # type: ignore[attr-defined]
        assert _acquire(leases, "r1").backend in NAMES
        client.close()


def test_the_evalsha_bytes_are_redis_pys(redis_client):
    scripts = DirectScripts(redis_client)
    script = scripts.release
    conn = redis_client.connection_pool.connection_class(
        **redis_client.connection_pool.connection_kwargs
    )
    cases = [
        ((), ()),
        (("k",), ()),
        (
            ("{pool}:inflight", "{pool}:lease"),
            ("r1", 0, 12, 1.5, 2.0e-7, -3, "ünïcode", b"\x00\xff"),
        ),
        (("k",), ("x" * 10_000,)),  # redis-py splits a big value into its own chunk
    ]
    for keys, args in cases:
        expected = b"".join(conn.pack_command("EVALSHA", script.sha, len(keys), *keys, *args))
        assert script._pack(conn, keys, args) == expected
    with pytest.raises(redis.DataError):  # as redis-py: no bools
        script._pack(conn, ("k",), (True,))
    # The keys' part is packed once and reused: the same keys again, other args, and keys
    # that redis-py packs by repr (an int) or refuses (a bool) still give its bytes.
    for keys, args in [
        (("{pool}:inflight", "{pool}:lease"), ("r2", 7)),
        (("{pool}:inflight", "{pool}:lease"), ()),
        (("{pool}:inflight", 3), ("r3",)),
        ((b"{pool}:raw", "ünï"), ("r4",)),
    ]:
        expected = b"".join(conn.pack_command("EVALSHA", script.sha, len(keys), *keys, *args))
        assert script._pack(conn, keys, args) == expected
    with pytest.raises(redis.DataError):
        script._pack(conn, ("k", False), ())
