"""Config of precise prefix routing: a backend's KV-event source and the keys that use it.

A backend opts in with ``kv_events`` (its vLLM's ``--kv-events-config``
endpoints as the collector reaches them)::

    backends:
      - url: http://gpu-1:8000
        kv_events: {endpoint: "tcp://gpu-1:5557", replay_endpoint: "tcp://gpu-1:5558", topic: kv}
      - {url: http://gpu-2:8000, kv_events: "tcp://gpu-2:5557"}   # endpoint only

and the pool routes on it with ``lb_policy: prefix_cache`` + ``lb_config.index:
precise`` (docs/policies/prefix_cache.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmlbd.config import validators as v
from llmlbd.config.setting import PREFIX, Setting

__all__ = ["KVEventsSource", "parse_kv_events", "SETTINGS"]


@dataclass(frozen=True)
class KVEventsSource:
    """Where the collector subscribes to one backend's KV events."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""


def _zmq_endpoint(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.startswith(("tcp://", "ipc://")):
        raise ValueError(f"{what} must be a tcp:// or ipc:// address, got {value!r}")
    if "*" in value:
        raise ValueError(
            f"{what} {value!r} is a wildcard: give the address the collector connects to "
            "(vLLM binds tcp://*:PORT; the collector connects to tcp://HOST:PORT)"
        )
    return value


def parse_kv_events(value: Any) -> KVEventsSource | None:
    """A backend's ``kv_events``: an endpoint string, or {endpoint, replay_endpoint, topic}."""
    if value is None:
        return None
    if isinstance(value, str):
        return KVEventsSource(_zmq_endpoint(value, "kv_events"))
    if not isinstance(value, dict):
        raise ValueError(
            f"expected an endpoint or {{endpoint, replay_endpoint, topic}}, got {value!r}"
        )
    unknown = set(value) - {"endpoint", "replay_endpoint", "topic"}
    if unknown:
        raise ValueError(
            f"unknown key {sorted(unknown)[0]!r} (expected endpoint, replay_endpoint, topic)"
        )
    replay = value.get("replay_endpoint")
    topic = value.get("topic", "")
    if not isinstance(topic, str):
        raise ValueError(f"topic must be a string, got {topic!r}")
    return KVEventsSource(
        _zmq_endpoint(value.get("endpoint"), "kv_events.endpoint"),
        None if replay is None else _zmq_endpoint(replay, "kv_events.replay_endpoint"),
        topic,
    )


def _optional_dir(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a directory path, got {value!r}")
    return value


SETTINGS: list[Setting] = [
    Setting(
        "lb_config.index",
        "approximate",
        v.one_of("approximate", "precise"),
        "approximate: the index of what llmlbd sent each backend; precise: the blocks each "
        "backend reports through its KV events (backends[].kv_events), with vLLM's own hashes.",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.kvBlockSize",
        16,
        v.positive_int,
        "Precise index: vLLM's --block-size on the backends (16 on GPUs, 128 on vLLM's CPU build).",
        "tokens",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.tokenizer",
        None,
        _optional_dir,
        "Precise index: directory with the model's tokenizer.json and tokenizer_config.json "
        "(chat template); unset, prompts are tokenized by a backend's /tokenize.",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.hashSeed",
        None,
        v.optional_string,
        "Precise index: the backends' PYTHONHASHSEED, if they set one (it seeds vLLM's hashes).",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.tokenizeTimeout",
        2000,
        v.positive_int,
        "Precise index: longest wait for a backend's /tokenize before routing without it.",
        "ms",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.loraAdapters",
        [],
        v.string_list,
        "Precise index: served LoRA adapter names; a request for one is hashed with its name, "
        "as vLLM does (other model names hash as the base model).",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.countOffloaded",
        False,
        v.boolean,
        "Precise index: count blocks a backend offloaded to CPU or disk as cached.",
        policies=(PREFIX,),
    ),
    Setting(
        "collector.kv_index_max_blocks",
        1_000_000,
        v.positive_int,
        "Blocks kept per backend and tier in the precise index when its num_gpu_blocks is unknown.",
        "blocks",
    ),
    Setting(
        "collector.kv_silent_clear_s",
        60.0,
        v.positive_float,
        "Drop a backend's precise index after its KV-event stream has been disconnected this long.",
        "s",
    ),
]
