"""A first-come, first-served limit on how many threads do something at once.

`threading.Semaphore` is not fair: a releasing thread notifies the oldest
waiter, but any thread arriving before that waiter re-takes the condition's
lock can take the freed slot, and the waiter goes back to the *end* of the
queue. With 256 workers contending to parse, some lost again and again, and
their backends' metrics aged for seconds while others were read at 10 Hz.
Here a released slot is handed to the oldest waiter directly, so a worker
waits for at most the workers queued before it. Built on plain locks (C),
which also makes it cheaper than the Condition-based semaphore.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

__all__ = ["FairSlots"]


class FairSlots:
    """A context manager admitting at most *count* threads, in arrival order."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._free = count
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    def __enter__(self) -> None:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the thread that hands us its slot

    def __exit__(self, *_: Any) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()  # the slot passes on, still taken
            else:
                self._free += 1

    def waiting(self) -> int:
        return len(self._waiters)
