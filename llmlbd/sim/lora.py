"""LoRA adapter slots: ``max_loras`` adapters resident at once, loaded on demand.

vLLM batches requests of at most ``max_loras`` distinct adapters; a request
for an adapter that is not resident waits ("deferred") until a slot frees.
Loading an adapter takes ``load_delay_s``; when every slot is taken, the
least recently used adapter with no running request is evicted.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

__all__ = ["LoraSlots"]


class LoraSlots:
    def __init__(self, adapters: dict[str, str], max_loras: int, load_delay_s: float) -> None:
        self.adapters = dict(adapters)  # name -> path, as --lora-modules name=path
        self.max_loras = max_loras
        self.load_delay_s = load_delay_s
        self._resident: OrderedDict[str, float] = OrderedDict()  # name -> ready at; LRU first
        self._running: Counter[str] = Counter()
        self.loads = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return bool(self.adapters)

    def is_ready(self, name: str, now: float) -> bool:
        """True when ``name`` is resident and loaded; else start loading it if a slot allows."""
        ready_at = self._resident.get(name)
        if ready_at is not None:
            return ready_at <= now
        if len(self._resident) >= self.max_loras and not self._evict_idle(now):
            return False
        self._resident[name] = now + self.load_delay_s
        self.loads += 1
        return self.load_delay_s <= 0

    def next_ready_at(self, now: float) -> float | None:
        pending = [ready_at for ready_at in self._resident.values() if ready_at > now]
        return min(pending) if pending else None

    def started(self, name: str) -> None:
        self._running[name] += 1
        self._resident.move_to_end(name)

    def finished(self, name: str) -> None:
        self._running[name] -= 1
        if self._running[name] <= 0:
            del self._running[name]

    def resident(self, now: float) -> list[str]:
        return [name for name, ready_at in self._resident.items() if ready_at <= now]

    def _evict_idle(self, now: float) -> bool:
        for name, ready_at in self._resident.items():
            if ready_at <= now and not self._running.get(name):
                del self._resident[name]
                self.evictions += 1
                return True
        return False
