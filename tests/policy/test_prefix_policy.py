"""prefix_cache against a real Redis: affinity, spreading, healing, bounds and the key layout."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter

import pytest
import redis
from redis.crc import key_slot

from llmlbd.config.loader import ConfigError, config_from_dict
from llmlbd.errors import ModelNotFound, NoBackend, OverCapacity
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.profiles.prefix_cache import PrefixCache
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases

SYSTEM = (
    "You are the support assistant of a large online bookshop. Answer politely, quote "
    "prices in euros, never promise delivery dates you cannot check, and keep every answer "
    "under two hundred words. "
) * 12  # ~2,300 characters, ~36 blocks
_ids = itertools.count()


def make_policy(client, count=8, lb=None, names=None, worker="w1", seed=1, pool="default"):
    names = names or [f"b{i}" for i in range(count)]
    cfg = config_from_dict(
        {
            "lb_policy": "prefix_cache",
            "lb_config": lb or {},
            "backends": [
                {"name": n, "url": f"http://127.0.0.1:{9000 + i}"} for i, n in enumerate(names)
            ],
        }
    )
    keys = PoolKeys(pool)
    leases = Leases(client, keys, worker, 60_000)
    ctx = PolicyContext(cfg.backends, cfg.lb_config, keys, leases, client, rng=random.Random(seed))
    return PrefixCache(ctx)


def chat(messages, model="m", salt=""):
    body = {"model": model, "messages": messages}
    return RoutingRequest(
        request_id=f"req-{next(_ids)}",
        method="POST",
        path="/v1/chat/completions",
        body=body,
        model=model,
        cache_salt=salt,
    )


def conversation(topic, turns):
    """The message lists of a conversation's successive turns."""
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        messages = messages + [{"role": "user", "content": f"{topic}: question {turn} " * 8}]
        yield messages
        messages = messages + [{"role": "assistant", "content": f"{topic}: answer {turn} " * 20}]


def release(policy, decision):
    policy.ctx.leases.release(decision.request_id)


def fields_of(client, policy, request):
    keys = policy.ctx.keys
    return [
        {k: v for k, v in client.hgetall(keys.prefix(h)).items() if not k.startswith("#")}
        for h in policy.levels(request).hashes
    ]


