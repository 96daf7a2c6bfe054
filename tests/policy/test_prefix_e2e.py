"""prefix_cache end to end: real llmlbd processes, one shared Redis, real HTTP backends."""

from __future__ import annotations

import pytest
import requests

from tests.harness import LLMLBD, StubBackends

pytestmark = pytest.mark.e2e

SYSTEM = "You answer questions about the solar system, briefly and precisely. " * 30


def turns(topic, count):
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(count):
        messages = messages + [{"role": "user", "content": f"{topic} question {turn} " * 10}]
        yield messages
        messages = messages + [{"role": "assistant", "content": f"{topic} answer {turn} " * 25}]


def test_two_instances_route_a_conversation_to_one_backend(redis_url):
    """Turns sent alternately through two llmlbd instances sharing one Redis land on one
    backend, while different conversations spread over the fleet."""
    with StubBackends(4) as stubs:
        config = {
            "redis": {"url": redis_url},
            "backends": stubs.config(),
            "lb_policy": "prefix_cache",
            # New conversations on the shared system prompt spread (the default, follow,
            # would keep them all on its holder of an idle fleet).
            "lb_config": {"sharedPrefix": "spread"},
            "collector": {"enabled": False},
        }
        with (
            LLMLBD(config, workers=1, name="llmlbd-a") as a,
            LLMLBD(config, workers=1, name="llmlbd-b") as b,
        ):
            homes = {}
            for topic in ("mercury", "venus", "mars", "jupiter", "saturn", "neptune"):
                seen = []
                for index, messages in enumerate(turns(topic, 4)):
                    proxy = (a, b)[index % 2]
                    response = requests.post(
                        f"{proxy.url}/v1/chat/completions",
                        timeout=10,
                        json={"model": "stub-model", "messages": messages},
                    )
                    assert response.status_code == 200, response.text
                    seen.append(response.headers["x-llmlbd-backend"])
                assert len(set(seen)) == 1, (topic, seen)
                homes[topic] = seen[0]
            # the first turns found every backend idle: ties broke at random, not onto one
            assert len(set(homes.values())) >= 2
            assert '"reason": "affinity"' in a.log() + b.log()
