"""EVALSHA on the request path without redis-py's per-command machinery.

A worker runs two scripts per request (acquire, release). Through
`redis.Redis` each one also paid for a retry wrapper, deprecated-argument
checks, the blocking pool's lock and, on every checkout, a non-blocking
`recv` to make sure the connection holds no stale reply, plus the response
callbacks and observability hooks: about 250 µs of worker CPU per request
on the 2-core VM of docs/benchmarks.md, more than the scripts' own send and
receive. `DirectScripts` keeps the same interface as `ScriptSet`
(`scripts.release(keys=..., args=...)`) and the same replies and errors, but
takes connections of its own, built by the client's pool class with the
client's settings (so AUTH, SELECT, TLS, timeouts and unix sockets behave
as configured), and does only: pack, send (one `send`, see llmlbd/sockets.py),
read.

What stays as before:
- a reply error raises `ResponseError`; NOSCRIPT (after a Redis restart or
  SCRIPT FLUSH) loads the script and runs it again, once;
- a timeout or a broken connection raises redis-py's `TimeoutError` /
  `ConnectionError` (the router's breaker counts them); a pooled connection
  found broken on first use (Redis restarted while it sat idle) is replaced
  and the command sent once more, as redis-py's one retry did;
- at most the pool's `max_connections` are used at once; beyond that,
  calls go through the client (which waits for a free connection).

Only a standalone server (ConnectionPool or BlockingConnectionPool) takes
this path; Cluster and Sentinel clients keep `ScriptSet`.

A Redis configured over loopback TCP (127.0.0.1, localhost, ::1) that also
listens on a unix socket (CONFIG GET unixsocket) is reached through that
socket instead, once a probe showed it is the same server (INFO's run_id)
and this process may open it: about 2 µs less client CPU and 7 µs less
round trip per script call than loopback TCP (docs/benchmarks.md). When
CONFIG is refused, the socket is missing or not ours to open, TCP stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from llmlbd.sockets import send_all
from llmlbd.state.scripts import ScriptSet, script_source

__all__ = ["DirectScripts", "find_unix_socket", "supports"]

_POOLS = (redis.ConnectionPool, redis.BlockingConnectionPool)


def supports(client: Any) -> bool:
    """True for a plain client on a standalone server (not Cluster, not Sentinel)."""
    pool = getattr(client, "connection_pool", None)
    return type(client) is redis.Redis and type(pool) in _POOLS


class DirectScripts:
    """`ScriptSet`'s interface on a few connections of its own; attribute access by file name."""

    def __init__(self, client: Any, local_unix_socket: bool = True) -> None:
        """*local_unix_socket*: look for the server's unix socket (redis.local_unix_socket)."""
        pool = client.connection_pool
        connection_class, kwargs = pool.connection_class, pool.connection_kwargs
        self.unix_socket = find_unix_socket(client) if local_unix_socket else None
        if self.unix_socket is not None:
            connection_class, kwargs = (
                redis.UnixDomainSocketConnection,
                _unix_kwargs(kwargs, self.unix_socket),
            )
        self._new_connection: Callable[[], Any] = lambda: connection_class(**kwargs)
        # Our own EVALSHA packer writes UTF-8 (strict), redis-py's default encoding.
        self._utf8 = (kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict")) in {
            ("utf-8", "strict"),
            ("utf8", "strict"),
        }
        self._limit = pool.max_connections
        self._idle: list[Any] = []
        self._in_use = 0
        self._through_client = ScriptSet(client)
        self._scripts: dict[str, _DirectScript] = {}

    def __getattr__(self, name: str) -> _DirectScript:
        if name.startswith("_"):
            raise AttributeError(name)
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = _DirectScript(self, name)
        # An instance attribute from now on: later lookups no longer fail over to
        # __getattr__ (two per request, ~4 µs of worker CPU in the profile).
        setattr(self, name, script)
        return script

    def close(self) -> None:
        while self._idle:
            self._idle.pop().disconnect()


# Packed key parts by keys (see _DirectScript._pack); keys that name a model come from
# clients, so the cache stops growing at this many.
_packed_keys: dict[tuple[Any, ...], bytes] = {}
_PACKED_KEYS_MAX = 1024

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_TCP_ONLY = frozenset(
    {"host", "port", "socket_keepalive", "socket_keepalive_options", "socket_type"}
)


