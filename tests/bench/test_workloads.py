"""The peer benchmark's workload generators: seeded, shaped as documented, no exploitable order."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from bench.peerbench.scenarios import SCENARIOS
from bench.peerbench.workloads import (
    CRITICALITY_HEADER,
    ChatPopulation,
    SingleShotPopulation,
    lognormal_int,
    poisson_arrivals,
)


def _words(body: dict) -> int:
    return sum(len(m["content"].split()) for m in body["messages"])


def test_poisson_arrivals_are_seeded_and_have_the_rate():
    times = poisson_arrivals(50.0, 200.0, random.Random(3))
    assert times == poisson_arrivals(50.0, 200.0, random.Random(3))
    assert times == sorted(times) and times[0] > 0 and times[-1] < 200.0
    assert len(times) / 200.0 == pytest.approx(50.0, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # exponential gaps: the standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(statistics.fmean(gaps), rel=0.1)
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 1.0, random.Random(1))


def test_same_seed_same_requests_other_seed_other_requests():
    def bodies(seed: int) -> list[dict]:
        population = SCENARIOS["kv-pressure"].population(seed)
        rng = random.Random(seed)
        out = []
        for _ in range(30):
            planned = population.next(rng)
            population.finished(planned, True)
            out.append(planned.body)
        return out

    assert bodies(1) == bodies(1)
    assert bodies(1) != bodies(2)


def test_kv_pressure_users_own_a_long_context_that_keeps_growing():
    population = SCENARIOS["kv-pressure"].population(7)
    assert isinstance(population, ChatPopulation)
    user = population.users[0]
    sizes = []
    for _ in range(5):
        planned = population.turn(user)
        population.finished(planned, True)
        sizes.append(_words(planned.body))
    assert sizes[0] > 2000  # its own document, ~3,000 simulator tokens
    assert sizes == sorted(sizes) and len(set(sizes)) == 5
    # the previous turn is a prefix of the next one (what a prefix cache can reuse)
    planned = population.turn(user)
    assert planned.body["messages"][:-1] == user.messages[:-1]
    # every user's document is its own
    assert len({u.system for u in population.users}) == len(population.users)


def test_shared_system_conversations_reuse_few_prompts_and_restart():
    population = SCENARIOS["shared-system"].population(7)
    rng = random.Random(1)
    systems, turns = set(), []
    for _ in range(400):
        planned = population.next(rng)
        population.finished(planned, True)
        systems.add(planned.body["messages"][0]["content"])
        turns.append(sum(1 for m in planned.body["messages"] if m["role"] == "user"))
    assert len(systems) == 3
    assert max(turns) == 3 and min(turns) == 1


def test_a_failed_turn_is_dropped_and_the_user_is_idle_again():
    population = ChatPopulation(1, users=1, user_words=(5, 5), max_tokens=8, own_context_words=10)
    first = population.turn(population.users[0])
    assert not population.has_idle()
    population.finished(first, False)
    assert population.has_idle() and population.users[0].messages == first.body["messages"][:-1]


def test_random_idle_user_order_has_no_cycle_a_round_robin_could_ride():
    population = ChatPopulation(3, users=8, user_words=(5, 5), max_tokens=8, own_context_words=10)
    rng = random.Random(5)
    picks = []
    for _ in range(400):
        planned = population.next(rng)
        population.finished(planned, True)
        picks.append(planned.client)
    # With 4 backends, a rotation would send user u's turns to backend (position % 4) on a
    # fixed schedule; random picks make each user's turn positions spread over all residues.
    for user in range(8):
        residues = {i % 4 for i, p in enumerate(picks) if p == user}
        assert residues == {0, 1, 2, 3}
    assert picks != sorted(picks)


def test_single_shot_prompts_share_no_block_and_have_lognormal_lengths():
    population = SingleShotPopulation(9, "chat")
    rng = random.Random(2)
    planned = [population.next(rng) for _ in range(300)]
    openings = {p.body["messages"][0]["content"][:20] for p in planned}
    assert len(openings) == 300  # a unique request id opens every prompt
    lengths = [_words(p.body) for p in planned]
    assert 200 < statistics.median(lengths) < 450
    assert max(lengths) > 3 * statistics.median(lengths)  # a long tail
    assert all(8 <= p.body["max_tokens"] <= 256 for p in planned)


def test_lognormal_int_is_clipped():
    rng = random.Random(1)
    values = [lognormal_int(rng, 100, 2.0, 10, 200) for _ in range(500)]
    assert min(values) == 10 and max(values) == 200


def test_tiers_mix_criticality_and_adapters():
    population = SingleShotPopulation(4, "tiers")
    rng = random.Random(4)
    planned = [population.next(rng) for _ in range(1000)]
    critical = [p for p in planned if p.critical]
    assert 0.25 < len(critical) / len(planned) < 0.35
    assert {p.headers[CRITICALITY_HEADER] for p in planned} == {"critical", "sheddable"}
    models = [p.body["model"] for p in planned]
    assert 0.45 < models.count("sim-llama") / len(models) < 0.55
    assert {"lora-a", "lora-b"} <= set(models)


def test_embeddings_are_short_and_unique():
    population = SingleShotPopulation(4, "embed")
    rng = random.Random(4)
    planned = [population.next(rng) for _ in range(100)]
    assert {p.path for p in planned} == {"/v1/embeddings"}
    assert len({p.body["input"] for p in planned}) == 100
    assert all(len(p.body["input"].split()) <= 32 for p in planned)


def test_warmup_sends_each_users_first_turn_once():
    population = SCENARIOS["kv-pressure"].population(7)
    warm = population.warmup()
    assert sorted(p.client for p in warm) == list(range(len(population.users)))
    assert [p.client for p in warm] != sorted(p.client for p in warm)  # shuffled
    assert not population.has_idle()


def test_every_scenario_is_named_and_runnable():
    assert list(SCENARIOS) == [
        "kv-pressure",
        "kv-pressure-closed",
        "shared-system",
        "single-shot",
        "tiers",
        "embeddings",
    ]
    for name, scenario in SCENARIOS.items():
        assert scenario.name == name and scenario.rates and scenario.servers
        population = scenario.population(1)
        assert population.next(random.Random(1)).body["model"]
