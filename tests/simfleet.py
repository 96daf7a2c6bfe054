"""Simulated vLLM servers for tests and benchmarks: ``with SimFleet(3, time_scale=0.1) as fleet``.

Each server is ``python -m llmlbd.sim`` in its own process on a free port,
named ``sim-0``, ``sim-1``, ...; the fleet is ready when every ``/health``
answers 200, and every process (and anything it started) is stopped on exit.

Options are the CLI's flags in Python spelling: ``time_scale=0.1`` is
``--time-scale 0.1``, ``legacy_metrics=True`` is ``--legacy-metrics``,
``lora="a,b"`` (or ``lora=["a", "b"]``) is ``--lora a,b``. ``servers`` gives
per-server overrides, e.g. two slow servers in a fleet of four::

    SimFleet(4, time_scale=0.1, servers=[{}, {}, {"fault": "slow-tokens=0.05"},
                                         {"profile": "l4-llama3-8b"}])
"""

from __future__ import annotations

from tests.harness import Proc, free_port, python_module, wait_for_http

__all__ = ["SimFleet", "sim_args"]


def sim_args(options: dict) -> list[str]:
    """CLI arguments for ``python -m llmlbd.sim`` from Python-style options."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(item) for item in value)]
        elif isinstance(value, dict):
            args += [flag, ",".join(f"{name}={path}" for name, path in value.items())]
        else:
            args += [flag, str(value)]
    return args


class SimFleet:
    def __init__(
        self,
        count: int | None = None,
        servers: list[dict] | None = None,
        ready_timeout: float = 20.0,
        **sim_options,
    ) -> None:
        if count is None:
            count = len(servers or []) or 1
        if servers is not None and len(servers) != count:
            raise ValueError(f"servers has {len(servers)} entries for a fleet of {count}")
        self.count = count
        self.options = [{**sim_options, **(servers[i] if servers else {})} for i in range(count)]
        self.ready_timeout = ready_timeout
        self.names = [f"sim-{i}" for i in range(count)]
        self.ports: list[int] = []
        self.urls: list[str] = []
        self.procs: list[Proc] = []

    def start(self) -> SimFleet:
        try:
            for name, options in zip(self.names, self.options):
                port = free_port()
                proc = Proc(
                    python_module(
                        "llmlbd.sim", "--port", str(port), "--name", name, *sim_args(options)
                    ),
                    name=name,
                )
                self.ports.append(port)
                self.urls.append(f"http://127.0.0.1:{port}")
                self.procs.append(proc)
            for url, proc, options in zip(self.urls, self.procs, self.options):
                if not options.get("refuse_connections"):
                    wait_for_http(url + "/health", timeout=self.ready_timeout, process=proc.popen)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    @property
    def url(self) -> str:
        """The first server's URL (the common one-server case)."""
        return self.urls[0]

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