def set_metrics(client, policy, name, **fields):
    seconds, micros = client.time()
    fields.setdefault("scraped_at", seconds * 1000 + micros // 1000)
    client.hset(policy.ctx.keys.backend(name), mapping=fields)


class TestAffinity:
    def test_multi_turn_conversation_sticks(self, redis_client):
        """Each turn of a conversation goes where the previous turns went, among busy traffic."""
        policy = make_policy(redis_client)
        rng = random.Random(7)
        held = []
        seen = set()
        for messages in conversation("rome", 8):
            # background: other conversations come and go
            for _ in range(6):
                held.append(
                    policy.pick(
                        chat([{"role": "user", "content": f"other {rng.random()}" * 30}]),
                        frozenset(),
                    )
                )
            while len(held) > 12:
                release(policy, held.pop(rng.randrange(len(held))))
            decision = policy.pick(chat(messages), frozenset())
            seen.add(decision.backend.name)
            release(policy, decision)
        assert len(seen) == 1
        assert decision.reason == "affinity"
        assert decision.details["matched_blocks"] > 36

    def test_shared_system_prompt_spreads(self, redis_client):
        """Conversations sharing one long system prompt spread by load instead of piling up
        on one backend past the load bound."""
        policy = make_policy(redis_client, lb={"maxLoadGap": 4})
        decisions = [
            policy.pick(chat(next(conversation(f"user{i}", 1))), frozenset()) for i in range(64)
        ]
        counts = Counter(d.backend.name for d in decisions)
        assert len(counts) == 8
        assert max(counts.values()) - min(counts.values()) <= policy.params.max_load_gap + 1
        # every backend now holds the system prompt, so none pays for it again
        first = fields_of(redis_client, policy, chat(next(conversation("x", 1))))[0]
        assert len(first) == 8
        # ...and a conversation's second turn still finds its own backend
        for d in decisions[:8]:
            release(policy, d)
        turns = conversation("user3", 2)
        next(turns)
        again = policy.pick(chat(next(turns)), frozenset())
        assert again.backend.name == decisions[3].backend.name

    def test_new_conversations_on_a_shared_prompt_follow_its_holder(self, redis_client):
        """sharedPrefix follow (the default): a new conversation on a shared system prompt
        goes to a backend that already holds the prompt while it is within the load bound,
        so the prompt's prefill is not paid again elsewhere; past the bound it spreads."""
        policy = make_policy(redis_client, lb={"maxLoadGap": 2, "maxLoadRatio": 1.0})
        first = policy.pick(chat(next(conversation("u0", 1))), frozenset())
        release(policy, first)
        home = first.backend.name
        held = []
        for i in range(1, 4):  # idle fleet: each one follows, reason shared_prefix
            decision = policy.pick(chat(next(conversation(f"u{i}", 1))), frozenset())
            assert decision.backend.name == home
            held.append(decision)
        assert held[-1].reason == "shared_prefix" and held[-1].inflight == 3
        # home at 3 in flight, everyone else at 0: past the bound (0 + 2), so the next
        # goes to the least loaded and becomes a second holder...
        over = policy.pick(chat(next(conversation("u4", 1))), frozenset())
        assert over.backend.name != home and over.reason == "overloaded"
        # ...and the next follows the less loaded of the two holders.
        again = policy.pick(chat(next(conversation("u5", 1))), frozenset())
        assert again.backend.name == over.backend.name and again.reason == "shared_prefix"

    def test_new_conversations_on_a_shared_prompt_spread_even_when_idle(self, redis_client):
        """sharedPrefix spread: sequential first turns sharing a system prompt spread;
        each later turn sticks."""
        policy = make_policy(redis_client, lb={"sharedPrefix": "spread"})
        homes = {}
        for i in range(16):
            decision = policy.pick(chat(next(conversation(f"idle{i}", 1))), frozenset())
            release(policy, decision)
            homes[i] = decision.backend.name
        assert len(set(homes.values())) == 8
        assert max(Counter(homes.values()).values()) <= 3
        for i in range(16):
            turns = conversation(f"idle{i}", 2)
            next(turns)
            decision = policy.pick(chat(next(turns)), frozenset())
            release(policy, decision)
            assert decision.backend.name == homes[i] and decision.reason == "affinity"

    def test_explain_matches_the_pick(self, redis_client):
        """The dry run names the backend the next pick takes, and changes nothing."""
        policy = make_policy(redis_client, count=4)
        turns = conversation("explain", 2)
        release(policy, policy.pick(chat(next(turns)), frozenset()))
        request = chat(next(turns))
        before = {k: redis_client.dump(k) for k in redis_client.scan_iter("*")}
        answer = policy.explain(request)
        assert {k: redis_client.dump(k) for k in redis_client.scan_iter("*")} == before
        decision = policy.pick(request, frozenset())
        assert answer["choice"] == decision.backend.name and answer["reason"] == "affinity"
        assert answer["prefix_match"] == decision.details["matched_blocks"]

    def test_overloaded_match_goes_to_least_loaded(self, redis_client):
        """A match on a backend loaded beyond the bound is not followed; the least loaded wins."""
        policy = make_policy(redis_client, count=4, lb={"maxLoadGap": 2, "maxLoadRatio": 1.0})
        turns = conversation("t", 2)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        busy = [policy.ctx.leases.acquire(f"bg{i}", home.backend.name) for i in range(3)]
        assert all(r.backend for r in busy)
        decision = policy.pick(chat(next(turns)), frozenset())
        assert decision.backend.name != home.backend.name
        assert decision.reason == "overloaded" and decision.inflight == 1

    def test_default_bound_keeps_a_match_on_a_somewhat_busier_backend(self, redis_client):
        """With the default bound (32 requests, 1.5x) a conversation stays home while its
        backend is 20 requests busier than an idle one: leaving would cost the prefill of
        its whole history elsewhere. Past 32 it moves."""
        policy = make_policy(redis_client, count=4)
        turns = conversation("busy-home", 3)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        name = home.backend.name
        busy = [policy.ctx.leases.acquire(f"bg{i}", name) for i in range(20)]
        assert all(r.backend == name for r in busy)
        decision = policy.pick(chat(next(turns)), frozenset())
        assert (decision.backend.name, decision.reason) == (name, "affinity")
        release(policy, decision)
        more = [policy.ctx.leases.acquire(f"bg{i}", name) for i in range(20, 33)]
        assert all(r.backend == name for r in more)  # 33 in flight against 0
        decision = policy.pick(chat(next(turns)), frozenset())
        assert decision.backend.name != name and decision.reason == "overloaded"

    def test_default_bound_keeps_a_shared_prompt_on_its_holder_beside_an_idle_backend(
        self, redis_client
    ):
        """Workload 2 of the peers benchmark: fewer shared system prompts than backends, so
        one backend holds none and stays idle while each prompt's holder carries that
        prompt's traffic (about 16 in flight at 10 req/s, with Poisson peaks above). With
        the default bound a new conversation on the prompt still follows its holder at 24
        in flight against 0 (the gap of 16 sent it to the idle backend: a cold prefill of
        the whole prompt there, and a 4th copy of it); only past 32 does it spread."""
        policy = make_policy(redis_client, count=4)
        for i in range(2):  # the second one makes the prompt a shared prefix
            decision = policy.pick(chat(next(conversation(f"s{i}", 1))), frozenset())
            release(policy, decision)
        home = decision.backend.name
        busy = [policy.ctx.leases.acquire(f"bg{i}", home) for i in range(24)]
        assert all(r.backend == home for r in busy)
        decision = policy.pick(chat(next(conversation("s2", 1))), frozenset())
        assert (decision.backend.name, decision.reason) == (home, "shared_prefix")
        assert decision.inflight == 25
        release(policy, decision)
        more = [policy.ctx.leases.acquire(f"bg{i}", home) for i in range(24, 33)]
        assert all(r.backend == home for r in more)  # 33 in flight against 0
        decision = policy.pick(chat(next(conversation("s3", 1))), frozenset())
        assert decision.backend.name != home and decision.reason == "overloaded"

    def test_short_match_is_a_miss(self, redis_client):
        """A match shorter than minMatchBlocks does not count: the request goes by load."""
        policy = make_policy(redis_client, count=4, lb={"minMatchBlocks": 40})
        first = policy.pick(chat([{"role": "user", "content": "x" * 2000}]), frozenset())
        second = policy.pick(
            chat([{"role": "user", "content": "x" * 2000 + "y" * 100}]), frozenset()
        )
        assert second.reason == "miss" and second.backend.name != first.backend.name
        assert second.details["best_blocks"] == 31

    def test_queue_metric_counts_as_load_only_when_fresh(self, redis_client):
        """A fresh waiting queue breaks affinity; a stale one is ignored."""
        policy = make_policy(redis_client, count=4)
        turns = conversation("q", 3)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        set_metrics(redis_client, policy, home.backend.name, waiting=30, running=8, scraped_at=1)
        stale = policy.pick(chat(next(turns)), frozenset())
        release(policy, stale)
        assert stale.backend.name == home.backend.name and stale.reason == "affinity"
        set_metrics(redis_client, policy, home.backend.name, waiting=30, running=8)
        fresh = policy.pick(chat(next(turns)), frozenset())
        assert fresh.backend.name != home.backend.name and fresh.reason == "overloaded"

    def test_full_kv_cache_breaks_affinity(self, redis_client):
        """A backend whose fresh KV use is above maxKvUsage is not followed."""
        policy = make_policy(redis_client, count=4, lb={"maxKvUsage": 0.9})
        turns = conversation("kv", 2)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        set_metrics(redis_client, policy, home.backend.name, kv_usage=0.97)
        assert policy.pick(chat(next(turns)), frozenset()).backend.name != home.backend.name

    def test_miss_goes_to_least_loaded(self, redis_client):
        """Without a match, the backend with the fewest requests in flight is chosen."""
        policy = make_policy(redis_client, count=3)
        for name, count in (("b0", 2), ("b1", 0), ("b2", 1)):
            for i in range(count):
                policy.ctx.leases.acquire(f"{name}-{i}", name)
        decision = policy.pick(chat([{"role": "user", "content": "brand new " * 50}]), frozenset())
        assert decision.backend.name == "b1" and decision.reason == "miss"

    def test_two_instances_share_the_index(self, redis_url):
        """Two proxies (own clients, workers and random seeds) send a conversation to one backend."""
        one = redis.Redis.from_url(redis_url, decode_responses=True)
        two = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            a = make_policy(one, worker="proxy-a", seed=1)
            b = make_policy(two, worker="proxy-b", seed=2)
            seen = set()
            for turn, messages in enumerate(conversation("shared", 6)):
                decision = (a if turn % 2 else b).pick(chat(messages), frozenset())
                seen.add(decision.backend.name)
                release(a, decision)
            assert len(seen) == 1
        finally:
            one.close()
            two.close()


class TestHealing:
    @pytest.mark.parametrize("how", ["down", "drained"])
    def test_unhealthy_backend_loses_traffic_and_keys_heal(self, redis_client, how):
        """A conversation leaves a down or drained backend at once; its entries are replaced."""
        policy = make_policy(redis_client, count=4)
        turns = conversation("heal", 3)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        if how == "down":
            redis_client.hset(policy.ctx.keys.backend(home.backend.name), "health", "down")
        else:
            redis_client.sadd(policy.ctx.keys.drained, home.backend.name)
        request = chat(next(turns))
        moved = policy.pick(request, frozenset())
        release(policy, moved)
        assert moved.backend.name != home.backend.name
        assert moved.details["healed"] >= 1
        for fields in fields_of(redis_client, policy, request):
            assert set(fields) == {moved.backend.name}
        follow = policy.pick(chat(next(turns)), frozenset())
        assert follow.backend.name == moved.backend.name and follow.reason == "affinity"

    def test_removed_backend_entries_ignored_and_healed(self, redis_client):
        """After a backend leaves the pool, nothing routes to it and no key keeps pointing at it."""
        policy = make_policy(redis_client, count=4)
        turns = conversation("gone", 2)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        remaining = [f"b{i}" for i in range(4) if f"b{i}" != home.backend.name]
        smaller = make_policy(redis_client, names=remaining)
        request = chat(next(turns))
        moved = smaller.pick(request, frozenset())
        assert moved.backend.name in remaining
        for fields in fields_of(redis_client, smaller, request):
            assert home.backend.name not in fields

    def test_excluded_backend_keeps_its_entries(self, redis_client):
        """A retry that excludes a backend goes elsewhere without erasing that backend's entries."""
        policy = make_policy(redis_client, count=3)
        turns = conversation("retry", 2)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        request = chat(next(turns))
        other = policy.pick(request, frozenset({home.backend.name}))
        assert other.backend.name != home.backend.name
        level1 = fields_of(redis_client, policy, request)[0]
        assert home.backend.name in level1

    def test_no_route_errors(self, redis_client):
        """All drained -> 503, model served nowhere -> 404, all at the cap -> 429."""
        policy = make_policy(redis_client, count=2, lb={"maxRequestCount": 1})
        keys = policy.ctx.keys
        redis_client.hset(keys.backend("b0"), "models", "other")
        redis_client.hset(keys.backend("b1"), "models", "other")
        with pytest.raises(ModelNotFound):
            policy.pick(chat([{"role": "user", "content": "hi"}]), frozenset())
        redis_client.delete(keys.backend("b0"), keys.backend("b1"))
        policy.pick(chat([{"role": "user", "content": "hi"}]), frozenset())
        policy.pick(chat([{"role": "user", "content": "hi"}]), frozenset())
        with pytest.raises(OverCapacity):
            policy.pick(chat([{"role": "user", "content": "hi"}]), frozenset())
        redis_client.sadd(keys.drained, "b0", "b1")
        with pytest.raises(NoBackend):
            policy.pick(chat([{"role": "user", "content": "hi"}]), frozenset())


def redis_now_ms(client):
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


class TestRefresh:
    """A use rewrites a level's field and TTL only when the field is at least TTL / 8 old
    (12.5 s for a TTL of 100 s); the owned set's scores (eviction order) every time."""

    def test_only_levels_older_than_the_interval_are_refreshed(self, redis_client):
        policy = make_policy(redis_client, count=2, lb={"redisKeyTTL": 100})
        turns = conversation("refresh", 2)
        first = chat(next(turns))
        decision = policy.pick(first, frozenset())
        release(policy, decision)
        home = decision.backend.name
        hashes = policy.levels(first).hashes
        keys = [policy.ctx.keys.prefix(h) for h in hashes]
        # Even levels were last written 5 s ago (within the interval), odd ones 13 s ago.
        now = redis_now_ms(redis_client)
        written = {}
        for j, key in enumerate(keys):
            written[key] = now - (5_000 if j % 2 == 0 else 13_000)
            redis_client.hset(key, home, written[key])
            redis_client.pexpire(key, 50_000)
        second = chat(next(turns))
        decision = policy.pick(second, frozenset())
        release(policy, decision)
        assert decision.backend.name == home and decision.reason == "affinity"
        after = redis_now_ms(redis_client)
        for j, key in enumerate(keys):
            used = int(redis_client.hget(key, home))
            if j % 2 == 0:  # fresh enough: neither the field nor the TTL rewritten
                assert used == written[key] and redis_client.pttl(key) <= 50_000
            else:
                assert now <= used <= after and redis_client.pttl(key) > 90_000
        # The new turn's own levels are written, with the TTL.
        new_keys = [policy.ctx.keys.prefix(h) for h in policy.levels(second).hashes[len(keys) :]]
        assert new_keys
        for key in new_keys:
            assert now <= int(redis_client.hget(key, home)) <= after
            assert 90_000 < redis_client.pttl(key) <= 100_000
        # The owned set's scores (the eviction order) follow every use.
        owned = policy.ctx.keys.prefix_owned_by(home)
        assert all(now <= redis_client.zscore(owned, h) <= after for h in hashes)

    def test_a_field_is_rewritten_at_most_once_per_interval(self, redis_client):
        policy = make_policy(redis_client, count=1, lb={"redisKeyTTL": 100})
        request = chat([{"role": "user", "content": "refresh me " * 100}])
        keys = [policy.ctx.keys.prefix(h) for h in policy.levels(request).hashes]
        release(policy, policy.pick(request, frozenset()))
        first = [redis_client.hget(key, "b0") for key in keys]
        for _ in range(5):
            time.sleep(0.002)  # a later ms each time
            release(policy, policy.pick(chat(request.body["messages"]), frozenset()))
        assert [redis_client.hget(key, "b0") for key in keys] == first

    def test_eviction_follows_every_use(self, redis_client):
        """A prompt used again within the interval (its fields not rewritten) is still the
        most recently used one for the per-backend cap: the least recently used goes."""
        policy = make_policy(redis_client, count=1)
        # 24 blocks of 16 tokens = 24 entries of 64 chars: two prompts of 12 levels.
        redis_client.hset(
            policy.ctx.keys.backend("b0"), mapping={"num_gpu_blocks": 24, "block_size": 16}
        )
        prompts = {name: chat([{"role": "user", "content": f"{name} " * 384}]) for name in "abc"}
        levels = {name: policy.levels(r).hashes for name, r in prompts.items()}
        assert all(len(hashes) == 12 for hashes in levels.values())
        owned = policy.ctx.keys.prefix_owned_by("b0")
        for name in "aba":  # a, b, then a again (a moment later: fields not rewritten)
            time.sleep(0.005)
            release(policy, policy.pick(chat(prompts[name].body["messages"]), frozenset()))
        assert redis_client.zcard(owned) == 24
        time.sleep(0.005)
        decision = policy.pick(prompts["c"], frozenset())
        release(policy, decision)
        assert decision.details["evicted"] == 12
        assert set(redis_client.zrange(owned, 0, -1)) == set(levels["a"]) | set(levels["c"])


class TestBoundedMemory:
    def test_every_key_has_a_ttl(self, redis_client):
        """Every prefix and owned-set key expires."""
        policy = make_policy(redis_client, count=3)
        for i in range(10):
            for messages in conversation(f"c{i}", 2):
                release(policy, policy.pick(chat(messages), frozenset()))
        keys = list(redis_client.scan_iter(policy.ctx.keys.prefix_pattern())) + list(
            redis_client.scan_iter(policy.ctx.keys.prefix_owned + ":*")
        )
        assert keys and all(0 < redis_client.pttl(key) <= 1_800_000 for key in keys)

    def test_per_backend_cap_sized_from_kv_cache(self, redis_client):
        """num_gpu_blocks x block_size caps a backend's entries; evicted fields are removed."""
        policy = make_policy(redis_client, count=1)
        # 8 blocks of 16 tokens = 128 tokens = 8 entries of 64 chars at 4 chars per token
        redis_client.hset(
            policy.ctx.keys.backend("b0"), mapping={"num_gpu_blocks": 8, "block_size": 16}
        )
        for i in range(12):
            decision = policy.pick(chat([{"role": "user", "content": f"{i} " * 400}]), frozenset())
            release(policy, decision)
        owned = policy.ctx.keys.prefix_owned_by("b0")
        assert redis_client.zcard(owned) == 8
        holders = sum(
            "b0" in redis_client.hgetall(key)  # fields, not the '#' counter
            for key in redis_client.scan_iter(policy.ctx.keys.prefix_pattern())
        )
        assert holders <= 8 + len(policy.index.pending)
        assert decision.details["evicted"] > 0

    def test_keys_of_one_call_share_a_slot(self, redis_client):
        """Every key an acquire declares is in the pool's hash slot (Redis Cluster)."""
        policy = make_policy(redis_client, count=3, pool="tenant-a")
        request = chat(next(conversation("slot", 1)))
        keys = policy.index.call_keys("m")
        # ...and so are the keys the script names from the pool's base key: the prompt's
        # prefix keys, the evicted entries' and the per-backend ones.
        keys += [policy.ctx.keys.prefix(h) for h in policy.levels(request).hashes]
        keys += [policy.ctx.keys.prefix("abc"), policy.ctx.keys.prefix("def")]
        keys += [policy.ctx.keys.backend("b0"), policy.ctx.keys.prefix_owned_by("b2")]
        assert len({key_slot(key.encode()) for key in keys}) == 1
        assert all("{tenant-a}" in key for key in keys)


class TestWeighted:
    def test_gie_preset_follows_prefix_without_metrics(self, redis_client):
        """With the gie-v1 weights and no metrics, the prefix scorer decides."""
        policy = make_policy(
            redis_client, count=4, lb={"scoring": "weighted", "scorerWeights": "gie-v1"}
        )
        seen = set()
        for messages in conversation("w", 4):
            decision = policy.pick(chat(messages), frozenset())
            seen.add(decision.backend.name)
        assert len(seen) == 1 and decision.reason == "weighted_hit"

    def test_queue_outweighs_prefix(self, redis_client):
        """A long queue on the holder outweighs a partial prefix match with queue weight high."""
        policy = make_policy(
            redis_client,
            count=2,
            lb={"scoring": "weighted", "scorerWeights": {"prefix": 1, "queue": 5}},
        )
        turns = conversation("wq", 2)
        home = policy.pick(chat(next(turns)), frozenset())
        release(policy, home)
        other = "b1" if home.backend.name == "b0" else "b0"
        set_metrics(redis_client, policy, home.backend.name, waiting=10)
        set_metrics(redis_client, policy, other, waiting=0)
        assert policy.pick(chat(next(turns)), frozenset()).backend.name == other


class TestConfig:
    def test_keys_rejected_for_other_policies(self):
        """prefix_cache's keys are refused under another lb_policy."""
        with pytest.raises(ConfigError, match="applies to lb_policy prefix_cache"):
            config_from_dict({"lb_policy": "global_least_request", "lb_config": {"blockChars": 64}})

    @pytest.mark.parametrize(
        "key,value",
        [
            ("scorerWeights", {"bogus": 1}),
            ("scorerWeights", "nope"),
            ("maxBlocks", 0),
            ("maxLoadRatio", 0.5),
            ("scoring", "fancy"),
        ],
    )
    def test_bad_values(self, key, value):
        """Invalid values name the key."""
        with pytest.raises(ConfigError, match=key):
            config_from_dict({"lb_policy": "prefix_cache", "lb_config": {key: value}})

    def test_higress_config_accepted(self):
        """A Higress prefix_cache plugin config loads unchanged."""
        cfg = config_from_dict(
            {
                "lb_policy": "prefix_cache",
                "lb_config": {"serviceFQDN": "redis.local", "servicePort": 6379, "redisKeyTTL": 60},
            }
        )
        assert cfg.lb_config.redisKeyTTL == 60
