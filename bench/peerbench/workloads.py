"""The five seeded workloads of the peer benchmark (pure: no I/O, no clocks).

Every scenario is a *population* of clients plus an arrival process. An open-loop
run draws Poisson arrivals at a rate; each arrival is the next request of a
client picked at random among the idle ones (a chat user waits for its answer
before its next turn; an arrival that finds every user waiting is counted as
skipped). A closed-loop run keeps every user busy: the next turn leaves as
soon as the answer is in. Picking the client at random, with a seeded RNG,
means the arrival order carries no cycle that a round robin could ride.

Assistant turns are written by the workload (a seeded text of the answer's
length), not copied from the server's answer, so every router is sent the very
same conversation texts whichever backend answered.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = [
    "MODEL",
    "ChatPopulation",
    "Planned",
    "Population",
    "SingleShotPopulation",
    "poisson_arrivals",
    "text",
]

MODEL = "sim-llama"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
CRITICALITY_HEADER = "x-llmlbd-criticality"

WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an which have "
    "not but had they his one all were can there been if more when will would who so no out "
    "up into do time only could new about other than then its also two these may first any "
    "like now my such make over our even most after well where much should kernel cache block "
    "token router fleet latency budget river garden engine market ticket season planet museum "
    "harbor signal pattern theory archive lantern"
).split()


def text(rng: random.Random, words: int) -> str:
    """*words* random common words and a full stop (about 1.5 simulator tokens a word)."""
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def poisson_arrivals(rate: float, duration: float, rng: random.Random) -> list[float]:
    """Arrival offsets (seconds from the start) of a Poisson process of *rate* per second."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    times: list[float] = []
    at = rng.expovariate(rate)
    while at < duration:
        times.append(at)
        at += rng.expovariate(rate)
    return times


def lognormal_int(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    """A log-normal draw with this median, clipped to [low, high] (prompt and answer lengths
    of real chat traces are close to log-normal)."""
    return max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


@dataclass
class Planned:
    """One request, ready to send."""

    path: str
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    client: int = -1  # the user (chat) or -1 (no state)
    critical: bool | None = None  # None: the workload has no criticality
    answer: str = ""  # the assistant turn to append once answered


class Population:
    """Clients that produce requests; subclasses say what a request is."""

    def has_idle(self) -> bool:
        return True

    def idle_count(self) -> int:
        return 1

    def next(self, rng: random.Random) -> Planned:
        raise NotImplementedError

    def finished(self, planned: Planned, ok: bool) -> None:
        """The answer to *planned* is in (or it failed): its client is idle again."""

    def warmup(self) -> list[Planned]:
        """Requests sent before measuring (each user's first turn), in a seeded order."""
        return []


@dataclass
class ChatUser:
    index: int
    rng: random.Random
    system: str = ""
    messages: list[dict] = field(default_factory=list)
    turns_left: int = 0
    busy: bool = False


class ChatPopulation(Population):
    """Users holding multi-turn chats.

    *own_context_words* > 0 gives every user its own long document as the system
    message, kept for the whole run (the context only grows: workload 1);
    otherwise each conversation starts with one of *shared_systems* and lasts
    *turns* turns, then the user starts a new one (workload 2).
    """

    def __init__(
        self,
        seed: int,
        users: int,
        user_words: tuple[int, int],
        max_tokens: int,
        own_context_words: int = 0,
        shared_systems: list[str] | None = None,
        turns: tuple[int, int] = (1_000_000, 1_000_000),
    ) -> None:
        self.max_tokens = max_tokens
        self.user_words = user_words
        self.turns = turns
        self.shared = shared_systems or []
        self.users = [ChatUser(i, random.Random(seed * 7919 + i)) for i in range(users)]
        for user in self.users:
            if own_context_words:
                user.system = f"Document {seed}-{user.index}. " + text(user.rng, own_context_words)

    def has_idle(self) -> bool:
        return any(not u.busy for u in self.users)

    def idle_count(self) -> int:
        return sum(1 for u in self.users if not u.busy)

    def next(self, rng: random.Random) -> Planned:
        idle = [u for u in self.users if not u.busy]
        if not idle:
            raise LookupError("every user is waiting for an answer")
        return self.turn(rng.choice(idle))

    def turn(self, user: ChatUser) -> Planned:
        if user.turns_left <= 0:
            system = user.system or user.rng.choice(self.shared)
            user.messages = [{"role": "system", "content": system}]
            user.turns_left = user.rng.randint(*self.turns)
        user.messages.append(
            {"role": "user", "content": text(user.rng, user.rng.randint(*self.user_words))}
        )
        user.turns_left -= 1
        user.busy = True
        body = {
            "model": MODEL,
            "messages": list(user.messages),
            "stream": True,
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        # About 1.5 simulator tokens a word: an answer of max_tokens tokens.
        answer = text(user.rng, max(1, self.max_tokens * 2 // 3))
        return Planned(CHAT, body, client=user.index, answer=answer)

    def finished(self, planned: Planned, ok: bool) -> None:
        user = self.users[planned.client]
        user.busy = False
        if ok:
            user.messages.append({"role": "assistant", "content": planned.answer})
        else:
            # The turn did not happen: drop it, as a user would retype it.
            user.messages.pop()
            user.turns_left += 1

    def warmup(self) -> list[Planned]:
        order = list(self.users)
        random.Random(len(order)).shuffle(order)
        return [self.turn(user) for user in order]


class SingleShotPopulation(Population):
    """Independent requests, no reuse (workloads 3, 4 and 5).

    *kind*: ``chat`` (log-normal prompt and answer lengths, a unique opening so
    no two prompts share a block), ``tiers`` (short prompts over the base model
    and two LoRA adapters, critical or sheddable), ``embed`` (short inputs).
    """

    def __init__(self, seed: int, kind: str, critical_share: float = 0.3) -> None:
        if kind not in ("chat", "tiers", "embed"):
            raise ValueError(f"unknown single-shot kind {kind!r}")
        self.kind = kind
        self.seed = seed
        self.critical_share = critical_share
        self.count = 0

    def next(self, rng: random.Random) -> Planned:
        self.count += 1
        opening = f"Request {self.seed}-{self.count}: "
        if self.kind == "embed":
            return Planned(
                EMBEDDINGS, {"model": MODEL, "input": opening + text(rng, rng.randint(5, 30))}
            )
        if self.kind == "chat":
            words = lognormal_int(rng, 300, 0.9, 10, 3000)
            max_tokens = lognormal_int(rng, 64, 0.7, 8, 256)
            body = _chat_body(MODEL, opening + text(rng, words), max_tokens)
            return Planned(CHAT, body)
        critical = rng.random() < self.critical_share
        model = rng.choice([MODEL, MODEL, "lora-a", "lora-b"])
        body = _chat_body(model, opening + text(rng, rng.randint(40, 200)), 32)
        level = "critical" if critical else "sheddable"
        return Planned(CHAT, body, headers={CRITICALITY_HEADER: level}, critical=critical)


def _chat_body(model: str, prompt: str, max_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
