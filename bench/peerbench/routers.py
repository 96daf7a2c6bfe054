"""Start each router in front of a fleet, on free ports, and stop it.

Routers, as the benchmark names them ("KIND POLICY"):

* ``llmlbd prefix_cache|least_busy|global_least_request``: ``llmlbd start`` with its
  default config but for the policy and the backends: 2 gevent workers, the
  embedded Redis and the collector (all of it counts in llmlbd's CPU and RSS),
  request log on.
* ``vllm-router cache_aware|power_of_two|round_robin|consistent_hash``, with
  ``RUST_LOG=warn`` (its per-request INFO lines otherwise cost it throughput).
* ``sglang-router cache_aware``, bound to 127.0.0.1 (it defaults to 0.0.0.0).
* ``litellm least-busy``: the proxy with a master key, the local cost map, no
  retries (a retry would hide a failure the others report).
* ``nginx least_conn``: a private nginx with ``proxy_buffering off`` for SSE.
* ``oracle``: no process; the load generator asks every server for its true
  cache state and applies prefix_cache's rule (see loadgen.OraclePicker).

Peers run from their own venvs (install.py); one that cannot be installed or
started is reported as skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from bench.peerbench.install import ensure_debian, ensure_venv
from tests.harness import LLMLBD, Proc, free_port, wait_for_http, wait_until

# lb_config keys for every llmlbd router of a run (peers.py --llmlbd-lb-config; default: none).
LLMLBD_LB_CONFIG: dict = {}
# Other config sections for them, merged section by section (peers.py --llmlbd-config).
LLMLBD_CONFIG: dict = {}

__all__ = ["ALL_ROUTERS", "RouterUnavailable", "Running", "sim_options_for", "start_router"]

ALL_ROUTERS = (
    "llmlbd prefix_cache",
    "llmlbd least_busy",
    "llmlbd global_least_request",
    "vllm-router cache_aware",
    "vllm-router power_of_two",
    "vllm-router round_robin",
    "vllm-router consistent_hash",
    "sglang-router cache_aware",
    "litellm least-busy",
    "nginx least_conn",
    "oracle",
)


class RouterUnavailable(RuntimeError):
    """The router cannot be installed or started here; the message says why."""


@dataclass
class Running:
    label: str
    url: str | None  # None: the oracle (the load generator routes)
    headers: dict[str, str] = field(default_factory=dict)
    session: int | None = None  # the process session whose CPU and RSS are the router's
    log_path: Path | None = None  # llmlbd's JSON log: its request log explains its decisions
    stop_hooks: list = field(default_factory=list)

    def stop(self) -> None:
        for hook in reversed(self.stop_hooks):
            hook()
        self.stop_hooks.clear()


def sim_options_for(label: str) -> dict:
    """Backend options a router needs: sglang-router reads /get_load in SGLang's list form."""
    return {"get_load_format": "array"} if label.startswith("sglang-router") else {}


def start_router(
    label: str, backends: list[tuple[str, str]], models: list[str], install: bool = True
) -> Running:
    kind, _, policy = label.partition(" ")
    starters = {
        "llmlbd": _llmlbd,
        "vllm-router": _vllm_router,
        "sglang-router": _sglang_router,
        "litellm": _litellm,
        "nginx": _nginx,
    }
    if kind == "oracle":
        return Running(label, None)
    if kind not in starters:
        raise RouterUnavailable(f"unknown router {label!r}")
    return starters[kind](label, policy, backends, models, install)


def _proc_running(label: str, proc: Proc, url: str, headers: dict | None = None) -> Running:
    return Running(label, url, headers or {}, session=proc.pid, stop_hooks=[lambda: proc.stop(10)])


def _check_started(proc: Proc, ready) -> None:
    try:
        ready()
    except Exception as exc:
        log = proc.log()[-600:].strip().replace("\n", " | ")
        proc.stop(5)
        raise RouterUnavailable(f"did not become ready ({exc}); log tail: {log}") from None


def _llmlbd(label, policy, backends, models, install) -> Running:
    config = {
        "lb_policy": policy,
        "backends": [{"name": name, "url": url} for name, url in backends],
        "logging": {"level": "info"},  # the default: request log on
        # Another llmlbd may hold the default collector metrics port on this host.
        "collector": {"metrics_port": 0},
    }
    if LLMLBD_LB_CONFIG:
        config["lb_config"] = dict(LLMLBD_LB_CONFIG)
    for section, values in LLMLBD_CONFIG.items():
        merged = config.get(section)
        config[section] = {**merged, **values} if isinstance(merged, dict) else values
    try:
        server = LLMLBD(config, workers=2, name="peers-llmlbd")
    except Exception as exc:
        raise RouterUnavailable(f"llmlbd did not start: {exc}") from None
    return Running(
        label,
        server.url,
        session=server.proc.pid,
        stop_hooks=[lambda: server.stop(15)],
        log_path=server.proc.log_path,
    )


