"""``llmlbd sim``: one simulated vLLM server, or a fleet of them (``--count``)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from llmlbd.sim.config import DEFAULT_MODEL
from llmlbd.sim.profiles import DEFAULT_PROFILE, PROFILES

__all__ = ["sim_command"]

# Options that differ per server in a fleet; every other option is passed to each child as given.
_PER_SERVER = {"port", "host", "name", "count", "base_port", "list_profiles"}


def _adapters(ctx, param, value: str | None) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, path = item.partition("=")
        adapters[name.strip()] = path.strip() or f"/adapters/{name.strip()}"
    return adapters


def _kv_events(ctx, param, value: str | None):
    if not value:
        return None
    from llmlbd.sim.kv_events import parse_kv_events_config

    try:
        return parse_kv_events_config(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fault(ctx, param, value: str | None) -> str:
    from llmlbd.sim.faults import parse_fault

    try:
        parse_fault(value or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value or ""


@click.command(
    "sim",
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "show_default": True,
    },
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8100, help="Port of a single server."
)
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option(
    "--name",
    default=None,
    help="Server name (shown in /debug/state and logs). Default sim-0; with --count, "
    "the prefix of NAME-0, NAME-1, ... (default sim).",
)
@click.option(
    "--count",
    type=click.IntRange(1, 256),
    default=None,
    help="Start a fleet of COUNT servers, one process each, on consecutive ports.",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="First port of a fleet (default: --port).",
)
@click.option(
    "--model", default=DEFAULT_MODEL, help="Served model name (model_name label, /v1/models id)."
)
@click.option(
    "--lora",
    "loras",
    default="",
    callback=_adapters,
    help="LoRA adapters served besides the base model: 'a,b' or 'a=/path/a,b=/path/b'.",
)
@click.option(
    "--max-loras",
    type=click.IntRange(1),
    default=1,
    help="Adapters resident at once (vLLM --max-loras).",
)
@click.option(
    "--lora-load-s",
    type=click.FloatRange(0),
    default=0.1,
    help="Seconds to load an adapter into a slot (scaled by --time-scale).",
)
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=DEFAULT_PROFILE,
    help="GPU profile: step timing, KV cache size and engine limits.",
)
@click.option(
    "--max-num-seqs",
    type=click.IntRange(1),
    default=None,
    help="Running-request slots (vLLM --max-num-seqs). Default: the profile's.",
)
@click.option(
    "--max-num-batched-tokens",
    type=click.IntRange(1),
    default=None,
    help="Token budget per engine step (chunked prefill). Default: the profile's.",
)
@click.option(
    "--max-num-queued-reqs",
    type=click.IntRange(0),
    default=1000,
    help="Waiting-queue bound; a request beyond it gets 503 (vLLM --max-num-queued-reqs).",
)
@click.option(
    "--num-gpu-blocks",
    type=click.IntRange(1),
    default=None,
    help="KV cache blocks (vLLM --num-gpu-blocks-override). Default: the profile's.",
)
@click.option(
    "--block-size",
    type=click.IntRange(1),
    default=None,
    help="Tokens per KV block. Default: the profile's (16 on GPUs).",
)
@click.option(
    "--max-model-len",
    type=click.IntRange(2),
    default=None,
    help="Context length limit in tokens. Default: the profile's.",
)
@click.option(
    "--mean-output-tokens",
    type=click.IntRange(1),
    default=128,
    help="Mean natural answer length; max_tokens caps it, ignore_eos forces max_tokens.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    help="Multiply every simulated duration: 0.1 runs ten times faster than the GPU would.",
)
@click.option(
    "--legacy-metrics",
    is_flag=True,
    help="Also export vllm:gpu_cache_usage_perc and vllm:gpu_prefix_cache_{queries,hits} "
    "(names removed in vLLM 0.12).",
)
@click.option(
    "--enable-prompt-tokens-details",
    "prompt_tokens_details",
    is_flag=True,
    help="Report usage.prompt_tokens_details.cached_tokens, as vLLM's flag of that name.",
)
@click.option(
    "--fault",
    default="",
    callback=_fault,
    help="Fault for every inference request, e.g. 'status=503' or "
    "'stall-first-byte=2;slow-tokens=0.05' (see docs/simulator.md). "
    "The x-sim-fault request header adds to it.",
)
@click.option(
    "--refuse-connections",
    is_flag=True,
    help="Do not listen at all: clients get 'connection refused' (a down or loading server).",
)
@click.option(
    "--health-flap",
    "health_flap_s",
    type=click.FloatRange(0),
    default=0.0,
    help="Make /health alternate between 200 and 503 every this many seconds (0 = off).",
)
@click.option(
    "--kv-events-config",
    default=None,
    callback=_kv_events,
    help="vLLM's flag: publish KV-cache events over ZMQ, e.g. '{\"enable_kv_cache_events\": "
    'true, "publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": '
    '"tcp://*:5558", "topic": "kv"}\' (see docs/simulator.md).',
)
@click.option(
    "--tokenizer",
    "tokenizer_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Tokenize with this Hugging Face tokenizer directory (tokenizer.json, chat template "
    "in tokenizer_config.json) instead of the built-in stand-in; needs llmlbd[precise].",
)
@click.option(
    "--get-load-format",
    type=click.Choice(["object", "array"]),
    default="object",
    help='Shape of GET /get_load: {"load": N} (vllm-router) or SGLang\'s per-rank list '
    "(sglang-router).",
)
@click.option(
    "--model-path",
    default="",
    help="Directory reported as model_path in /get_server_info (sglang-router loads its "
    "tokenizer from there instead of asking the HuggingFace hub); a tiny tokenizer is written "
    "there unless it holds one. Default: the --tokenizer directory, else the model name.",
)
@click.option("--list-profiles", is_flag=True, help="Print the GPU profiles and exit.")
@click.pass_context
def sim_command(ctx: click.Context, **options) -> None:
    """Simulated vLLM servers for demos, tests and benchmarks.

    One server: `llmlbd sim --port 8101`. A fleet, one process per server:
    `llmlbd sim --count 4 --base-port 8101` prints `NAME URL` per server and
    stops them all on Ctrl-C or SIGTERM. Each server speaks vLLM's
    OpenAI-compatible API and /metrics, with simulated GPU timing.
    """
    if options["list_profiles"]:
        for profile in PROFILES.values():
            click.echo(f"{profile.name}: {profile.description}")
        return
    if options["count"] is not None:
        from llmlbd.sim.fleet import run_fleet

        if options["kv_events_config"] is not None:
            # Every child would bind the same event ports.
            raise click.BadParameter(
                "not supported with --count: start each server with its own endpoints",
                param_hint="--kv-events-config",
            )

        child_args = _passthrough_args(ctx)
        base_port = options["base_port"] or options["port"]
        if base_port + options["count"] - 1 > 65535:
            raise click.BadParameter("the fleet's ports run past 65535", param_hint="--base-port")
        ctx.exit(
            run_fleet(
                options["count"],
                base_port,
                options["host"],
                options["name"] or "sim",
                child_args,
                wait_for_listen=not options["refuse_connections"],
            )
        )
    # A sim started by `llmlbd start` inherits the proxy's PROMETHEUS_MULTIPROC_DIR;
    # with it, prometheus_client would write the sim's vllm:* series into the
    # proxy's metrics directory. Drop it before prometheus_client is imported.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from llmlbd.sim.config import SimConfig
    from llmlbd.sim.server import serve

    config = SimConfig(
        host=options["host"],
        port=options["port"],
        name=options["name"] or "sim-0",
        model=options["model"],
        loras=options["loras"],
        max_loras=options["max_loras"],
        lora_load_s=options["lora_load_s"],
        profile=PROFILES[options["profile"]],
        max_num_seqs=options["max_num_seqs"],
        max_num_batched_tokens=options["max_num_batched_tokens"],
        max_num_queued_reqs=options["max_num_queued_reqs"],
        num_gpu_blocks=options["num_gpu_blocks"],
        block_size=options["block_size"],
        max_model_len=options["max_model_len"],
        mean_output_tokens=options["mean_output_tokens"],
        time_scale=options["time_scale"],
        legacy_metrics=options["legacy_metrics"],
        prompt_tokens_details=options["prompt_tokens_details"],
        fault=options["fault"],
        refuse_connections=options["refuse_connections"],
        health_flap_s=options["health_flap_s"],
        kv_events=options["kv_events_config"],
        get_load_format=options["get_load_format"],
        tokenizer_dir=options["tokenizer_dir"],
        model_path=options["model_path"],
    )
    if config.model_path and not (Path(config.model_path) / "tokenizer.json").exists():
        from llmlbd.sim.peer_api import write_tokenizer_dir

        write_tokenizer_dir(config.model_path)
    ctx.exit(serve(config))


def _passthrough_args(ctx: click.Context) -> list[str]:
    """Rebuild the command line for a fleet's children from what the user set explicitly."""
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in _PER_SERVER:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name == "DEFAULT":
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            if ctx.params[param.name]:
                args.append(flag)
        elif param.name == "loras":
            args += [flag, ",".join(f"{name}={path}" for name, path in ctx.params["loras"].items())]
        else:
            args += [flag, str(ctx.params[param.name])]
    return args
