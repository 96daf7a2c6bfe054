"""An on-CPU sampling profiler for a worker, off unless LLMLBD_CPU_PROFILE_DIR is set.

bench/hotpath_profile.py sets the variable to learn where a request's CPU
goes. Why not py-spy: it samples the stack of any thread that is not
sleeping, so on a busy machine it also counts the time a worker sits
runnable but preempted inside `send()` (each send wakes Redis or a backend,
which then takes the core): on this 2-core VM that was 40% of its samples.
`setitimer(ITIMER_PROF)` fires per slice of CPU the process really used
(user + system), so every sample here is CPU. The signal handler runs at the
next bytecode boundary, so kernel time in a system call is charged to the
Python frame that made it, which is what a per-category split needs.

Each worker keeps a count per stack (root first, py-spy's "raw" format:
`func (file:line);... count`) and rewrites `<dir>/<pid>.stacks` once a
second; readers diff two snapshots to profile a time window.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from types import CodeType, FrameType

import gevent

__all__ = ["ENV", "CpuSampler", "start_if_enabled"]

ENV = "LLMLBD_CPU_PROFILE_DIR"
INTERVAL_S = 0.001  # one sample per millisecond of CPU


class CpuSampler:
    def __init__(self, path: Path, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.stacks: Counter[tuple[CodeType, ...]] = Counter()
        self._names: dict[CodeType, str] = {}

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        gevent.spawn(self._dump_forever)

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        codes = []
        while frame is not None:
            codes.append(frame.f_code)
            frame = frame.f_back
        self.stacks[tuple(codes)] += 1

    def _name(self, code: CodeType) -> str:
        name = self._names.get(code)
        if name is None:
            name = self._names[code] = (
                f"{getattr(code, 'co_qualname', code.co_name)} ({code.co_filename}:{code.co_firstlineno})"
            )
        return name

    def dump(self) -> None:
        lines = [
            ";".join(self._name(code) for code in reversed(stack)) + f" {count}\n"
            for stack, count in list(self.stacks.items())
        ]
        partial = self.path.with_suffix(".partial")
        partial.write_text("".join(lines))
        partial.replace(self.path)

    def _dump_forever(self) -> None:
        while True:
            gevent.sleep(1.0)
            self.dump()


def start_if_enabled() -> CpuSampler | None:
    folder = os.environ.get(ENV)
    if not folder:
        return None
    sampler = CpuSampler(Path(folder) / f"{os.getpid()}.stacks")
    sampler.start()
    return sampler
