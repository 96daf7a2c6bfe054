"""A backend's speed and running slots, learned over its scrapes (one per backend worker).

A page tells the queue *now*, but not how fast the engine works it off, nor
how many requests it runs at once (vLLM exports no ``max_num_seqs``). Both
follow from what vLLM does export, watched over successive scrapes:

* ``service_s``: mean seconds a recent request held a running slot, from the
  increments of ``vllm:request_inference_time_seconds`` (scheduled -> finished)
  between scrapes; ``prefill_s`` likewise from ``vllm:request_prefill_time_seconds``
  (scheduled -> first token). Older requests weigh less: each scrape that saw
  new requests keeps ``DECAY`` of the weight of the earlier ones. The first page
  seen gives the mean over the server's whole life, at the weight of one request.
* ``slots``: how many requests the engine runs at once. A server that has had
  requests waiting for capacity (``vllm:num_requests_waiting_by_reason{reason=
  "capacity"}``, else the whole waiting queue) was full, so the most requests it
  ran then is its capacity: ``slots`` = the most ever seen running. One that has
  never had to queue may have more slots than it ever used: ``slots`` is then one
  more than the most seen running, so the estimate grows as the server is used.

A counter going backwards (the server restarted) forgets everything learned.
Fields whose sources are not on the page are deleted (unknown, never zero).
"""

from __future__ import annotations

from collector.parse import format_number
from collector.sources import (
    INFERENCE_COUNT,
    INFERENCE_SUM,
    PREFILL_COUNT,
    PREFILL_SUM,
    RAW_FIELDS,
    WAITING_CAPACITY,
)
from llmlbd.state import backend_fields as F

__all__ = ["Speed", "DECAY"]

# Weight kept by the earlier requests at each scrape that saw new ones finish: at 5 scrapes
# a second the mean follows a change of speed within a second or two.
DECAY = 0.8

# (published field, cumulative sum, cumulative count)
_MEANS = ((F.SERVICE_S, INFERENCE_SUM, INFERENCE_COUNT), (F.PREFILL_S, PREFILL_SUM, PREFILL_COUNT))


class Speed:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}  # field -> (sum, count) last seen
        self._acc: dict[str, tuple[float, float]] = {}  # field -> decayed (sum, count)
        self._most_running = 0
        self._was_full = False

    def derive(self, values: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """Take the raw fields out of *values*; return the fields to set and to delete."""
        raw: dict[str, float] = {}
        for name in RAW_FIELDS:
            text = values.pop(name, None)
            if text is not None:
                raw[name] = float(text)
        out: dict[str, str] = {}
        delete: list[str] = []
        for fname, sum_name, count_name in _MEANS:
            if sum_name not in raw or count_name not in raw:
                self._last.pop(fname, None)
                self._acc.pop(fname, None)
                delete.append(fname)
                continue
            mean = self._mean(fname, raw[sum_name], raw[count_name])
            if mean is None:
                delete.append(fname)
            else:
                out[fname] = format_number(mean)
        slots = self._slots(values, raw.get(WAITING_CAPACITY))
        if slots is None:
            delete.append(F.SLOTS)
        else:
            out[F.SLOTS] = str(slots)
        return out, delete

    def _mean(self, fname: str, total: float, count: float) -> float | None:
        last = self._last.get(fname)
        self._last[fname] = (total, count)
        acc_sum, acc_count = self._acc.get(fname, (0.0, 0.0))
        if last is None or count < last[1] or total < last[0]:
            if last is not None:  # restarted: what was learned was about another process
                self._restart()
            acc_sum, acc_count = (total / count, 1.0) if count > 0 else (0.0, 0.0)
        elif count > last[1]:
            acc_sum = acc_sum * DECAY + (total - last[0])
            acc_count = acc_count * DECAY + (count - last[1])
        self._acc[fname] = (acc_sum, acc_count)
        return acc_sum / acc_count if acc_count > 0 else None

    def _restart(self) -> None:
        last = self._last
        self.reset()
        self._last = last

    def _slots(self, values: dict[str, str], waiting_capacity: float | None) -> int | None:
        running_text = values.get(F.RUNNING)
        if running_text is None:
            return None
        running = int(float(running_text))
        waiting = waiting_capacity
        if waiting is None:
            waiting_text = values.get(F.WAITING)
            waiting = float(waiting_text) if waiting_text is not None else 0.0
        self._most_running = max(self._most_running, running)
        if waiting > 0:
            self._was_full = True
        return self._most_running if self._was_full else self._most_running + 1
