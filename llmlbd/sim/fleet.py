"""Start K simulated servers, one process each, and stop them all together.

Each server is its own process so that the servers use both cores in
parallel and one server's CPU cost never slows another. Children get
SIGTERM if this process dies, however it dies (``PR_SET_PDEATHSIG``).
The fleet prints one ``NAME URL`` line per server once every server listens:
``llmlbd start`` reads those lines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from llmlbd.embedded import _die_with_parent

__all__ = ["run_fleet"]


def run_fleet(
    count: int,
    base_port: int,
    host: str,
    name_prefix: str,
    child_args: list[str],
    wait_for_listen: bool = True,
    ready_timeout_s: float = 30.0,
) -> int:
    stopping = []

    def request_stop(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # Not the proxy's multiprocess metrics directory (see cli.py).
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    children: list[tuple[str, str, subprocess.Popen]] = []
    try:
        for index in range(count):
            port = base_port + index
            name = f"{name_prefix}-{index}"
            args = [
                sys.executable,
                "-m",
                "llmlbd.sim",
                "--host",
                host,
                "--port",
                str(port),
                "--name",
                name,
                *child_args,
            ]
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
            )
            children.append((name, f"http://{host}:{port}", process))
        ready = not wait_for_listen or _wait_listening(
            children, host, base_port, ready_timeout_s, stopping
        )
        if stopping:
            return 0
        if not ready:
            return 1
        for name, url, _ in children:
            print(f"{name} {url}", flush=True)
        while not stopping:
            for name, url, process in children:
                if process.poll() is not None:
                    print(
                        f"llmlbd sim: {name} ({url}) exited with status {process.returncode}; "
                        "stopping the fleet",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop_all(children)


def _wait_listening(children, host: str, base_port: int, timeout_s: float, stopping: list) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = {index for index in range(len(children))}
    while pending and not stopping:
        for index in sorted(pending):
            name, url, process = children[index]
            if process.poll() is not None:
                print(
                    f"llmlbd sim: {name} exited with status {process.returncode} before listening "
                    f"on {url}",
                    file=sys.stderr,
                    flush=True,
                )
                return False
            try:
                with socket.create_connection((host, base_port + index), timeout=0.5):
                    pending.discard(index)
            except OSError:
                pass
        if time.monotonic() > deadline:
            names = ", ".join(children[index][0] for index in sorted(pending))
            print(
                f"llmlbd sim: {names} did not listen within {timeout_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            return False
        if pending:
            time.sleep(0.05)
    return not pending


def _stop_all(children, timeout_s: float = 5.0) -> None:
    for _, _, process in children:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for _, _, process in children:
        try:
            process.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