def _vllm_router(label, policy, backends, models, install) -> Running:
    binary, reason = ensure_venv("vllm-router", install)
    if binary is None:
        raise RouterUnavailable(reason)
    port = free_port()
    args = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--worker-urls"]
    args += [url for _, url in backends]
    args += ["--policy", policy, "--prometheus-host", "127.0.0.1"]
    args += ["--prometheus-port", str(free_port()), "--log-level", "warning"]
    proc = Proc(args, name="peers-vllm-router", env={"RUST_LOG": "warn"})
    url = f"http://127.0.0.1:{port}"
    _check_started(proc, lambda: wait_for_http(url + "/readiness", timeout=30, process=proc.popen))
    return _proc_running(label, proc, url)


def _sglang_router(label, policy, backends, models, install) -> Running:
    binary, reason = ensure_venv("sglang-router", install)
    if binary is None:
        raise RouterUnavailable(reason)
    port = free_port()
    args = [str(binary), "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls"]
    args += [url for _, url in backends]
    args += ["--policy", policy, "--prometheus-host", "127.0.0.1"]
    args += ["--prometheus-port", str(free_port()), "--log-level", "warn"]
    proc = Proc(args, name="peers-sglang-router")
    url = f"http://127.0.0.1:{port}"

    def ready() -> None:
        # /health is 200 before the workers register; /readiness counts them.
        def healthy() -> bool:
            try:
                reply = requests.get(url + "/readiness", timeout=1).json()
            except (requests.RequestException, ValueError):
                return False
            return reply.get("healthy_workers") == len(backends)

        if proc.popen.poll() is not None:
            raise RuntimeError("exited")
        wait_until(healthy, timeout=30, interval=0.1, message="sglang-router workers healthy")

    _check_started(proc, ready)
    return _proc_running(label, proc, url)


def _litellm(label, policy, backends, models, install) -> Running:
    binary, reason = ensure_venv("litellm", install)
    if binary is None:
        raise RouterUnavailable(reason)
    model_list = [
        {
            "model_name": model,
            "litellm_params": {"model": f"openai/{model}", "api_base": url + "/v1", "api_key": "x"},
        }
        for model in models
        for _, url in backends
    ]
    config = {
        "model_list": model_list,
        "router_settings": {"routing_strategy": policy},
        "litellm_settings": {"num_retries": 0, "telemetry": False, "request_timeout": 600},
    }
    handle, path = tempfile.mkstemp(prefix="peers-litellm-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out)
    key = "sk-" + secrets.token_hex(16)
    port = free_port()
    env = {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    args = [str(binary), "--config", path, "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc(args, name="peers-litellm", env=env)
    url = f"http://127.0.0.1:{port}"
    _check_started(
        proc, lambda: wait_for_http(url + "/health/readiness", timeout=90, process=proc.popen)
    )
    return _proc_running(label, proc, url, {"Authorization": f"Bearer {key}"})


NGINX_CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  client_max_body_size 64m;
  upstream fleet {{ {policy}
{servers}
    keepalive 256; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://fleet; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off;
      proxy_read_timeout 600s; proxy_next_upstream error timeout http_502 http_503; }} }}
}}
"""


def nginx_config(directory: str, port: int, urls: list[str], policy: str = "least_conn") -> str:
    servers = "\n".join(
        f"    server {url.split('//', 1)[1]} max_fails=3 fail_timeout=5s;" for url in urls
    )
    directive = "" if policy == "round_robin" else f"{policy};"  # round robin is nginx's default
    return NGINX_CONF.format(dir=directory, port=port, servers=servers, policy=directive)


def start_nginx(urls: list[str], policy: str = "least_conn", install: bool = True):
    """(Proc, url) of a private nginx in front of *urls* (also used by bench/overhead.py)."""
    binary, reason = ensure_debian("nginx", "nginx", install)
    if binary is None:
        raise RouterUnavailable(reason)
    directory = tempfile.mkdtemp(prefix="peers-nginx-")
    port = free_port()
    Path(directory, "nginx.conf").write_text(nginx_config(directory, port, urls, policy))
    proc = Proc([binary, "-p", directory, "-c", "nginx.conf"], name="peers-nginx")
    url = f"http://127.0.0.1:{port}"
    _check_started(proc, lambda: wait_for_http(url + "/health", timeout=15, process=proc.popen))
    return proc, url


def _nginx(label, policy, backends, models, install) -> Running:
    proc, url = start_nginx([url for _, url in backends], policy, install)
    return _proc_running(label, proc, url)
