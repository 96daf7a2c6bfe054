"""The engine: continuous batching over a bounded waiting queue, one greenlet.

Each loop iteration is one vLLM-style engine step:

1. Running requests first, in admission order: a decoding request needs one
   token, a request still prefilling takes a chunk of what is left of the
   token budget (chunked prefill). A request that needs a new KV block when
   none is free preempts the most recently admitted running request (vLLM's
   recompute preemption: its blocks are freed, it goes back to the head of
   the queue and later recomputes its prompt and output so far).
2. Then, if nothing was preempted, waiting requests in FIFO order while
   there is a free slot (``max_num_seqs``), budget and KV room. A request
   whose LoRA adapter is not resident is skipped ("deferred"); one that does
   not fit in the KV cache stops admission (head-of-line, as vLLM).
3. Sleep for the profile's step time times ``time_scale``, then emit one
   token for every request whose sequence is fully computed.

Prefix-cache hits are decided at admission: the cached leading blocks count
as computed, so only uncached prompt tokens cost prefill time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import gevent
from gevent.event import Event

from llmlbd.sim.config import SimConfig
from llmlbd.sim.kvcache import KVCache
from llmlbd.sim.lora import LoraSlots

__all__ = ["Engine", "SimRequest", "QueueFull"]


class QueueFull(Exception):
    """The waiting queue holds ``max_num_queued_reqs`` requests already."""


@dataclass(eq=False)
class SimRequest:
    request_id: str
    lora: str | None
    prompt_len: int
    block_hashes: list[int]
    output_target: int
    finish_reason_planned: str
    max_tokens_param: int | None = None
    n: int = 1
    # What a KV event's BlockStored carries besides the hashes (kv_events.py).
    prompt_ids: list[int] | None = None
    cache_salt: str | None = None
    arrival: float = field(default_factory=time.monotonic)
    # Engine state below; the HTTP side only reads it.
    num_computed: int = 0
    output_tokens: int = 0
    pinned: list[int] = field(default_factory=list)
    anonymous_blocks: int = 0
    cached_tokens: int = 0
    computed_prompt_tokens: int = 0
    preemptions: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    running: bool = False
    wakeup: Event = field(default_factory=Event)

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.output_tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def blocks_held(self) -> int:
        return len(self.pinned) + self.anonymous_blocks


class Engine:
    def __init__(self, config: SimConfig, metrics=None) -> None:
        self.config = config
        self.kv = KVCache(config.num_gpu_blocks, config.block_size)
        self.loras = LoraSlots(
            config.loras, config.max_loras, config.lora_load_s * config.time_scale
        )
        self.metrics = metrics
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.steps = 0
        self.preemptions = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.busy_s = 0.0
        self._wake = Event()
        self._carry = 0.0  # seconds the engine is behind its simulated clock
        self._loop: gevent.Greenlet | None = None
        self.kv_events = None  # a KVEventPublisher: flushed once per engine step

    # -- the HTTP side -------------------------------------------------------

    def start(self) -> None:
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.kill()
            self._loop = None

    def submit(self, request: SimRequest) -> None:
        if len(self.waiting) >= self.config.max_num_queued_reqs:
            raise QueueFull()
        self.waiting.append(request)
        self._wake.set()

    def abort(self, request: SimRequest) -> None:
        """The client went away: free what the request holds."""
        if request.finished:
            return
        if request.running:
            self.running.remove(request)
            self._release(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self._finish(request, "abort", time.monotonic())
        self._wake.set()

    def cache_match(self, block_hashes: list[int]) -> int:
        return self.kv.match(block_hashes)

    def deferred_waiting(self) -> int:
        now = time.monotonic()
        resident = set(self.loras.resident(now))
        return sum(1 for r in self.waiting if r.lora is not None and r.lora not in resident)

    def adapters_in_flight(self) -> tuple[list[str], list[str]]:
        """(adapters of running requests, adapters of waiting requests), first-seen order."""
        running = list(dict.fromkeys(r.lora for r in self.running if r.lora))
        waiting = list(dict.fromkeys(r.lora for r in self.waiting if r.lora))
        return running, waiting

    # -- the loop ------------------------------------------------------------

    def _run(self) -> None:
        scale = self.config.time_scale
        profile = self.config.profile
        while True:
            scheduled, decode_seqs, decode_context = self._schedule()
            if self.kv_events is not None:
                self.kv_events.flush()
            if self.metrics is not None and (self.running or self.waiting):
                self.metrics.on_scheduled()
            if not scheduled:
                self._idle()
                continue
            tokens = sum(n for _, n in scheduled)
            duration = profile.step_time(decode_seqs, tokens - decode_seqs, decode_context) * scale
            self.busy_s += duration
            self._sleep(duration)
            self._complete(scheduled, tokens)

    def _sleep(self, duration: float) -> None:
        # gevent wakes up late (loop overhead, timer granularity), about a
        # millisecond per step, which would stretch a 6 ms step by 15 %.
        # Carry the error into the next step so the average step time is the
        # profile's; cap the carry so a CPU stall does not turn into a burst.
        start = time.monotonic()
        target = duration - self._carry
        if target > 0:
            gevent.sleep(target)
        else:
            gevent.sleep(0)
        self._carry += (time.monotonic() - start) - duration
        cap = max(duration, 0.002)
        self._carry = min(max(self._carry, -cap), cap)

    def _idle(self) -> None:
        self._carry = 0.0
        now = time.monotonic()
        timeout = None
        ready_at = self.loras.next_ready_at(now)
        if ready_at is not None:
            timeout = max(ready_at - now, 0.0005)
        self._wake.clear()
        self._wake.wait(timeout)

    def _schedule(self) -> tuple[list[tuple[SimRequest, int]], int, int]:
        """(requests and their token counts, decoding sequences, their context tokens)."""
        budget = self.config.max_num_batched_tokens
        block_size = self.config.block_size
        scheduled: list[tuple[SimRequest, int]] = []
        decode_seqs = 0
        decode_context = 0
        preempted = False
        now = time.monotonic()

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            to_compute = request.seq_len - request.num_computed
            count = min(to_compute, budget)
            needed = -(-(request.num_computed + count) // block_size) - request.blocks_held
            while needed > 0 and not self.kv.grow(needed):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            if not request.running:
                continue
            if needed > 0:
                request.anonymous_blocks += needed
            scheduled.append((request, count))
            budget -= count
            if to_compute == 1:
                decode_seqs += 1
                decode_context += request.seq_len
            index += 1

        if preempted:
            return scheduled, decode_seqs, decode_context

        deferred: list[SimRequest] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.lora is not None and not self.loras.is_ready(request.lora, now):
                deferred.append(self.waiting.popleft())
                continue
            if not self._admit(request, now):
                break
            self.waiting.popleft()
            count = min(request.seq_len - request.num_computed, budget)
            scheduled.append((request, count))
            budget -= count
        self.waiting.extendleft(reversed(deferred))
        return scheduled, decode_seqs, decode_context

    def _admit(self, request: SimRequest, now: float) -> bool:
        block_size = self.config.block_size
        # At least one prompt token is always computed, so a fully cached
        # prompt still runs one forward pass (as in vLLM).
        limit = (request.seq_len - 1) // block_size
        hashes = request.block_hashes
        hit_blocks = self.kv.match(hashes[:limit])
        total_blocks = -(-request.seq_len // block_size)
        if not self.kv.allocate(hashes, total_blocks - len(hashes), request):
            return False
        request.pinned = list(hashes)
        request.anonymous_blocks = total_blocks - len(hashes)
        request.num_computed = hit_blocks * block_size
        request.running = True
        self.running.append(request)
        if request.lora is not None:
            self.loras.started(request.lora)
        hits = hit_blocks * block_size
        self.prefix_queries += request.seq_len
        self.prefix_hits += hits
        first = request.scheduled_at is None
        if first:
            request.scheduled_at = now
            request.cached_tokens = hits
            request.computed_prompt_tokens = request.prompt_len - hits
        if self.metrics is not None:
            self.metrics.on_admitted(request, request.seq_len, hits, first)
        return True

    def _preempt(self, request: SimRequest) -> None:
        self._release(request)
        request.num_computed = 0
        request.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(request)
        if self.metrics is not None:
            self.metrics.on_preempted()

    def _release(self, request: SimRequest) -> None:
        self.kv.release(request.pinned, request.anonymous_blocks)
        request.pinned = []
        request.anonymous_blocks = 0
        request.running = False
        if request.lora is not None:
            self.loras.finished(request.lora)

    def _complete(self, scheduled: list[tuple[SimRequest, int]], tokens: int) -> None:
        now = time.monotonic()
        self.steps += 1
        metrics = self.metrics
        finished = []
        emitted = 0
        for request, count in scheduled:
            if not request.running:
                continue  # aborted or preempted while the step ran
            request.num_computed += count
            if request.num_computed < request.seq_len:
                continue  # a prefill chunk; no token yet
            if request.first_token_at is None:
                request.first_token_at = now
                if metrics is not None:
                    metrics.on_first_token(request, now)
            elif metrics is not None:
                metrics.on_token(now - request.last_token_at)
            request.last_token_at = now
            request.output_tokens += 1
            emitted += 1
            if request.output_tokens >= request.output_target:
                finished.append(request)
            request.wakeup.set()
        for request in finished:
            self.running.remove(request)
            self._release(request)
            self._finish(request, request.finish_reason_planned, now)
        if metrics is not None:
            metrics.on_step(tokens, emitted)

    def _finish(self, request: SimRequest, reason: str, now: float) -> None:
        request.finish_reason = reason
        request.finished_at = now
        request.wakeup.set()
        if self.metrics is not None:
            self.metrics.on_finished(request, now)