def _unix_kwargs(kwargs: dict[str, Any], path: str) -> dict[str, Any]:
    unix = {key: value for key, value in kwargs.items() if key not in _TCP_ONLY}
    unix["path"] = path
    return unix


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def find_unix_socket(client: Any) -> str | None:
    """The unix socket of the standalone Redis *client* reaches over loopback TCP, when
    that server listens on one and this process can use it; else None."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if pool.connection_class is not redis.Connection or kwargs.get("host") not in _LOOPBACK:
        return None  # TLS, a unix socket already, or another host
    if kwargs.get("username") not in (None, "", "default"):
        # An ACL user: CONFIG is outside llmlbd's least-privilege rule set
        # (docs/redis-acl.md), so do not ask (Redis would log the refusal).
        return None
    try:
        reply = client.config_get("unixsocket")
        path = _text(reply.get("unixsocket", reply.get(b"unixsocket")))
        if not path:
            return None
        run_id = _text(client.info("server").get("run_id"))
        probe = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=redis.UnixDomainSocketConnection, **_unix_kwargs(kwargs, path)
            )
        )
        try:
            same = _text(probe.info("server").get("run_id")) == run_id
        finally:
            probe.close()
            probe.connection_pool.disconnect()
    except (redis.RedisError, OSError):
        return None  # CONFIG refused (ACL, rename-command), socket missing or not ours
    return path if same and run_id else None


class _DirectScript:
    def __init__(self, owner: DirectScripts, name: str) -> None:
        self.owner = owner
        self.name = name
        self.source = script_source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self._head = b"$7\r\nEVALSHA\r\n$40\r\n%b\r\n" % self.sha.encode()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        owner = self.owner
        if owner._in_use >= owner._limit:
            through: Callable[..., Any] = getattr(owner._through_client, self.name)
            return through(keys=keys, args=args)
        reused = bool(owner._idle)
        conn = owner._idle.pop() if reused else owner._new_connection()
        owner._in_use += 1
        try:
            try:
                reply = self._run(conn, keys, args)
            except redis.ConnectionError:
                if not reused:
                    raise
                conn.disconnect()  # Redis closed it while idle: one more try, as redis-py did
                reply = self._run(conn, keys, args)
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never reuse this connection
            raise
        finally:
            owner._in_use -= 1
        owner._idle.append(conn)
        return reply

    def many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run the script once per (keys, args), all sent in one write, replies in order.

        A reply error (other than NOSCRIPT) raises after the connection is dropped
        (its other replies are unread). NOSCRIPT loads the script and sends the whole
        batch again: only for scripts that are safe to run twice (release is).
        """
        owner = self.owner
        if owner._in_use >= owner._limit:
            return [self(keys=keys, args=args) for keys, args in calls]
        conn = owner._idle.pop() if owner._idle else owner._new_connection()
        owner._in_use += 1
        try:
            try:
                replies = self._run_many(conn, calls)
            except NoScriptError:
                conn.disconnect()
                self._call(conn, "SCRIPT", "LOAD", self.source)
                replies = self._run_many(conn, calls)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            owner._in_use -= 1
        owner._idle.append(conn)
        return replies

    def _run_many(
        self, conn: Any, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        data = b"".join(self._pack(conn, keys, args) for keys, args in calls)
        _send(conn, data)
        return [conn.read_response() for _ in calls]

    def _run(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            _send(conn, self._pack(conn, keys, args))
            return conn.read_response()
        except NoScriptError:
            self._call(conn, "SCRIPT", "LOAD", self.source)
            return self._call(conn, "EVALSHA", self.sha, len(keys), *keys, *args)

    def _pack(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> bytes:
        """EVALSHA sha len(keys) *keys *args in RESP: the bytes redis-py's packer makes
        (str as UTF-8, int and float by repr, bytes as they are), at a third of its cost;
        any other value, or another encoding, goes through redis-py's packer."""
        if not self.owner._utf8:
            return b"".join(conn.pack_command("EVALSHA", self.sha, len(keys), *keys, *args))
        out = [b"*%d\r\n" % (len(keys) + len(args) + 3), self._head]
        # The keys repeat from call to call (a pool's keys, a model's index): their part of
        # the command, numkeys included, is packed once.
        key_tuple = tuple(keys)
        packed_keys = _packed_keys.get(key_tuple)
        if packed_keys is None:
            packed_keys = self._pack_keys(conn, keys)
            if packed_keys is None:
                return b"".join(conn.pack_command("EVALSHA", self.sha, len(keys), *keys, *args))
            if len(_packed_keys) < _PACKED_KEYS_MAX:
                _packed_keys[key_tuple] = packed_keys
        out.append(packed_keys)
        for value in args:
            kind = type(value)
            if kind is str:
                data = value.encode()
            elif kind is bytes:
                data = value
            elif kind is int or kind is float:
                data = repr(value).encode()
            else:
                return b"".join(conn.pack_command("EVALSHA", self.sha, len(keys), *keys, *args))
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
        return b"".join(out)

    @staticmethod
    def _pack_keys(conn: Any, keys: Sequence[Any]) -> bytes | None:
        """numkeys and the keys, packed; None for a key of another type than str or bytes."""
        numkeys = b"%d" % len(keys)
        out = [b"$%d\r\n%b\r\n" % (len(numkeys), numkeys)]
        for value in keys:
            kind = type(value)
            if kind is str:
                data = value.encode()
            elif kind is bytes:
                data = value
            else:
                return None
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
        return b"".join(out)

    @staticmethod
    def _call(conn: Any, *command: Any) -> Any:
        _send(conn, b"".join(conn.pack_command(*command)))
        return conn.read_response()


def _send(conn: Any, data: bytes) -> None:
    if conn._sock is None:
        conn.connect()
    try:
        send_all(conn._sock, data)
    except TimeoutError:  # socket.timeout: redis-py's error, as its send would raise
        raise redis.TimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        raise redis.ConnectionError(f"Error while writing to socket: {exc}") from None
